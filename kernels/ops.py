"""The two fused stages as ``torch.library`` custom ops, so ``torch.compile`` and ``torch.export`` trace through
them as single nodes (``wmoe::wcma_frequency``, ``wmoe::moe_experts``) instead of into Triton launches.

Each op runs the Triton kernel where ``KernelChoice(Kernels.AUTO)`` would (CUDA fp32/fp16 tensors, the rule of
:func:`wmoe.kernels.dispatch.use_triton`) and the PyTorch reference otherwise; the fake
(meta) implementations give the output shapes without computing. Inference only: no autograd formula is
registered, so use :mod:`wmoe.kernels.dispatch` (which falls back to the reference) for training.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .dispatch import Kernels, use_triton
from .moe_ref import moe_experts_ref
from .wcma_ref import wcma_frequency_ref


def _use_kernel(x: Tensor) -> bool:
    return use_triton(x, kernels=Kernels.AUTO)


@torch.library.custom_op("wmoe::wcma_frequency", mutates_args=())
def wcma_frequency_op(x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor, w_local: Tensor,
                      b_local: Tensor) -> Tensor:
    """``F_p`` of Eq. 5-6 (BHWC in, (B, ceil(H/2), ceil(W/2), C) out)."""
    if _use_kernel(x):
        from .wcma_frequency_triton import wcma_frequency_triton
        return wcma_frequency_triton(x, w_global, b_global, w_pw, b_pw, w_local, b_local)
    return wcma_frequency_ref(x, w_global, b_global, w_pw, b_pw, w_local, b_local).contiguous()


@wcma_frequency_op.register_fake
def _(x, w_global, b_global, w_pw, b_pw, w_local, b_local):
    B, H, W, C = x.shape
    return x.new_empty((B, (H + 1) // 2, (W + 1) // 2, C))


@torch.library.custom_op("wmoe::moe_experts", mutates_args=())
def moe_experts_op(x: Tensor, w_router: Tensor, b_router: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                   top_k: int) -> Tensor:
    """``x_p`` of Eq. 8 for ``x (B, C)``."""
    if _use_kernel(x):
        from .moe_experts_triton import moe_experts_triton
        return moe_experts_triton(x, w_router, b_router, w1, b1, w2, b2, top_k)
    return moe_experts_ref(x, w_router, b_router, w1, b1, w2, b2, top_k)


@moe_experts_op.register_fake
def _(x, w_router, b_router, w1, b1, w2, b2, top_k):
    return x.new_empty(x.shape)
