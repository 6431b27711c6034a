"""One entry point per fused stage: the model calls these, never a kernel or a reference directly.

Backend choice: ``"auto"`` (Triton for CUDA tensors when Triton is importable and no gradient is needed, the
PyTorch reference otherwise), ``"triton"`` or ``"reference"``. Set it per call, process-wide with
:func:`set_backend`, or with the environment variable ``WMOE_KERNELS``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch
from torch import Tensor

from .moe_ref import _tracing, moe_experts_dense_ref, moe_experts_ref
from .wcma_ref import wcma_cross_attention_ref, wcma_frequency_ref

_BACKENDS = ("auto", "triton", "reference", "ops")
_backend = os.environ.get("WMOE_KERNELS", "auto")


def set_backend(name: str) -> None:
    """Force a backend for every later call: ``auto``, ``triton``, ``reference``, or ``ops`` (the
    ``torch.library`` custom ops of :mod:`wmoe.kernels.ops`: one graph node per stage, for the plugin export)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {_BACKENDS}")
    _backend = name


def get_backend() -> str:
    return _backend


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(x: Tensor, *weights: Tensor, backend: Optional[str] = None) -> bool:
    """Whether :func:`wcma_frequency` / :func:`moe_experts` run their Triton kernels for these inputs.

    ``auto``: CUDA tensors, fp32/fp16, no gradient needed (the kernel has no backward: training falls back to the
    reference), not while tracing for export. ``triton``: forced, also on CPU tensors (under
    ``TRITON_INTERPRET=1``), and kept for CUDA tensors under ``torch.export``/``torch.compile`` (which capture
    user-defined Triton kernels: the AOTInductor package); a gradient still falls back to the reference, with no
    error, since the result is equal.
    """
    b = backend or _backend
    if b not in _BACKENDS:
        raise ValueError(f"unknown kernel backend {b!r}; choose one of {_BACKENDS}")
    if b in ("reference", "ops") or not _triton_available():
        return False
    if _tracing() and not (b == "triton" and x.is_cuda and _captures_triton()):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        return False
    if x.dtype not in (torch.float32, torch.float16):  # bf16: not verified (see wcma_ops)
        return False
    return b == "triton" or x.is_cuda


def _captures_triton() -> bool:
    """torch.export / torch.compile capture user-defined Triton kernels; the ONNX exporter and jit.trace do not."""
    return not (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


@contextlib.contextmanager
def using_backend(name: str) -> Iterator[None]:
    """Temporarily :func:`set_backend` (restored on exit)."""
    old = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def wcma_frequency(x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor,
                   w_local: Tensor, b_local: Tensor, backend: Optional[str] = None) -> Tensor:
    """``F_p`` of Eq. 5-6 for a BHWC grid; see :func:`wmoe.kernels.wcma_ref.wcma_frequency_ref`."""
    if (backend or _backend) == "ops":
        from . import ops  # noqa: F401 - registers torch.ops.wmoe.*
        return torch.ops.wmoe.wcma_frequency(x, w_global, b_global, w_pw, b_pw, w_local, b_local)
    if use_triton(x, w_global, b_global, w_pw, b_pw, w_local, b_local, backend=backend):
        from .wcma_ops import wcma_frequency_triton
        return wcma_frequency_triton(x, w_global, b_global, w_pw, b_pw, w_local, b_local)
    return wcma_frequency_ref(x, w_global, b_global, w_pw, b_pw, w_local, b_local)


def wcma_attention(f_t: Tensor, x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor,
                   w_local: Tensor, b_local: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor,
                   backend: Optional[str] = None) -> Tensor:
    """The whole WCMA stage, ``F'_T`` of Eq. 7 over ``F_p`` of Eq. 5-6, in ``x.dtype``.

    Triton (same rules as :func:`use_triton`): one fused pass that never writes ``F_p``
    (:func:`wmoe.kernels.wcma_attn_ops.wcma_attention_triton`). Otherwise :func:`wcma_frequency` (reference, or the
    ``wmoe::wcma_frequency`` custom op for the plugin export) followed by Eq. 7 as written.
    """
    b = backend or _backend
    weights = (f_t, w_global, b_global, w_pw, b_pw, w_local, b_local, w_q, w_k, w_v)
    if b != "ops" and use_triton(x, *weights, backend=backend):
        from .wcma_attn_ops import wcma_attention_triton
        return wcma_attention_triton(f_t, x, w_global, b_global, w_pw, b_pw, w_local, b_local, w_q, w_k, w_v)
    f_p = wcma_frequency(x, w_global, b_global, w_pw, b_pw, w_local, b_local,
                         backend="ops" if b == "ops" else "reference")
    return wcma_cross_attention_ref(f_t.to(f_p.dtype), f_p, w_q, w_k, w_v)


def moe_experts(x: Tensor, w_router: Tensor, b_router: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                top_k: int, backend: Optional[str] = None) -> Tensor:
    """``x_p`` of Eq. 8; see :func:`wmoe.kernels.moe_ref.moe_experts_ref`."""
    if (backend or _backend) == "ops":
        from . import ops  # noqa: F401
        return torch.ops.wmoe.moe_experts(x, w_router, b_router, w1, b1, w2, b2, top_k)
    if use_triton(x, w_router, b_router, w1, b1, w2, b2, backend=backend):  # same rules as the WCMA kernel
        from .moe_ops import moe_experts_triton
        return moe_experts_triton(x, w_router, b_router, w1, b1, w2, b2, top_k)
    if _tracing():
        # No data-dependent shapes while tracing: the dense masked form gives the same numbers.
        return moe_experts_dense_ref(x, w_router, b_router, w1, b1, w2, b2, top_k)
    return moe_experts_ref(x, w_router, b_router, w1, b1, w2, b2, top_k)
