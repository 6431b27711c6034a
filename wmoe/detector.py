"""``wmoe.Detector``: score images with a trained WMoE-CLIP checkpoint.

    >>> det = Detector.from_checkpoint("runs/demo/model.safetensors")
    >>> result = det(image)            # numpy uint8 HxWx3, PIL, torch, or a list/batch of them
    >>> result.scores[0], result.maps[0].shape   # image score, anomaly map at the input's own resolution
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np
import torch

from wmoe.kernels import ChoiceLike

from .contract import Decision
from .errors import NonFiniteError
from .model.wmoe_clip import WMoECLIP
from .overlay import fit_size
from .model.preprocess import original_sizes, resize_normalize, to_chw_list
from .runtime import Result, Runtime
from .torch_backend import TorchBackend


@dataclass
class DetectionResult(Result):
    """The runtime's :class:`wmoe.runtime.Result` with ``maps`` at each input's own resolution: ``scores`` s_hat (N,),
    ``text_scores`` s_txt (N,), ``maps`` one float32 HxW map per image (a list, since sizes may differ; ``np.stack``
    them when equal), and — as every path — ``verdicts`` (anomalous / normal / undecided) at the detector's decision
    and ``faults`` (a non-finite output: undecided, never an exception)."""

    frame_sizes: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.frame_sizes:
            self.frame_sizes = [tuple(np.shape(m)) for m in self.maps]
        if not self.verdicts:  # built by hand from scores: judged by the one rule, with no threshold -> undecided
            self.verdicts, self.faults = self.decision.judge(self.scores, self.maps, self.text_scores)

    def __len__(self) -> int:
        return len(self.scores)

    def is_anomalous(self, threshold: float) -> np.ndarray:
        """Deprecated: use :attr:`verdicts` (or ``Decision(threshold=t).verdicts(result.scores)``), which marks a
        non-finite output ``undecided`` instead of raising. True where anomalous at ``threshold``; NaN raises."""
        warnings.warn("DetectionResult.is_anomalous is deprecated: use result.verdicts (anomalous / normal / "
                      "undecided) or wmoe.contract.Decision(threshold=t).verdicts(result.scores)",
                      DeprecationWarning, stacklevel=2)
        if not np.isfinite(threshold):
            raise NonFiniteError(f"the decision threshold is {threshold}: a finite number is needed")
        check_finite_outputs(self.scores, self.maps)
        return np.asarray(Decision(threshold=threshold).verdicts(self.scores)) == "anomalous"


def check_finite_outputs(scores: np.ndarray, maps: Any, where: str = "the model") -> None:
    """Raise :class:`NonFiniteError` naming the images whose score or map is NaN/inf (a broken part)."""
    bad = [i for i, (s, m) in enumerate(zip(scores, maps)) if not (np.isfinite(s) and np.isfinite(m).all())]
    if bad:
        raise NonFiniteError(f"{where} produced NaN/inf scores or maps for image(s) {bad[:10]}"
                             f"{' ...' if len(bad) > 10 else ''} of {len(scores)}: no verdict is possible "
                             f"(broken or diverged weights, or an input the model overflows on)")


class Detector:
    """Inference wrapper: input checking, preprocessing, batching, maps back at input resolution — the torch-side
    front of one :class:`wmoe.runtime.Runtime` over a :class:`wmoe.torch_backend.TorchBackend` (:attr:`runtime`),
    so its verdicts and NaN policy are the runtime's.

    Args:
        model: a WMoE-CLIP model (eval mode is set here).
        device: "cpu", "cuda", "cuda:1", ...; default CUDA when available.
        dtype: "fp32" (default), or "fp16"/"bf16" on CUDA.
        batch_size: images per forward pass.
        threshold: decision threshold on ``scores`` (e.g. the F1-max threshold stored at evaluation); overrides
            the one in ``decision``.
        kernels: the fused stages' implementation for this model (a :class:`wmoe.kernels.KernelChoice`, a
            ``Kernels`` member or its name, e.g. ``KernelChoice(fp32="tf32")``); default: the model's own (AUTO).
        decision: the full decision (per-class and pixel thresholds); :meth:`from_checkpoint` reads the stored one.
        class_name: the product class whose thresholds judge by default (a per-class decision).
        pixel_threshold: overrides the decision's pixel threshold (defect masks, ``result.mask_at(i)``).
    """

    def __init__(self, model: WMoECLIP, device: Optional[str] = None, dtype: Union[str, torch.dtype] = "fp32",
                 batch_size: int = 16, threshold: Optional[float] = None, kernels: ChoiceLike = None,
                 decision: Optional[Decision] = None, class_name: Optional[str] = None,
                 pixel_threshold: Optional[float] = None) -> None:
        if kernels is not None:
            model.set_kernels(kernels)  # this detector's model: validated (a bad name raises) before the move
        self.backend = TorchBackend(model, device=device, dtype=dtype, decision=decision)
        self.runtime = Runtime(self.backend, threshold=threshold, pixel_threshold=pixel_threshold,
                               class_name=class_name)
        self.device, self.dtype, self.model = self.backend.device, self.backend.dtype, self.backend.model
        self.batch_size = int(batch_size)

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], pretrained: Optional[str] = None, **kwargs: Any) -> "Detector":
        """The model and the decision stored beside it (``<checkpoint>.threshold.json``; older checkpoints kept the
        threshold inside); ``threshold=`` overrides it."""
        from .model.checkpoint import load_model
        from .torch_backend import checkpoint_decision
        model = load_model(path, pretrained=pretrained)
        kwargs.setdefault("decision", checkpoint_decision(path, model))
        return cls(model, **kwargs)

    @property
    def decision(self) -> Decision:
        """The decision this detector judges by (:attr:`runtime`'s)."""
        return self.runtime.decision

    @property
    def threshold(self) -> Optional[float]:
        """The image threshold of the default class (None: verdicts are ``undecided``)."""
        return self.runtime.decision.threshold_for(self.runtime.class_name)

    @property
    def image_size(self) -> int:
        return self.runtime.input_size

    @torch.no_grad()
    def __call__(self, images: Any, max_map_side: Optional[int] = None,
                 class_name: Optional[str] = None) -> DetectionResult:
        """Score ``images``. Maps come back at each input's resolution, or scaled down (aspect kept) to at most
        ``max_map_side`` pixels on the longest side, which bounds the memory for very large inputs. A NaN/inf
        output makes that image ``undecided`` (:attr:`DetectionResult.faults` says why); nothing is raised."""
        chw = to_chw_list(images)
        sizes = original_sizes(chw)
        if max_map_side is not None:
            sizes = [fit_size(h, w, int(max_map_side)) for h, w in sizes]
        parts: List[Result] = []
        maps: List[np.ndarray] = []
        for start in range(0, len(chw), self.batch_size):
            chunk = [t.to(self.device) for t in chw[start:start + self.batch_size]]
            x = resize_normalize(chunk, self.image_size).to(self.dtype)
            res = self.runtime.score_preprocessed(x, sizes[start:start + len(chunk)], class_name=class_name)
            maps += [res.maps_at(j) for j in range(len(chunk))]
            parts.append(res)
        first = parts[0]
        return DetectionResult(np.concatenate([r.scores for r in parts]),
                               np.concatenate([r.text_scores for r in parts]), maps, sizes, first.decision,
                               [v for r in parts for v in r.verdicts], [f for r in parts for f in r.faults],
                               first.class_name)
