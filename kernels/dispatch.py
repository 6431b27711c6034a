"""One entry point per fused stage: the model calls these, never a kernel or a reference directly.

The kernel choice is a value, :class:`~wmoe.kernels.choice.KernelChoice` (:mod:`wmoe.kernels.choice`), passed to
every call (``kernels=``). There is no process-wide state and no environment variable.

:func:`run_stage` is the entry point of any stage, from its record (:mod:`wmoe.kernels.stages`): the custom op
when tracing for the plugin export (``as_ops``), the launcher when :func:`~wmoe.kernels.choice.use_triton` says
so, else the reference (the record's ``trace_reference`` while tracing). Every stage of the registry is also an
attribute of this module and of ``wmoe.kernels`` (``wmoe.kernels.<stage>(..., kernels=...)``), so a new stage
needs no edit here. ``wcma_attention`` (it composes the frequency stage's custom op when tracing for the plugin
export) and ``moe_router`` (the gate alone, for ``SAMoE.route``) are written out.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import Tensor

from .choice import ChoiceLike, Fp32, KernelChoice, Kernels, as_choice, use_triton
from .moe_ref import _tracing, moe_router_ref
from .spec import load
from .stages import stage_specs
from .wcma_ref import wcma_cross_attention_ref

_WRITTEN = ["wcma_attention", "moe_router"]
# what ``wmoe.kernels`` exports: the choice, run_stage and one entry point per fused stage
__all__ = ["Kernels", "Fp32", "KernelChoice", "ChoiceLike", "as_choice", "use_triton", "run_stage",
           *dict.fromkeys([*stage_specs(), *_WRITTEN])]


def run_stage(name: str, *args: Any, kernels: ChoiceLike = None) -> Any:
    """Stage ``name`` of the registry on ``args`` (its launcher's and reference's arguments) under ``kernels``."""
    try:
        stage = stage_specs()[name]
    except KeyError:
        raise ValueError(f"no fused stage {name!r} (known: {sorted(stage_specs())})") from None
    c = as_choice(kernels)
    if c.as_ops and stage.op is not None:
        from . import ops  # noqa: F401 - registers torch.ops.wmoe.*
        return getattr(torch.ops.wmoe, name)(*args, c.kernels.value, c.fp32.value)
    if use_triton(*(a for a in args if isinstance(a, Tensor)), kernels=c):
        return load(stage.launcher)(*args, fp32=c.fp32.value)
    if stage.trace_reference is not None and _tracing():
        return load(stage.trace_reference)(*args)
    return load(stage.reference)(*args)


def _entry_point(name: str):
    def entry(*args: Any, kernels: ChoiceLike = None) -> Any:
        return run_stage(name, *args, kernels=kernels)
    stage = stage_specs()[name]
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"The fused stage ``{name}`` (:func:`run_stage`): the arguments of its reference "
                     f"``{stage.reference}``, plus ``kernels=``.")
    return entry


def wcma_frequency(x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor,
                   w_local: Tensor, b_local: Tensor, kernels: ChoiceLike = None) -> Tensor:
    """``F_p`` of Eq. 5-6 for a BHWC grid; see :func:`wmoe.kernels.wcma_ref.wcma_frequency_ref`."""
    return run_stage("wcma_frequency", x, w_global, b_global, w_pw, b_pw, w_local, b_local, kernels=kernels)


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
    """``x_p`` of Eq. 8; see :func:`wmoe.kernels.moe_ref.moe_experts_ref` (the dense masked form while tracing:
    no data-dependent shapes, the same numbers)."""
    return run_stage("moe_experts", x, w_router, b_router, w1, b1, w2, b2, top_k, kernels=kernels)


def __getattr__(name: str) -> Any:
    # a stage of the registry that has no written-out entry point above
    if name in stage_specs():
        fn = _entry_point(name)
        globals()[name] = fn
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted({*globals(), *__all__})
