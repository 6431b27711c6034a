"""Launchers of the SA-MoE Triton kernels (:mod:`wmoe.kernels.moe_triton`) with the reference's signature."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
from torch import Tensor

from .moe_triton import _combine_kernel, _expert_down_kernel, _expert_up_kernel, _router_kernel

BLOCK_M, BLOCK_N, BLOCK_K = 16, 64, 32


def moe_router_triton(x: Tensor, w_router: Tensor, b_router: Tensor, top_k: int) -> Tuple[Tensor, Tensor]:
    """``(weights (B, k) float32, experts (B, k) int32)``, as :func:`wmoe.kernels.moe_ref.moe_router_ref`."""
    B, C = x.shape
    ne = w_router.shape[0]
    if not 1 <= top_k <= ne:
        raise ValueError(f"top_k must be in [1, {ne}], got {top_k}")
    w = torch.empty(B, top_k, device=x.device, dtype=torch.float32)
    e = torch.empty(B, top_k, device=x.device, dtype=torch.int32)
    _router_kernel[(triton.cdiv(B, 16),)](x.contiguous(), w_router.contiguous(), b_router.contiguous(), B, C, ne,
                                          top_k, w, e, BLOCK_B=16, BLOCK_E=max(2, triton.next_power_of_2(ne)),
                                          BLOCK_K=32)
    return w, e


def moe_experts_triton(x: Tensor, w_router: Tensor, b_router: Tensor, w1: Tensor, b1: Tensor, w2: Tensor,
                       b2: Tensor, top_k: int, out: Optional[Tensor] = None, fp32: str = "ieee") -> Tensor:
    """``x_p = sum_k w_k E_k(x)`` (Eq. 8) for ``x (B, C)``; w1 ``(N, C, Dh)``, w2 ``(N, Dh, C)``. Inference only."""
    x = x.contiguous()
    B, C = x.shape
    ne, _, dh = w1.shape
    weights, experts = moe_router_triton(x, w_router, b_router, top_k)
    flat = experts.reshape(-1).to(torch.int64)
    # tokens sorted to experts on the device (stable: deterministic order within an expert), no host sync
    order = torch.sort(flat, stable=True).indices.to(torch.int32)
    counts = torch.zeros(ne, device=x.device, dtype=torch.int32).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int32))
    offsets = (torch.cumsum(counts, 0) - counts).to(torch.int32)
    n_rows = B * top_k
    h = torch.empty(n_rows, dh, device=x.device, dtype=x.dtype)
    y = torch.empty(n_rows, C, device=x.device, dtype=torch.float32)
    rows = triton.cdiv(n_rows, BLOCK_M)  # worst case: one expert gets every row; idle programs exit at once
    _expert_up_kernel[(ne, rows, triton.cdiv(dh, BLOCK_N))](
        x, w1.to(x.dtype).contiguous(), b1.contiguous(), order, offsets, counts, C, dh, top_k, h,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, FP32=fp32)
    _expert_down_kernel[(ne, rows, triton.cdiv(C, BLOCK_N))](
        h, w2.to(x.dtype).contiguous(), b2.contiguous(), order, offsets, counts, weights.reshape(-1), C, dh, y,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, FP32=fp32)
    if out is None:
        out = torch.empty(B, C, device=x.device, dtype=x.dtype)
    _combine_kernel[(B, triton.cdiv(C, 128))](y, B, C, top_k, out, BLOCK_C=128)
    return out
