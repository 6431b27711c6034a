"""``wmoe.Detector``: score images with a trained WMoE-CLIP checkpoint.

    >>> det = Detector.from_checkpoint("runs/demo/model.safetensors")
    >>> result = det(image)            # numpy uint8 HxWx3, PIL, torch, or a list/batch of them
    >>> result.scores[0], result.maps[0].shape   # image score, anomaly map at the input's own resolution
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from wmoe.kernels import ChoiceLike

from .checkpoint import load_model
from .errors import NonFiniteError
from .model import WMoECLIP
from .overlay import fit_size
from .preprocess import original_sizes, resize_normalize, to_chw_list


@dataclass
class DetectionResult:
    """Per-image results. ``scores``: s_hat (N,), ``text_scores``: s_txt (N,); ``maps``: one float32 HxW map per
    image at that image's own resolution (a list, since sizes may differ; ``np.stack`` them when equal)."""

    scores: np.ndarray
    text_scores: np.ndarray
    maps: List[np.ndarray]

    def __len__(self) -> int:
        return len(self.scores)

    def is_anomalous(self, threshold: float) -> np.ndarray:
        """Verdicts ``score >= threshold``. A NaN score or threshold is an error, never "normal"."""
        if not np.isfinite(threshold):
            raise NonFiniteError(f"the decision threshold is {threshold}: a finite number is needed")
        check_finite_outputs(self.scores, self.maps)
        return self.scores >= threshold


def check_finite_outputs(scores: np.ndarray, maps: Any, where: str = "the model") -> None:
    """Raise :class:`NonFiniteError` naming the images whose score or map is NaN/inf (a broken part)."""
    bad = [i for i, (s, m) in enumerate(zip(scores, maps)) if not (np.isfinite(s) and np.isfinite(m).all())]
    if bad:
        raise NonFiniteError(f"{where} produced NaN/inf scores or maps for image(s) {bad[:10]}"
                             f"{' ...' if len(bad) > 10 else ''} of {len(scores)}: no verdict is possible "
                             f"(broken or diverged weights, or an input the model overflows on)")


#: torch dtypes of the contract's precision names (wmoe.contract.PRECISIONS; aliases via parse_precision)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Detector:
    """Inference wrapper: input checking, preprocessing, batching, maps back at input resolution.

    Args:
        model: a WMoE-CLIP model (eval mode is set here).
        device: "cpu", "cuda", "cuda:1", ...; default CUDA when available.
        dtype: "fp32" (default), or "fp16"/"bf16" on CUDA.
        batch_size: images per forward pass.
        threshold: decision threshold on ``scores`` (e.g. the F1-max threshold stored at evaluation).
        kernels: the fused stages' implementation for this model (a :class:`wmoe.kernels.KernelChoice`, a
            ``Kernels`` member or its name, e.g. ``KernelChoice(fp32="tf32")``); default: the model's own (AUTO).
    """

    def __init__(self, model: WMoECLIP, device: Optional[str] = None, dtype: Union[str, torch.dtype] = "fp32",
                 batch_size: int = 16, threshold: Optional[float] = None, kernels: ChoiceLike = None) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if isinstance(dtype, str):
            from .contract import parse_precision
            name = parse_precision(dtype)  # "float16" -> "fp16"; unknown names list the vocabulary
            if name not in _DTYPES:
                raise ValueError(f"Detector dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
            dtype = _DTYPES[name]
        if dtype != torch.float32 and self.device.type != "cuda":
            raise ValueError(f"{dtype} inference needs a CUDA device; use fp32 on {self.device}")
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval()
        if kernels is not None:
            self.model.set_kernels(kernels)
        self.batch_size = int(batch_size)
        self.threshold = threshold

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], pretrained: Optional[str] = None, **kwargs: Any) -> "Detector":
        model = load_model(path, pretrained=pretrained)
        thr = kwargs.pop("threshold", None)
        if thr is None:  # the decision wmoe eval wrote beside the checkpoint; older checkpoints kept it inside
            from .contract import decision_for_checkpoint
            stored = decision_for_checkpoint(path)
            thr = stored.threshold if stored is not None else model.checkpoint_info.extra.get("threshold")
        return cls(model, threshold=thr, **kwargs)

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @torch.no_grad()
    def __call__(self, images: Any, max_map_side: Optional[int] = None) -> DetectionResult:
        """Score ``images``. Maps come back at each input's resolution, or scaled down (aspect kept) to at most
        ``max_map_side`` pixels on the longest side, which bounds the memory for very large inputs."""
        chw = to_chw_list(images)
        sizes = original_sizes(chw)
        if max_map_side is not None:
            sizes = [fit_size(h, w, int(max_map_side)) for h, w in sizes]
        scores, tscores, maps = [], [], []
        for start in range(0, len(chw), self.batch_size):
            chunk = [t.to(self.device) for t in chw[start:start + self.batch_size]]
            x = resize_normalize(chunk, self.image_size).to(self.dtype)
            out = self.model(x)
            scores.append(out.scores.float().cpu())
            tscores.append(out.text_scores.float().cpu())
            m = out.maps.float().unsqueeze(1)
            for j, (h, w) in enumerate(sizes[start:start + len(chunk)]):
                mj = m[j:j + 1]
                if (h, w) != tuple(mj.shape[-2:]):
                    mj = F.interpolate(mj, size=(h, w), mode="bilinear", align_corners=False)
                maps.append(mj[0, 0].cpu().numpy())
        result = DetectionResult(torch.cat(scores).numpy(), torch.cat(tscores).numpy(), maps)
        check_finite_outputs(result.scores, result.maps)
        return result
