"""Image and mask decoding, and the CLIP preprocessing shared by the data set and the Detector.

Everything here is side-effect free at import time (no global Pillow settings are changed), so the model code can
``from wmoe.data.images import preprocess`` without pulling in the data-set machinery.
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..contract import CLIP_MEAN, CLIP_STD, IMAGE_EXTENSIONS, PreprocessSpec, is_image_name  # noqa: F401
# the one image loader lives in wmoe.image_io (torch-free, shared with the runtime); re-exported for wmoe.data users
from ..image_io import (MAX_IMAGE_PIXELS, DataError, ReducedDecodeWarning, is_image_file, load_image,  # noqa: F401
                        load_mask, pil_to_rgb_array)
from ..runtime.frames import as_rgb


def _as_rgb_uint8(image: Union[np.ndarray, Image.Image]) -> np.ndarray:
    if isinstance(image, Image.Image):
        return pil_to_rgb_array(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"preprocess expects a uint8 image, got dtype {arr.dtype}")
    rgb = as_rgb(arr)  # the runtime's one gray/alpha -> RGB coercion
    if rgb is None:
        raise ValueError(f"preprocess expects an HxWx3 RGB image, got shape {arr.shape}")
    return np.ascontiguousarray(rgb)


def preprocess(
    image: Union[np.ndarray, Image.Image],
    image_size: int,
    mean: Tuple[float, float, float] = CLIP_MEAN,
    std: Tuple[float, float, float] = CLIP_STD,
) -> torch.Tensor:
    """RGB uint8 HxWx3 (numpy or PIL) -> normalized float32 tensor 3xSxS.

    The one preprocessing (:func:`wmoe.model.preprocess.resize_batch` + :func:`~wmoe.model.preprocess.normalize`,
    the spec's ``bilinear-box`` squash resize, no crop), so a data-set image and the same image given to
    ``wmoe predict`` or the Detector become the same tensor. HxW and HxWx1 are gray, HxWx4 drops alpha. Expects RGB
    order.
    """
    from ..model.preprocess import normalize, resize_batch

    arr = _as_rgb_uint8(image)
    if int(image_size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    spec = PreprocessSpec(int(image_size), mean=tuple(mean), std=tuple(std))
    # torch wants a writable array; Pillow's and callers' arrays may be read-only, so copy
    t = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].to(torch.float32) / 255.0
    return normalize(resize_batch(t, spec), spec)[0].contiguous()


def resize_mask(mask: np.ndarray, image_size: int) -> torch.Tensor:
    """Bool HxW -> float32 tensor 1xSxS in {0, 1}: nearest-neighbour squash resize, then ``> 0``."""
    m = np.asarray(mask).astype(np.uint8) * 255
    size = int(image_size)
    if m.shape[0] != size or m.shape[1] != size:
        m = np.asarray(Image.fromarray(m).resize((size, size), Image.Resampling.NEAREST))
    return torch.from_numpy((m > 0).astype(np.float32))[None]  # astype copies: writable
