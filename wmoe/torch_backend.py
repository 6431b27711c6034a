"""The torch backend of the runtime: a WMoE-CLIP model (or a training checkpoint) behind the same backend protocol as
ONNX Runtime, OpenVINO and TensorRT (:class:`wmoe.runtime.registry.Backend`), so ``wmoe predict``, ``wmoe eval``,
:class:`wmoe.Detector`, the bench and calibration go through one :class:`wmoe.runtime.Runtime` -> one
:class:`wmoe.runtime.Result` -> one :class:`wmoe.contract.Decision`.

It lives outside :mod:`wmoe.runtime` (which imports no torch); the runtime's registry names it as a string and
imports it only when a ``.safetensors`` checkpoint is opened: ``Runtime.open("model.safetensors", provider="cuda")``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import torch

from .contract import OUTPUT_NAMES, Decision, ModelMeta, PreprocessSpec, decision_for_checkpoint, sha256_file
from .kernels import ChoiceLike

#: torch dtypes of the contract's precision names (wmoe.contract.PRECISIONS; aliases via parse_precision)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_NAMES = {v: k for k, v in DTYPES.items()}


def torch_dtype(dtype: Union[str, torch.dtype], device: torch.device) -> torch.dtype:
    """The torch dtype of a precision name (``"fp16"``, ``"float16"``, ...) or dtype; reduced precision on CUDA only."""
    if isinstance(dtype, str):
        from .contract import parse_precision
        name = parse_precision(dtype)  # "float16" -> "fp16"; unknown names list the vocabulary
        if name not in DTYPES:
            raise ValueError(f"torch inference dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[name]
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"{dtype} inference needs a CUDA device; use fp32 on {device}")
    return dtype


def checkpoint_decision(path: Union[str, Path], model: Any) -> Decision:
    """The decision stored beside a checkpoint (``<checkpoint>.threshold.json``); a checkpoint from before threshold
    files kept its threshold inside (``checkpoint_info.extra["threshold"]``); else none (verdicts undecided)."""
    stored = decision_for_checkpoint(path)
    if stored is not None:
        return stored
    info = getattr(model, "checkpoint_info", None)
    legacy = info.extra.get("threshold") if info is not None else None
    return Decision(threshold=legacy) if legacy is not None else Decision()


class TorchBackend:
    """``run(x)``: normalized images (N,3,S,S) — numpy, or a torch tensor (already on the device: no host copy) —
    -> ``{"scores", "maps", "text_scores"}`` float32 numpy.

    ``model``: a checkpoint path (loaded with :func:`wmoe.model.checkpoint.load_model`, ``pretrained`` = its backbone
    weights) or a model object (WMoE-CLIP, or a :class:`wmoe.reference.ReferenceModel`). ``provider``: ``cpu`` or
    ``cuda`` (the runtime's word; ``device`` overrides it with any torch device, default CUDA when available).
    ``dtype``: fp32, or fp16/bf16 on CUDA. ``kernels``: the fused stages' implementation for this backend's calls
    only (:class:`wmoe.kernels.KernelChoice` or its name). ``compile``: run through ``torch.compile``.
    ``threads``: torch's intra-op threads (0: leave as is). ``decision``: the one the model's contract carries
    (default: the checkpoint's stored decision). ``on_output``: called with the model's raw output of every run
    (evaluation reads the router's choices from it)."""

    def __init__(self, model: Any, provider: Optional[str] = None, threads: int = 0, *, device: Optional[str] = None,
                 dtype: Union[str, torch.dtype] = "fp32", kernels: ChoiceLike = None, compile: bool = False,
                 pretrained: Optional[str] = None, decision: Optional[Decision] = None,
                 on_output: Optional[Callable[[Any], None]] = None) -> None:
        path = None
        if isinstance(model, (str, Path)):
            from .model.checkpoint import load_model
            path = Path(model)
            model = load_model(path, pretrained=pretrained)
        if device is None:
            device = provider if provider in ("cpu", "cuda") else ("cuda" if torch.cuda.is_available() else "cpu")
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.dtype = torch_dtype(dtype, self.device)
        self.model = model.to(self.device, self.dtype).eval()
        self.kernels = kernels
        self._fn = torch.compile(self.model) if compile else self.model
        self.on_output = on_output
        size = int(getattr(model, "image_size", None) or model.cfg.image_size)
        if decision is None:
            decision = checkpoint_decision(path, model) if path is not None else Decision()
        self.meta = ModelMeta(image_size=size, precision=_NAMES[self.dtype], preprocess=PreprocessSpec(size),
                              decision=decision, checkpoint_sha256=sha256_file(path) if path is not None else "",
                              exporter="torch")
        self.description = (f"torch {torch.__version__} {'torch.compile' if compile else 'eager'} "
                            f"{_NAMES[self.dtype]} on {self.device}"
                            + (f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else ""))

    @torch.no_grad()
    def run(self, x: Any) -> Dict[str, np.ndarray]:
        t = torch.as_tensor(x).to(self.device, self.dtype)
        if self.kernels is not None and hasattr(self.model, "using_kernels"):
            with self.model.using_kernels(self.kernels):  # this backend's calls only: a shared model is unchanged
                out = self._fn(t)
        else:
            out = self._fn(t)
        if self.on_output is not None:
            self.on_output(out)
        return {name: t.float().cpu().numpy() for name, t in zip(OUTPUT_NAMES, (out.scores, out.maps, out.text_scores))}

    def sync(self) -> None:
        """Wait for the device (timings)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self.model = self._fn = None  # type: ignore[assignment]
