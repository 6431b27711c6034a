"""One entry point per fused stage: the model calls these, never a kernel or a reference directly.

The kernel choice is a value, :class:`KernelChoice`, passed to every call (the model's modules hold one each;
``WMoECLIP.set_kernels`` sets them). There is no process-wide state and no environment variable.

* :class:`Kernels` -- ``AUTO`` (Triton for CUDA fp32/fp16 tensors when no gradient is needed and nothing is
  being traced, the PyTorch reference otherwise), ``TRITON`` (forced, also on CPU tensors under
  ``TRITON_INTERPRET=1``; a gradient still falls back to the reference), ``REFERENCE``.
* :class:`Fp32` -- how the fp32 kernels use tensor cores: ``IEEE`` (exact fp32 FMA, the default), ``TF32``
  (one TF32 MMA per product: relative error budget 5e-3, as fp16), ``TF32X3`` (three TF32 MMAs: fp32 accuracy,
  budget 1e-5). fp16 inputs always use fp16 MMAs.
* ``as_ops`` -- not a backend but export's tracing mode: each stage becomes one ``torch.library`` node
  (:mod:`wmoe.kernels.ops`), which the plugin ONNX flavor translates into TensorRT plugin nodes. Only the export
  sets it (``export_onnx(flavor="plugin")``).
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Dict, Tuple, Union

import torch
from torch import Tensor

from .moe_ref import _tracing, moe_experts_dense_ref, moe_experts_ref, moe_router_ref
from .wcma_ref import wcma_cross_attention_ref, wcma_frequency_ref

# what ``wmoe.kernels`` exports: the choice and one entry point per fused stage
__all__ = ["Kernels", "Fp32", "KernelChoice", "ChoiceLike", "as_choice",
           "wcma_frequency", "wcma_attention", "moe_router", "moe_experts"]


class Kernels(str, enum.Enum):
    AUTO = "auto"
    TRITON = "triton"
    REFERENCE = "reference"


class Fp32(str, enum.Enum):
    """``input_precision`` of the fp32 kernels' ``tl.dot`` (Triton's names)."""
    IEEE = "ieee"
    TF32 = "tf32"
    TF32X3 = "tf32x3"


def _enum(cls, value, what: str):
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"unknown {what} {value!r}; choose one of {[m.value for m in cls]}") from None


@dataclass(frozen=True)
class KernelChoice:
    """Which implementation a fused stage runs; strings are accepted for the enums (``KernelChoice("triton")``)."""
    kernels: Kernels = Kernels.AUTO
    fp32: Fp32 = Fp32.IEEE
    as_ops: bool = False  # export's tracing mode, see the module docstring

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernels", _enum(Kernels, self.kernels, "kernel backend"))
        object.__setattr__(self, "fp32", _enum(Fp32, self.fp32, "fp32 precision"))

    def replace(self, **changes) -> "KernelChoice":
        return dataclasses.replace(self, **changes)


ChoiceLike = Union[KernelChoice, Kernels, str, None]


def as_choice(choice: ChoiceLike) -> KernelChoice:
    """``None`` -> the default, a :class:`Kernels` member or its name -> that backend with the other defaults."""
    if choice is None:
        return KernelChoice()
    if isinstance(choice, KernelChoice):
        return choice
    return KernelChoice(kernels=choice)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(x: Tensor, *weights: Tensor, kernels: ChoiceLike = None) -> bool:
    """Whether a stage runs its Triton kernels for these inputs under ``kernels``.

    ``AUTO``: CUDA tensors, fp32/fp16, no gradient needed (the kernels have no backward: training uses the
    reference), not while tracing for export. ``TRITON``: forced, also on CPU tensors (under
    ``TRITON_INTERPRET=1``), and kept for CUDA tensors under ``torch.export``/``torch.compile`` (which capture
    user-defined Triton kernels: the AOTInductor package); a gradient still falls back to the reference, with no
    error, since the result is equal. ``as_ops`` never launches directly (the custom op decides at run time).
    """
    c = as_choice(kernels)
    if c.kernels is Kernels.REFERENCE or c.as_ops or not _triton_available():
        return False
    if _tracing() and not (c.kernels is Kernels.TRITON and x.is_cuda and _captures_triton()):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        return False
    if x.dtype not in (torch.float32, torch.float16):  # bf16: not verified (see docs/kernels.md)
        return False
    return c.kernels is Kernels.TRITON or x.is_cuda


def _captures_triton() -> bool:
    """torch.export / torch.compile capture user-defined Triton kernels; the ONNX exporter and jit.trace do not."""
    return not (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


def wcma_frequency(x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor,
                   w_local: Tensor, b_local: Tensor, kernels: ChoiceLike = None) -> Tensor:
    """``F_p`` of Eq. 5-6 for a BHWC grid; see :func:`wmoe.kernels.wcma_ref.wcma_frequency_ref`."""
    c = as_choice(kernels)
    if c.as_ops:
        from . import ops  # noqa: F401 - registers torch.ops.wmoe.*
        return torch.ops.wmoe.wcma_frequency(x, w_global, b_global, w_pw, b_pw, w_local, b_local)
    if use_triton(x, w_global, b_global, w_pw, b_pw, w_local, b_local, kernels=c):
        from .wcma_frequency_triton import wcma_frequency_triton
        return wcma_frequency_triton(x, w_global, b_global, w_pw, b_pw, w_local, b_local, fp32=c.fp32.value)
    return wcma_frequency_ref(x, w_global, b_global, w_pw, b_pw, w_local, b_local)


def wcma_attention(f_t: Tensor, x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor,
                   w_local: Tensor, b_local: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor,
                   kernels: ChoiceLike = None) -> Tensor:
    """The whole WCMA stage, ``F'_T`` of Eq. 7 over ``F_p`` of Eq. 5-6, in ``x.dtype``.

    Triton (same rules as :func:`use_triton`): one fused pass that never writes ``F_p``
    (:func:`wmoe.kernels.wcma_attention_triton.wcma_attention_triton`). Otherwise :func:`wcma_frequency`
    (reference, or the ``wmoe::wcma_frequency`` custom op when tracing for the plugin export) followed by Eq. 7 as
    written.
    """
    c = as_choice(kernels)
    weights = (f_t, w_global, b_global, w_pw, b_pw, w_local, b_local, w_q, w_k, w_v)
    if use_triton(x, *weights, kernels=c):
        from .wcma_attention_triton import wcma_attention_triton
        return wcma_attention_triton(f_t, x, w_global, b_global, w_pw, b_pw, w_local, b_local, w_q, w_k, w_v,
                                     fp32=c.fp32.value)
    f_p = wcma_frequency(x, w_global, b_global, w_pw, b_pw, w_local, b_local,
                         kernels=c if c.as_ops else Kernels.REFERENCE)
    return wcma_cross_attention_ref(f_t.to(f_p.dtype), f_p, w_q, w_k, w_v)


def moe_router(x: Tensor, w_router: Tensor, b_router: Tensor, top_k: int,
               kernels: ChoiceLike = None) -> Tuple[Tensor, Tensor]:
    """The gate of Eq. 8: ``(weights (B, k) float32, experts (B, k) int64)``; see
    :func:`wmoe.kernels.moe_ref.moe_router_ref`."""
    if use_triton(x, w_router, b_router, kernels=kernels):
        from .moe_experts_triton import moe_router_triton
        w, e = moe_router_triton(x, w_router, b_router, top_k)
        return w, e.long()
    return moe_router_ref(x, w_router, b_router, top_k)


def moe_experts(x: Tensor, w_router: Tensor, b_router: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                top_k: int, kernels: ChoiceLike = None) -> Tensor:
    """``x_p`` of Eq. 8; see :func:`wmoe.kernels.moe_ref.moe_experts_ref`."""
    c = as_choice(kernels)
    if c.as_ops:
        from . import ops  # noqa: F401
        return torch.ops.wmoe.moe_experts(x, w_router, b_router, w1, b1, w2, b2, top_k)
    if use_triton(x, w_router, b_router, w1, b1, w2, b2, kernels=c):  # same rules as the WCMA kernel
        from .moe_experts_triton import moe_experts_triton
        return moe_experts_triton(x, w_router, b_router, w1, b1, w2, b2, top_k, fp32=c.fp32.value)
    if _tracing():
        # No data-dependent shapes while tracing: the dense masked form gives the same numbers.
        return moe_experts_dense_ref(x, w_router, b_router, w1, b1, w2, b2, top_k)
    return moe_experts_ref(x, w_router, b_router, w1, b1, w2, b2, top_k)
