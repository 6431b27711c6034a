"""Every fused stage that has a :class:`~wmoe.kernels.spec.CustomOp` in its record (:mod:`wmoe.kernels.stages`) as a
``torch.library`` custom op ``wmoe::<stage>``, so ``torch.compile`` and ``torch.export`` trace through it as one
node (``wmoe::wcma_frequency``, ``wmoe::moe_experts``) instead of into Triton launches. This module loops over the
records: a new stage needs no edit here.

Each op takes the kernel choice as its two last arguments (``kernels``, ``fp32``: strings, defaults ``"auto"`` and
``"ieee"``) and runs the Triton launcher where :func:`wmoe.kernels.choice.use_triton` says so under that choice, the
PyTorch reference otherwise; the fake (meta) implementations give the output shapes without computing.
Inference only: no autograd formula is registered, so use :mod:`wmoe.kernels.dispatch` (which falls back to the
reference) for training.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch
from torch import Tensor

from .choice import KernelChoice, use_triton
from .spec import StageSpec, load
from .stages import stage_specs

NAMESPACE = "wmoe"  # torch.ops.wmoe.<stage>
CHOICE_ARGS = 'str kernels="auto", str fp32="ieee"'


def _schema(stage: StageSpec) -> str:
    args, _, result = stage.op.schema.partition("->")
    args = args.strip()
    if not (args.startswith("(") and args.endswith(")")):
        raise ValueError(f"stage {stage.name}: op schema {stage.op.schema!r} is not '(args) -> result'")
    inner = args[1:-1].strip()
    return f"({inner + ', ' if inner else ''}{CHOICE_ARGS}) -> {result.strip()}"


def _impl(stage: StageSpec) -> Callable[..., Any]:
    n = len(torch._C.parse_schema(f"{NAMESPACE}::{stage.name}{stage.op.schema}").arguments)

    def run(*args: Any, **choice_args: str) -> Any:
        # the dispatcher passes the defaulted choice arguments only when the caller gave them
        choice = KernelChoice(*args[n:], **choice_args)
        args = args[:n]
        if use_triton(*(a for a in args if isinstance(a, Tensor)), kernels=choice):
            return load(stage.launcher)(*args, fp32=choice.fp32.value)
        out = load(stage.reference)(*args)
        return out.contiguous() if isinstance(out, Tensor) else out  # an op's output never aliases an input
    return run


def _register(stage: StageSpec) -> Any:
    op = torch.library.custom_op(f"{NAMESPACE}::{stage.name}", _impl(stage), mutates_args=(), schema=_schema(stage))
    op.register_fake(load(stage.op.fake))
    return op


#: the registered ops by stage name (``torch.ops.wmoe.<stage>`` is the same op)
OPS: Dict[str, Any] = {name: _register(s) for name, s in stage_specs().items() if s.op is not None}
