"""Image and mask decoding, and the CLIP preprocessing shared by the data set and the Detector.

Everything here is side-effect free at import time (no global Pillow settings are changed), so the model code can
``from wmoe.data.images import preprocess`` without pulling in the data-set machinery.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from ..errors import WMoEError

PathLike = Union[str, "os.PathLike[str]"]

from ..contract import CLIP_MEAN, CLIP_STD, IMAGE_EXTENSIONS, is_image_name  # noqa: F401 (re-exported)


#: Largest image decoded at full resolution (8192 x 8192). Larger JPEGs are decoded reduced (DCT scaling by 2, 4
#: or 8, with a warning); larger images of other formats are refused. Bounds the memory of every path.
MAX_IMAGE_PIXELS = 8192 * 8192


class DataError(WMoEError, ValueError):
    """A data-set file or layout problem. The message always names the offending path."""


class ReducedDecodeWarning(UserWarning):
    """An image above :data:`MAX_IMAGE_PIXELS` was decoded at a reduced size."""


def _bound_size(img: Image.Image, p: Path, what: str) -> None:
    """Refuse, or for JPEG decode reduced, an image above MAX_IMAGE_PIXELS (before any pixel is decoded)."""
    w, h = img.size
    if w * h <= MAX_IMAGE_PIXELS:
        return
    limit = f"{MAX_IMAGE_PIXELS / 1e6:.1f} MP (8192x8192, wmoe.data.images.MAX_IMAGE_PIXELS)"
    if what == "image" and img.format == "JPEG":
        for k in (2, 4, 8):
            if (w // k) * (h // k) <= MAX_IMAGE_PIXELS:
                img.draft(img.mode, (w // k, h // k))
                warnings.warn(f"{p}: {w}x{h} is above the {limit} limit; decoded at 1/{k} size "
                              f"({img.size[0]}x{img.size[1]})", ReducedDecodeWarning, stacklevel=3)
                return
    raise DataError(f"{what} file is {w}x{h} = {w * h / 1e6:.0f} MP, above the {limit} limit: {p}; "
                    f"downscale it first")


def is_image_file(path: Path) -> bool:
    """True for a visible file with an image suffix (``._foo.png`` macOS resource forks are not images)."""
    return is_image_name(path) and path.is_file()


def _open_decoded(path: PathLike, what: str) -> Image.Image:
    """Open and fully decode ``path``; every failure becomes a DataError naming the file and the problem."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {p}") from None
    except OSError as e:
        raise DataError(f"{what} file cannot be accessed: {p} ({e})") from None
    if p.is_dir():
        raise DataError(f"{what} path is a directory, not a file: {p}")
    if size == 0:
        raise DataError(f"{what} file is empty (0 bytes): {p}")
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: our own, lower limit is checked next
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
    except UnidentifiedImageError:
        raise DataError(f"{what} file is not a readable image (unknown format or not an image): {p}") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{what} file is too large to decode safely: {p} ({e})") from None
    except OSError as e:
        raise DataError(f"{what} file cannot be opened: {p} ({e})") from None
    try:
        _bound_size(img, p, what)
    except DataError:
        img.close()
        raise
    try:
        # open() only reads the header; load() decodes, which is where truncation shows up.
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        img.close()
        raise DataError(f"{what} file is truncated or corrupt: {p} ({e})") from None
    return img


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel high-bit-depth array to uint8."""
    if mode.startswith("I;16") or mode == "I":
        # 16-bit PNG/TIFF decode to I;16 or I (int32); both carry 0..65535.
        return (np.clip(arr.astype(np.float64), 0, 65535) / 257.0 + 0.5).astype(np.uint8)
    if mode == "F":
        a = arr.astype(np.float64)
        # A float image in [0, 1] is the common convention; otherwise assume 0..255.
        if np.nanmax(a, initial=0.0) <= 1.0:
            a = a * 255.0
        return (np.clip(np.nan_to_num(a), 0, 255) + 0.5).astype(np.uint8)
    return arr.astype(np.uint8)


def pil_to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any Pillow image to an RGB uint8 HxWx3 array.

    Alpha is dropped (not composited), exactly like the peers' ``convert('RGB')``; EXIF orientation is ignored
    so that images stay aligned with their pixel-wise masks.
    """
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _to_uint8(np.asarray(img), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGB")  # L, 1, P (with palette), LA, RGBA, CMYK, YCbCr ...
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3 (grayscale, RGBA, palette and 16-bit are converted)."""
    with _open_decoded(path, "image") as img:
        return pil_to_rgb_array(img)


def load_mask(path: PathLike, threshold: int = 0) -> np.ndarray:
    """Read a ground-truth mask as bool HxW: a pixel is anomalous when its value is ``> threshold``.

    VisA masks hold small class indices (1, 2 ...), not 255, and some sets ship 16-bit or RGB masks, so the
    default test is ``> 0`` on the raw values (any color channel for RGB; the palette color for palette images),
    the peers' convention. JPEG masks (Kvasir-SEG) carry compression noise around edges that ``> 0`` counts as
    defect; ``threshold=127`` removes it but departs from the peers' numbers.
    """
    with _open_decoded(path, "mask") as img:
        mode = img.mode
        if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
            arr = np.asarray(img)
        elif mode in ("LA", "La"):
            arr = np.asarray(img)[:, :, 0]
        else:
            # P, RGB, RGBA, CMYK ...: through RGB so a palette index maps to its color; alpha is ignored.
            rgb = np.asarray(img.convert("RGB"))
            arr = rgb.max(axis=2)
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise DataError(f"mask file has an unexpected shape {arr.shape}: {path}")
    return arr > threshold


def _as_rgb_uint8(image: Union[np.ndarray, Image.Image]) -> np.ndarray:
    if isinstance(image, Image.Image):
        return pil_to_rgb_array(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"preprocess expects a uint8 image, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"preprocess expects an HxWx3 RGB image, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def preprocess(
    image: Union[np.ndarray, Image.Image],
    image_size: int,
    mean: Tuple[float, float, float] = CLIP_MEAN,
    std: Tuple[float, float, float] = CLIP_STD,
) -> torch.Tensor:
    """RGB uint8 HxWx3 (numpy or PIL) -> normalized float32 tensor 3xSxS.

    Squash resize (no crop, aspect ratio not kept) with Pillow's bicubic filter, as the peers do at 518 px,
    then ``(x/255 - mean) / std``. HxW and HxWx1 are treated as gray, HxWx4 drops alpha. Expects RGB order
    (convert OpenCV frames from BGR first).
    """
    arr = _as_rgb_uint8(image)
    size = int(image_size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if arr.shape[0] != size or arr.shape[1] != size:
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC))
    # torch wants a writable array; Pillow's and callers' arrays may be read-only, so copy (cheap next to resize).
    t = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return t.sub_(m).div_(s).contiguous()


def resize_mask(mask: np.ndarray, image_size: int) -> torch.Tensor:
    """Bool HxW -> float32 tensor 1xSxS in {0, 1}: nearest-neighbour squash resize, then ``> 0``."""
    m = np.asarray(mask).astype(np.uint8) * 255
    size = int(image_size)
    if m.shape[0] != size or m.shape[1] != size:
        m = np.asarray(Image.fromarray(m).resize((size, size), Image.Resampling.NEAREST))
    return torch.from_numpy((m > 0).astype(np.float32))[None]  # astype copies: writable
