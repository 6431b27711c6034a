"""Image input checking and THE preprocessing (torch): data set, training, eval, predict, the Detector and the
exported graph all call :func:`resize_batch` + :func:`normalize`, built from :class:`wmoe.contract.PreprocessSpec`
(squash resize ``bilinear-box``, then CLIP mean/std). The runtime's numpy twin is tested against it.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from ..errors import WMoEError

from ..contract import PreprocessSpec
from ..image_io import pil_to_rgb_array
from ..runtime.frames import as_rgb


class InputError(WMoEError, ValueError):
    """An image handed to the detector cannot be used; the message says which one and why."""


def _from_numpy(a: np.ndarray, where: str) -> Tensor:
    if a.dtype != np.uint8:
        raise InputError(f"{where}: numpy images must be uint8 HxWxC (0-255), got dtype {a.dtype}; "
                         f"convert with (img * 255).clip(0, 255).astype(np.uint8) or pass a float torch tensor")
    if a.ndim not in (2, 3):
        raise InputError(f"{where}: expected an HxWxC image, got shape {a.shape}")
    rgb = as_rgb(a)  # the runtime's one gray/alpha -> RGB coercion
    if rgb is None:
        raise InputError(f"{where}: expected 1, 3 or 4 channels (HxWxC), got {a.shape[2]} in shape {a.shape}")
    a = np.ascontiguousarray(rgb)
    if not a.flags.writeable:  # e.g. np.asarray(PIL image): torch warns on read-only buffers
        a = a.copy()
    return torch.from_numpy(a).permute(2, 0, 1).float().div_(255.0)


def _from_tensor(t: Tensor, where: str) -> Tensor:
    if t.dtype == torch.uint8:
        return _from_numpy(t.cpu().numpy(), where)
    if not t.is_floating_point():
        raise InputError(f"{where}: tensors must be uint8 HxWxC or float CxHxW in [0, 1], got dtype {t.dtype}")
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise InputError(f"{where}: float tensors must be CxHxW with C = 1 or 3, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError(f"{where}: image contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:  # e.g. 0..255 values in a float tensor: clamping would make it all white
        raise InputError(f"{where}: float tensors must hold values in [0, 1], got [{lo:.4g}, {hi:.4g}]"
                         + ("; divide 0..255 values by 255" if hi > 1.0 else ""))
    return t.float().expand(3, -1, -1) if t.shape[0] == 1 else t.float()


def to_chw_list(images: Any) -> List[Tensor]:
    """Normalize any accepted input to a list of float CxHxW tensors in [0, 1] (on the CPU or their device).

    Accepts: a uint8 numpy array HxWxC or NxHxWxC; a PIL image; a torch tensor (uint8 HxWxC / NxHxWxC, or float
    CxHxW / NxCxHxW in [0, 1]); or a list of any of these.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None  # type: ignore
    if Image is not None and isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, Tensor) and images.dim() == 4:
        images = list(images.permute(0, 3, 1, 2) if images.dtype == torch.uint8 else images)
        images = [i.permute(1, 2, 0) if i.dtype == torch.uint8 else i for i in images]
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise InputError("no images given (empty batch)")
    out: List[Tensor] = []
    for i, img in enumerate(images):
        where = f"image {i}"
        if Image is not None and isinstance(img, Image.Image):
            img = pil_to_rgb_array(img)  # the one loader's conversion: 16-bit/float scaled, never saturated
        if isinstance(img, np.ndarray):
            t = _from_numpy(img, where)
        elif isinstance(img, Tensor):
            t = _from_tensor(img, where)
        else:
            raise InputError(f"{where}: unsupported type {type(img).__name__}; pass numpy uint8, PIL or torch")
        if t.shape[1] == 0 or t.shape[2] == 0:
            raise InputError(f"{where}: empty image of shape {tuple(t.shape)}")
        out.append(t)
    return out


def resize_batch(x: Tensor, spec: PreprocessSpec) -> Tensor:
    """The preprocessing spec's squash resize (``bilinear-box``, :class:`wmoe.contract.PreprocessSpec`) of a float
    batch (N, 3, H, W) in [0, 1] to (N, 3, S, S): bilinear (half-pixel, no antialias) to ``(S*kh, S*kw)``, then a
    ``kh x kw`` box average. The exporter traces this same function into the graph (ONNX ``Resize`` +
    ``AveragePool``); :func:`wmoe.runtime.frames.preprocess_frames` is its numpy twin."""
    s = spec.size
    kh, kw = spec.box_factors(x.shape[-2], x.shape[-1])
    if tuple(x.shape[-2:]) != (s * kh, s * kw):
        x = F.interpolate(x, size=(s * kh, s * kw), mode="bilinear", align_corners=False, antialias=False)
    if kh > 1 or kw > 1:
        x = F.avg_pool2d(x, (kh, kw))
    return x


def normalize(x: Tensor, spec: PreprocessSpec) -> Tensor:
    """``(x - mean) / std`` per channel of a (N, 3, S, S) batch."""
    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def frames_to_images(frames: Tensor, spec: PreprocessSpec) -> Tensor:
    """uint8 RGB camera frames (N, H, W, 3) -> the model input (N, 3, S, S): what a frames-input export computes
    inside its graph (the exporter traces this function); the bench feeds its output to the PyTorch reference so
    that a frames engine and the reference see the same pixels."""
    x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return normalize(resize_batch(x, spec), spec)


def resize_normalize(images: Sequence[Tensor], size: int) -> Tensor:
    """Float CxHxW images in [0, 1] (any sizes) -> the model input (B, 3, size, size): the one preprocessing of
    eval, train, predict and the Detector (:class:`wmoe.contract.PreprocessSpec` with ``size``)."""
    spec = PreprocessSpec(int(size))
    return normalize(torch.cat([resize_batch(t.unsqueeze(0).float(), spec) for t in images], 0), spec)


def original_sizes(images: Sequence[Tensor]) -> List[Tuple[int, int]]:
    return [(int(t.shape[1]), int(t.shape[2])) for t in images]
