"""Frame checking and preprocessing in numpy (no torch): uint8 HxWx3 RGB -> CLIP-normalized NCHW float32.

:func:`resize_frame` is the numpy twin of :func:`wmoe.model.preprocess.resize_batch` (the spec's ``bilinear-box``
squash resize, :class:`wmoe.contract.PreprocessSpec`): per-axis weighted gathers with cached taps, so a 1080p
frame costs two passes of a few vectorized operations instead of Pillow per channel.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Union

import numpy as np

from ..contract import PreprocessSpec
from ..errors import WMoEError


class FrameError(WMoEError, ValueError):
    """A frame cannot be scored; the message names its index and the problem."""


def as_rgb(a: np.ndarray) -> Optional[np.ndarray]:
    """THE gray/alpha -> RGB coercion of every input path (runtime frames, the Detector, the data set): HxW and
    HxWx1 gray are repeated to 3 channels, HxWx4 drops alpha (not composited, as the peers' ``convert('RGB')``),
    HxWx3 is returned as is. None for any other shape: each caller refuses it with its own error, naming the image."""
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        return None
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    return a[:, :, :3] if a.shape[2] == 4 else a


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
        rgb = as_rgb(f)
        if rgb is None or min(f.shape[:2]) == 0:
            raise FrameError(f"frame {i}: expected an HxWx3 image, got shape {f.shape}")
        out.append(rgb)
    return out


@functools.lru_cache(maxsize=64)
def _axis_taps(n_in: int, size: int, k: int) -> "tuple[np.ndarray, np.ndarray]":
    """Gather indices and weights (size, T) of one axis of the spec's ``bilinear-box`` resize: bilinear
    (half-pixel centres, clamped, in float32 like torch's ``align_corners=False``) to ``size * k`` samples, then
    the mean of each ``k`` consecutive samples — folded into one weighted sum over consecutive input pixels per
    output pixel (T = the widest footprint; unused taps have weight 0)."""
    m = size * k
    if m == n_in:  # no bilinear step: a pure box average
        i0 = np.arange(m)
        lam = np.zeros(m, np.float32)
    else:
        scale = np.float32(n_in / m)
        src = np.maximum((np.arange(m, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
        i0 = np.minimum(src.astype(np.int64), n_in - 1)
        lam = (src - i0).astype(np.float32)
    i1 = np.minimum(i0 + 1, n_in - 1)
    start = i0.reshape(size, k)[:, 0]
    span = int((i1.reshape(size, k).max(1) - start).max()) + 1
    w = np.zeros((size, span), np.float64)
    rows = np.repeat(np.arange(size), k)
    np.add.at(w, (rows, i0 - start[rows]), (1.0 - lam) / k)
    np.add.at(w, (rows, i1 - start[rows]), lam / k)
    idx = np.minimum(start[:, None] + np.arange(span)[None, :], n_in - 1)
    return idx, w.astype(np.float32)


def resize_frame(frame: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8/float HxWx3 -> float32 SxSx3 in the frame's value range: the numpy twin of
    :func:`wmoe.model.preprocess.resize_batch` (tested against it and the definition: max |diff| <= 1e-4 in [0, 1]
    pixel units)."""
    h, w = frame.shape[:2]
    s, c = spec.size, frame.shape[2]
    kh, kw = spec.box_factors(h, w)
    ri, rw = _axis_taps(h, s, kh)
    ci, cw = _axis_taps(w, s, kw)
    rows = np.zeros((s, w, c), np.float32)
    tmp = np.empty((s, w, c), np.float32)
    for t in range(ri.shape[1]):  # a few weighted row gathers over the whole frame, in place
        np.multiply(frame[ri[:, t]], rw[:, t, None, None], out=tmp)
        rows += tmp
    cols = np.ascontiguousarray(rows.transpose(1, 0, 2))  # (W, S, C): the column pass gathers rows again
    out = np.zeros((s, s, c), np.float32)
    tmp = np.empty((s, s, c), np.float32)
    for t in range(ci.shape[1]):
        np.multiply(cols[ci[:, t]], cw[:, t, None, None], out=tmp)
        out += tmp
    return out.transpose(1, 0, 2)


def preprocess_frames(frames: Sequence[np.ndarray], spec: "PreprocessSpec") -> np.ndarray:
    """Checked RGB uint8 frames -> (N, 3, S, S) float32 model input: the spec's squash resize and normalization."""
    size = spec.size
    batch = np.empty((len(frames), 3, size, size), np.float32)
    scale = (1.0 / (255.0 * np.asarray(spec.std, np.float32)))[:, None, None]
    shift = (np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32))[:, None, None]
    for i, f in enumerate(frames):
        x = resize_frame(f, spec) if f.shape[:2] != (size, size) else f.astype(np.float32)
        batch[i] = x.transpose(2, 0, 1) * scale - shift
    return batch


def frames_to_size(frames: Sequence[np.ndarray], spec: "PreprocessSpec") -> List[np.ndarray]:
    """Frames for a ``frames`` model of frame size SxS: frames of another size are resized by the numpy twin and
    rounded to uint8 (<= 0.5/255 from the float path); SxS frames pass untouched."""
    s = spec.size
    return [f if f.shape[:2] == (s, s) else np.clip(resize_frame(f, spec) + 0.5, 0, 255).astype(np.uint8)
            for f in frames]


def resize_map(amap: np.ndarray, hw: "tuple[int, int]") -> np.ndarray:
    """An SxS map back to a frame's HxW: bilinear, half-pixel centres, no antialias — what the Detector does with
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``, so runtime and Detector maps agree."""
    h, w = hw
    a = np.asarray(amap, np.float32)
    if a.shape == (h, w):
        return a
    ri, rw = _axis_taps(a.shape[0], h, 1)
    ci, cw = _axis_taps(a.shape[1], w, 1)
    rows = (a[ri] * rw[:, :, None]).sum(1)           # (h, S)
    return (rows[:, ci] * cw[None, :, :]).sum(2)      # (h, w)
