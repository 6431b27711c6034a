"""The one image loader: every path (data set, predict, Detector on PIL input, the runtime's camera loop) decodes
image files here, so the same file gives the same pixels everywhere. Standard library + numpy + Pillow (no torch).

Policy: the file is fully decoded (a truncated file is refused, never half-grey); EXIF orientation is ignored —
pixels are used as stored, so images stay aligned with their pixel-wise masks and a camera frame saved to disk
scores like the live one; 16-bit and float images are scaled to 8 bits (never saturated); alpha is dropped;
images above :data:`MAX_IMAGE_PIXELS` are decoded reduced (JPEG) or refused.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .contract import is_image_name
from .errors import WMoEError

PathLike = Union[str, "os.PathLike[str]"]


#: Largest image decoded at full resolution (8192 x 8192). Larger JPEGs are decoded reduced (DCT scaling by 2, 4
#: or 8, with a warning); larger images of other formats are refused. Bounds the memory of every path.
MAX_IMAGE_PIXELS = 8192 * 8192


class DataError(WMoEError, ValueError):
    """A data-set file or layout problem. The message always names the offending path."""


def is_image_file(path: Path) -> bool:
    """True for a visible file with an image suffix (``._foo.png`` macOS resource forks are not images)."""
    return is_image_name(path) and path.is_file()


class ReducedDecodeWarning(UserWarning):
    """An image above :data:`MAX_IMAGE_PIXELS` was decoded at a reduced size."""


def _bound_size(img: Image.Image, p: Path, what: str) -> None:
    """Refuse, or for JPEG decode reduced, an image above MAX_IMAGE_PIXELS (before any pixel is decoded)."""
    w, h = img.size
    if w * h <= MAX_IMAGE_PIXELS:
        return
    limit = f"{MAX_IMAGE_PIXELS / 1e6:.1f} MP (8192x8192, wmoe.image_io.MAX_IMAGE_PIXELS)"
    if what == "image" and img.format == "JPEG":
        for k in (2, 4, 8):
            if (w // k) * (h // k) <= MAX_IMAGE_PIXELS:
                img.draft(img.mode, (w // k, h // k))
                warnings.warn(f"{p}: {w}x{h} is above the {limit} limit; decoded at 1/{k} size "
                              f"({img.size[0]}x{img.size[1]})", ReducedDecodeWarning, stacklevel=3)
                return
    raise DataError(f"{what} file is {w}x{h} = {w * h / 1e6:.0f} MP, above the {limit} limit: {p}; "
                    f"downscale it first")


def _open_decoded(path: PathLike, what: str, data: Optional[bytes] = None) -> Image.Image:
    """Open and fully decode ``path`` — or ``data``, the bytes of a file named ``path`` (an upload); every failure
    becomes a DataError naming the file and the problem."""
    p = Path(path)
    if data is None:
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise DataError(f"{what} file not found: {p}") from None
        except OSError as e:
            raise DataError(f"{what} file cannot be accessed: {p} ({e})") from None
        if p.is_dir():
            raise DataError(f"{what} path is a directory, not a file: {p}")
    else:
        size = len(data)
    if size == 0:
        raise DataError(f"{what} file is empty (0 bytes): {p}")
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: our own, lower limit is checked next
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p if data is None else io.BytesIO(data))
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


def load_image_bytes(data: bytes, name: str) -> np.ndarray:
    """The bytes of an image file (an upload) as RGB uint8 HxWx3, under exactly :func:`load_image`'s policy;
    errors name ``name``."""
    with _open_decoded(name, "image", data=bytes(data)) as img:
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
