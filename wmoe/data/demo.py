"""A small, deterministic MVTec-layout demo data set built from images bundled in scikit-image's wheel.

No download: the sources are PNG files shipped inside ``skimage/data`` (brick, grass, gravel, cell, coins,
immunohistochemistry). Each sample is a random crop/flip/brightness jitter of its category's source; defective
samples get one synthetic defect whose mask is exactly the set of changed pixels. The same seed and arguments
give byte-identical files (per-image seeds, Pillow PNG encoding without timestamps).
"""
from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import OutputError, WMoEError
from .images import DataError
from .meta import write_meta

#: Category -> (scikit-image loader name, RGB tint applied to gray sources so categories differ in color).
DEMO_SOURCES: Dict[str, Tuple[str, Tuple[float, float, float]]] = {
    "brick": ("brick", (1.0, 0.78, 0.62)),
    "grass": ("grass", (0.72, 1.0, 0.66)),
    "gravel": ("gravel", (0.95, 0.9, 0.82)),
    "cell": ("cell", (0.86, 0.82, 1.0)),
    "coins": ("coins", (1.0, 0.93, 0.75)),
    "ihc": ("immunohistochemistry", (1.0, 1.0, 1.0)),
}
DEMO_CATEGORIES: Tuple[str, ...] = tuple(DEMO_SOURCES)
#: Default zero-shot protocol: train on these ...
DEMO_TRAIN_CLASSES: Tuple[str, ...] = ("brick", "grass", "coins")
#: ... and evaluate on these unseen ones (a texture and two microscopy-like, "medical" categories).
DEMO_TEST_CLASSES: Tuple[str, ...] = ("gravel", "cell", "ihc")
DEFECT_TYPES: Tuple[str, ...] = ("scratch", "hole", "stain", "cut_paste")
INFO_FILE = "demo_info.json"  # marks a folder as a demo set, so a rerun may replace it


@dataclass(frozen=True)
class DemoConfig:
    """Parameters of a demo set (written to ``demo_info.json``)."""

    seed: int = 0
    image_size: int = 256
    n_train_good: int = 4
    n_test_good: int = 6
    n_test_defect: int = 8
    categories: Tuple[str, ...] = DEMO_CATEGORIES


# ------------------------------------------------------------------------------------------------ sources
def _source_image(category: str) -> np.ndarray:
    """RGB uint8 source image of a category (loaded from the scikit-image wheel, no network)."""
    name, tint = DEMO_SOURCES[category]
    try:
        import skimage.data as skdata

        arr = np.asarray(getattr(skdata, name)())
    except Exception as e:  # a missing or network-only file must not look like a bug in our code
        raise DataError(f"scikit-image bundled image {name!r} is unavailable ({type(e).__name__}: {e})") from None
    if arr.ndim == 2:
        rgb = np.repeat(arr[:, :, None].astype(np.float32), 3, axis=2) * np.asarray(tint, np.float32)
        arr = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[:, :, :3].astype(np.uint8))


def _augment(src: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random square crop (50-85 % of the short side), flips, resize to ``size``, brightness/contrast jitter."""
    h, w = src.shape[:2]
    side = int(min(h, w) * rng.uniform(0.5, 0.85))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = src[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    img = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.Resampling.BICUBIC))
    gain, bias = rng.uniform(0.9, 1.1), rng.uniform(-12, 12)
    return np.clip(img.astype(np.float32) * gain + bias + 0.5, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ defects
def _blank(size: int) -> Tuple[Image.Image, ImageDraw.ImageDraw]:
    m = Image.new("L", (size, size), 0)
    return m, ImageDraw.Draw(m)


def _center(size: int, rng: np.random.Generator, margin: float = 0.2) -> Tuple[float, float]:
    return tuple(rng.uniform(margin * size, (1 - margin) * size, size=2))  # type: ignore[return-value]


def _scratch(img: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A thin random polyline, light on dark backgrounds and dark on light ones."""
    size = img.shape[0]
    m, d = _blank(size)
    pts = [_center(size, rng)]
    heading = rng.uniform(0, 2 * np.pi)
    for _ in range(int(rng.integers(3, 6))):
        heading += rng.normal(0, 0.5)
        step = rng.uniform(0.08, 0.18) * size
        x, y = pts[-1]
        pts.append((float(np.clip(x + step * np.cos(heading), 0, size - 1)),
                    float(np.clip(y + step * np.sin(heading), 0, size - 1))))
    d.line(pts, fill=255, width=max(1, int(round(size / 96 * rng.uniform(0.8, 1.6)))))
    region = np.asarray(m) > 0
    color = 235.0 if img[region].mean() < 128 else 20.0
    out = img.astype(np.float32)
    out[region] = color + rng.uniform(-10, 10, size=(int(region.sum()), 1))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), region


def _hole(img: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A dark ellipse with a little shading."""
    size = img.shape[0]
    m, d = _blank(size)
    cx, cy = _center(size, rng)
    rx, ry = rng.uniform(0.04, 0.12, size=2) * size
    d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    region = np.asarray(m) > 0
    out = img.astype(np.float32)
    out[region] = out[region] * 0.12 + rng.uniform(0, 8)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), region


def _stain(img: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A blurred colored blob (union of a few ellipses), alpha-blended; the blur tail below 0.25 is cut off."""
    size = img.shape[0]
    m, d = _blank(size)
    cx, cy = _center(size, rng)
    for _ in range(int(rng.integers(2, 5))):
        ox, oy = rng.normal(0, 0.05 * size, size=2)
        rx, ry = rng.uniform(0.04, 0.1, size=2) * size
        d.ellipse([cx + ox - rx, cy + oy - ry, cx + ox + rx, cy + oy + ry], fill=255)
    alpha = np.asarray(m.filter(ImageFilter.GaussianBlur(radius=max(1.0, size / 64)))).astype(np.float32) / 255.0
    alpha = np.where(alpha > 0.25, 0.35 + 0.5 * alpha, 0.0)[:, :, None]
    palette = np.array([[120, 70, 20], [40, 60, 160], [150, 20, 90], [30, 110, 40]], dtype=np.float32)
    color = palette[int(rng.integers(0, len(palette)))]
    out = img.astype(np.float32) * (1 - alpha) + color * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), alpha[:, :, 0] > 0


def _cut_paste(
    img: np.ndarray, rng: np.random.Generator, donor: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """A rectangle cut from elsewhere (the donor image, or this one), rotated and brightened, pasted in."""
    size = img.shape[0]
    src = donor if donor is not None else img
    ph, pw = (rng.uniform(0.12, 0.25, size=2) * size).astype(int) + 2
    sy, sx = int(rng.integers(0, size - ph + 1)), int(rng.integers(0, size - pw + 1))
    patch = np.rot90(src[sy : sy + ph, sx : sx + pw], k=int(rng.integers(1, 4))).astype(np.float32)
    patch = patch * rng.uniform(1.15, 1.35) + 15.0  # shifted so the patch stands out even on a flat area
    ty = int(rng.integers(0, size - patch.shape[0] + 1))
    tx = int(rng.integers(0, size - patch.shape[1] + 1))
    out = img.astype(np.float32)
    out[ty : ty + patch.shape[0], tx : tx + patch.shape[1]] = patch
    region = np.zeros(img.shape[:2], dtype=bool)
    region[ty : ty + patch.shape[0], tx : tx + patch.shape[1]] = True
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), region


_DEFECTS: Dict[str, Callable[..., Tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "cut_paste": _cut_paste,
}


def make_defect(
    img: np.ndarray, kind: str, rng: np.random.Generator, donor: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Apply one synthetic defect to RGB uint8 ``img``; return ``(defective image, bool mask)``.

    The mask is exactly the set of pixels whose value changed, and equals the drawn region: region pixels that
    the defect happened to leave unchanged (black under a hole, saturated under a bright patch) are nudged by 24
    levels toward mid-gray, so the mask has no pinholes. A draw covering too few pixels is redrawn.
    """
    if kind not in _DEFECTS:
        raise ValueError(f"unknown defect {kind!r}; known: {DEFECT_TYPES}")
    min_pixels = max(4, img.shape[0] * img.shape[1] // 2000)
    for _ in range(20):
        out, region = _DEFECTS[kind](img, rng, donor) if kind == "cut_paste" else _DEFECTS[kind](img, rng)
        same = region & (out == img).all(axis=2)
        if same.any():
            v = img[same].astype(np.int16)
            out[same] = np.where(v > 127, v - 24, v + 24).astype(np.uint8)
        mask = (out != img).any(axis=2)
        if int(mask.sum()) >= min_pixels:
            return out, mask
    raise RuntimeError(f"could not draw a visible {kind} defect")  # pragma: no cover - needs a constant image


# ----------------------------------------------------------------------------------------------- writing
def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # Pillow writes no timestamp or other variable chunk, so equal pixels give equal bytes.
    Image.fromarray(arr).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _rng(seed: int, cat_idx: int, part: int, i: int) -> np.random.Generator:
    # One independent stream per image: changing one count leaves the other images' pixels alone.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, cat_idx, part, i])))


class DemoFolderError(WMoEError, FileExistsError):
    """The demo set's folder holds something else: refused in one line, nothing of it is touched."""


def _prepare_out_dir(out: Path, categories: Sequence[str]) -> None:
    """Refuse to write into a non-empty folder unless it is a previous demo set, whose trees are replaced."""
    if out.exists() and not out.is_dir():
        raise DemoFolderError(f"{out} exists and is a file, not a folder: choose another folder for the demo set")
    if out.is_dir() and any(out.iterdir()):
        if not (out / INFO_FILE).is_file():
            raise DemoFolderError(f"{out} is not empty and is not a demo set (no {INFO_FILE}): its files are left "
                                  "alone; choose an empty or new folder")
        for p in sorted(out.iterdir()):
            if p.is_dir() and p.name in DEMO_SOURCES:
                shutil.rmtree(p)
    out.mkdir(parents=True, exist_ok=True)


def make_demo_dataset(
    out_dir: "str | Path",
    seed: int = 0,
    image_size: int = 256,
    n_train_good: int = 4,
    n_test_good: int = 6,
    n_test_defect: int = 8,
    categories: Optional[Sequence[str]] = None,
) -> Path:
    """Write the demo set (MVTec layout + ``meta.json`` + ``demo_info.json``) to ``out_dir``; return the root.

    Per category: ``train/good/NNN.png`` (n_train_good), ``test/good/NNN.png`` (n_test_good) and n_test_defect
    defective images spread round-robin over the defect types, ``test/<defect>/NNN.png`` with
    ``ground_truth/<defect>/NNN_mask.png`` (0/255). ``categories`` defaults to all of :data:`DEMO_CATEGORIES`.
    """
    cats = tuple(categories) if categories is not None else DEMO_CATEGORIES
    unknown = [c for c in cats if c not in DEMO_SOURCES]
    if unknown:
        raise ValueError(f"unknown demo categories {unknown}; known: {DEMO_CATEGORIES}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if min(n_train_good, n_test_good, n_test_defect) < 0:
        raise ValueError("image counts must be >= 0")
    if n_test_good + n_test_defect == 0:
        raise ValueError("the test split needs at least one image")
    cfg = DemoConfig(seed, image_size, n_train_good, n_test_good, n_test_defect, cats)
    out = Path(out_dir)
    _prepare_out_dir(out, cats)
    info = asdict(cfg)
    info["categories"] = list(cats)
    info["train_classes"] = [c for c in DEMO_TRAIN_CLASSES if c in cats]
    info["test_classes"] = [c for c in DEMO_TEST_CLASSES if c in cats]
    # marked first, as incomplete: a set cut short (a full disk) is still recognised as a demo set and replaced by
    # the next run, instead of refused as a foreign folder
    atomic_write_text(out / INFO_FILE, json.dumps({**info, "complete": False}, indent=2) + "\n")
    try:
        _write_images(out, cfg, cats)
        write_meta(out, "mvtec")
    except OutputError as e:
        written = sum(1 for p in out.rglob("*.png"))
        raise OutputError(f"cannot write {e.path}: {e.why}; the demo set in {out} is incomplete ({written} images "
                          f"written, marked incomplete in {INFO_FILE}): make room and run wmoe data demo {out} "
                          "again, which replaces it") from None
    atomic_write_text(out / INFO_FILE, json.dumps({**info, "complete": True}, indent=2) + "\n")
    return out


def _write_images(out: Path, cfg: DemoConfig, cats: Sequence[str]) -> None:
    seed, image_size = cfg.seed, cfg.image_size
    n_train_good, n_test_good, n_test_defect = cfg.n_train_good, cfg.n_test_good, cfg.n_test_defect
    sources = {c: _source_image(c) for c in cats}
    for cat in cats:
        # The category's index in the full list, not in ``cats``: a subset gives the same images per category.
        cat_idx = DEMO_CATEGORIES.index(cat)
        src = sources[cat]
        base = out / cat
        for i in range(n_train_good):
            img = _augment(src, image_size, _rng(seed, cat_idx, 0, i))
            atomic_write_bytes(base / "train" / "good" / f"{i:03d}.png", _png_bytes(img))
        for i in range(n_test_good):
            img = _augment(src, image_size, _rng(seed, cat_idx, 1, i))
            atomic_write_bytes(base / "test" / "good" / f"{i:03d}.png", _png_bytes(img))
        counters = {k: 0 for k in DEFECT_TYPES}
        for i in range(n_test_defect):
            kind = DEFECT_TYPES[i % len(DEFECT_TYPES)]
            rng = _rng(seed, cat_idx, 2, i)
            img = _augment(src, image_size, rng)
            donor = _augment(src, image_size, rng)  # "elsewhere" for cut-paste: another crop of the source
            bad, mask = make_defect(img, kind, rng, donor=donor)
            name = f"{counters[kind]:03d}"
            counters[kind] += 1
            atomic_write_bytes(base / "test" / kind / f"{name}.png", _png_bytes(bad))
            atomic_write_bytes(
                base / "ground_truth" / kind / f"{name}_mask.png", _png_bytes(mask.astype(np.uint8) * 255)
            )
