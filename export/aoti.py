"""AOTInductor package of the detector: one ``.pt2`` file loadable with ``torch._inductor.aoti_load_package`` and
no wmoe code (a C++ runner can load it too).

On CUDA the stages go through the Triton launchers directly (``Kernels.TRITON``, honored under
``torch.export`` for CUDA tensors), so ``torch.export`` captures the user-defined Triton kernels and AOTInductor
compiles them into the package (not verified on a GPU yet: if the capture fails, the reference stages are packaged
with a warning); on the CPU the PyTorch references are traced (Inductor generates C++). Input ``images`` (N,3,S,S) normalized, outputs
``(scores, maps, text_scores)``; dynamic batch 1..max_batch.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Union

import torch

from wmoe.atomic import atomic_path
from wmoe.model.checkpoint import load_model
from wmoe.errors import ExportError
from wmoe.kernels import Kernels
from wmoe.model.wmoe_clip import WMoECLIP

from .onnx_export import _no_mha_fastpath
from .wrapper import ExportWrapper


def export_aoti(ckpt_or_model: Union[str, Path, WMoECLIP], out: Union[str, Path], *, device: Optional[str] = None,
                precision: str = "fp32", max_batch: int = 64, pretrained: Optional[str] = None) -> Path:
    """Compile and package; returns ``out`` (written atomically). Compiling takes about a minute."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"precision must be fp32 or fp16, got {precision!r}")
    if precision == "fp16" and device == "cpu":
        raise ExportError("fp16 AOTInductor packages are built for CUDA")
    model = ckpt_or_model if isinstance(ckpt_or_model, WMoECLIP) else load_model(ckpt_or_model, pretrained=pretrained)
    wrapper = ExportWrapper(model.float().eval(), dtype=torch.float16 if precision == "fp16" else torch.float32)
    wrapper = wrapper.to(device)
    s = model.image_size
    x = torch.randn(2, 3, s, s, device=device)
    backend = Kernels.TRITON if device.startswith("cuda") else Kernels.REFERENCE
    out = Path(out)
    dyn = ({0: torch.export.Dim("N", min=1, max=max_batch)},)
    with _no_mha_fastpath(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with model.using_kernels(backend):
                ep = torch.export.export(wrapper, (x,), dynamic_shapes=dyn)
        except Exception as e:  # noqa: BLE001 - capture of the Triton launches is not verified on every torch
            if backend is not Kernels.TRITON:
                raise
            warnings.simplefilter("default")
            warnings.warn(f"torch.export could not capture the Triton kernels ({type(e).__name__}: {e}); packaging "
                          "the PyTorch reference stages instead (Inductor generates their kernels)", stacklevel=2)
            with model.using_kernels(Kernels.REFERENCE):
                ep = torch.export.export(wrapper, (x,), dynamic_shapes=dyn)
        with atomic_path(out.with_suffix(".pt2")) as tmp:
            torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp))
    return out.with_suffix(".pt2")
