"""Frame checking and preprocessing in numpy + Pillow (no torch): uint8 HxWx3 RGB -> CLIP-normalized NCHW float32.

The squash resize uses Pillow's bicubic filter on float channels (antialiased when shrinking), which is what
``torch.nn.functional.interpolate(..., mode="bicubic", antialias=True)`` in :mod:`wmoe.preprocess` reproduces, so
runtime and Detector see the same pixels to within float rounding.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import numpy as np

from ..contract import PreprocessSpec
from ..errors import WMoEError


class FrameError(WMoEError, ValueError):
    """A frame cannot be scored; the message names its index and the problem."""


def check_frames(frames: Union[np.ndarray, Sequence[np.ndarray]]) -> List[np.ndarray]:
    """A list of uint8 HxWx3 RGB frames; gray (HxW, HxWx1) is expanded to RGB, RGBA drops alpha."""
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    elif isinstance(frames, np.ndarray) or frames is None:
        frames = [frames]
    out = []
    if len(frames) == 0:
        raise FrameError("no frames given (empty batch)")
    for i, f in enumerate(frames):
        if f is None:
            raise FrameError(f"frame {i} is None (a camera read failed?)")
        f = np.asarray(f)
        if f.dtype != np.uint8:
            raise FrameError(f"frame {i}: expected uint8 pixels, got {f.dtype}")
        if f.ndim == 2:
            f = np.repeat(f[:, :, None], 3, axis=2)
        if f.ndim != 3 or f.shape[2] not in (1, 3, 4) or min(f.shape[:2]) == 0:
            raise FrameError(f"frame {i}: expected an HxWx3 image, got shape {f.shape}")
        if f.shape[2] == 1:
            f = np.repeat(f, 3, axis=2)
        elif f.shape[2] == 4:
            f = f[:, :, :3]
        out.append(f)
    return out


def preprocess_frames(frames: Sequence[np.ndarray], spec: "PreprocessSpec") -> np.ndarray:
    """Checked RGB frames -> (N, 3, size, size) float32, squash-resized and normalized as ``spec`` says."""
    size, mean, std = spec.size, spec.mean, spec.std
    from PIL import Image

    batch = np.empty((len(frames), 3, size, size), np.float32)
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    for i, f in enumerate(frames):
        x = f.astype(np.float32) / 255.0
        if f.shape[0] != size or f.shape[1] != size:
            x = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(x[:, :, c]), mode="F")
                                     .resize((size, size), Image.Resampling.BICUBIC)) for c in range(3)], axis=2)
        batch[i] = (x.transpose(2, 0, 1) - m) / s
    return batch


def resize_map(amap: np.ndarray, hw: "tuple[int, int]") -> np.ndarray:
    """An SxS map back to a frame's HxW (bilinear)."""
    from PIL import Image

    h, w = hw
    if amap.shape == (h, w):
        return amap
    return np.asarray(Image.fromarray(amap.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))
