"""The kernel choice: which implementation a fused stage runs, as a value passed to every call.

* :class:`Kernels` -- ``AUTO`` (Triton for CUDA fp32/fp16 tensors when no gradient is needed and nothing is
  being traced, the PyTorch reference otherwise), ``TRITON`` (forced, also on CPU tensors under
  ``TRITON_INTERPRET=1``; a gradient still falls back to the reference), ``REFERENCE``.
* :class:`Fp32` -- how the fp32 kernels use tensor cores: ``IEEE`` (exact fp32 FMA, the default), ``TF32``
  (one TF32 MMA per product: relative error budget 5e-3, as fp16), ``TF32X3`` (three TF32 MMAs: fp32 accuracy,
  budget 1e-5). fp16 inputs always use fp16 MMAs.
* ``as_ops`` -- not a backend but export's tracing mode: each stage becomes one ``torch.library`` node
  (:mod:`wmoe.kernels.ops`), which the plugin ONNX flavor translates into TensorRT plugin nodes. Only the export
  sets it (``export_onnx(flavor="plugin")``).

Its own module so that the entry points (:mod:`.dispatch`) and the custom ops (:mod:`.ops`) both import it and
neither imports the other at module level. There is no process-wide state and no environment variable.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

from .moe_ref import _tracing

__all__ = ["Kernels", "Fp32", "KernelChoice", "ChoiceLike", "as_choice", "use_triton"]


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
