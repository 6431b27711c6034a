"""The SA-MoE experts (Eq. 8): router, grouped expert GEMMs over the tokens routed to each expert, and a
deterministic combine -- the Triton kernels, their spec and the launchers.

Launches (no host synchronization anywhere: the whole path can be captured in a CUDA graph):

1. ``_router_kernel``: logits = x W_rᵀ + b_r, softmax, top-k by repeated argmax (ties -> lower expert index, the
   reference's stable-sort order), weights renormalized over the top-k.
2. (torch, on the device) a stable sort of the B·k (token, slot) assignments by expert, per-expert counts by
   ``scatter_add`` and offsets by ``cumsum``.
3. ``_expert_up_kernel``: grid (experts, row blocks, hidden blocks): for the rows of one expert,
   ``h = GELU_tanh(x[tok] W1[e] + b1[e])`` (rows beyond the expert's count exit early).
4. ``_expert_down_kernel``: grid (experts, row blocks, channel blocks): ``y = (h W2[e] + b2[e]) * w`` written to
   its (token, slot) row of a (B, k, C) buffer — no atomics.
5. ``_combine_kernel``: ``x_p[b] = sum_k y[b, k]`` in slot order: deterministic.

``SPEC``: the stage's record in :mod:`wmoe.kernels.stages` (arguments, tiles, grids).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .spec import launch
from .stages import (MOE_COMBINE as COMBINE, MOE_DOWN as DOWN, MOE_EXPERTS as SPEC, MOE_ROUTER as ROUTER,
                     MOE_UP as UP)
from .triton_common import _mma, dtype_name


@triton.jit
def _gelu_tanh(x):
    # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); tanh(u) = 2 sigmoid(2u) - 1
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return 0.5 * x * (1.0 + (2.0 * tl.sigmoid(2.0 * u) - 1.0))


@triton.jit
def _top1(remaining, offs_e, BLOCK_E: tl.constexpr):
    """Largest probability per row and its expert; ties go to the lower expert, as the reference's stable sort."""
    best = tl.max(remaining, axis=1)
    cand = tl.where(remaining == best[:, None], offs_e[None, :], BLOCK_E)
    return best, tl.min(cand, axis=1)


@triton.jit
def _router_kernel(x_ptr, wr_ptr, br_ptr, B, C, NE, TOPK, w_out_ptr, e_out_ptr,
                   BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    bmask = offs_b < B
    offs_e = tl.arange(0, BLOCK_E)
    emask = offs_e < NE
    logits = tl.zeros((BLOCK_B, BLOCK_E), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < C
        xv = tl.load(x_ptr + offs_b[:, None] * C + offs_k[None, :], mask=bmask[:, None] & kmask[None, :],
                     other=0.0).to(tl.float32)
        wv = tl.load(wr_ptr + offs_e[None, :] * C + offs_k[:, None], mask=kmask[:, None] & emask[None, :],
                     other=0.0).to(tl.float32)
        logits += tl.sum(xv[:, :, None] * wv[None, :, :], axis=1)
    logits += tl.load(br_ptr + offs_e, mask=emask, other=0.0).to(tl.float32)[None, :]
    logits = tl.where(emask[None, :], logits, float("-inf"))
    mx = tl.max(logits, axis=1)
    p = tl.exp(logits - mx[:, None])
    p = tl.where(emask[None, :], p, 0.0)
    p = p / tl.sum(p, axis=1)[:, None]
    # Two passes over the same selection: the first sums the top-k probabilities, the second stores the weights
    # renormalized. Nothing is read back from w_out: a store and a later load of one address by different threads
    # of the block had no barrier between them (a race in the compiled layout).
    total = tl.zeros((BLOCK_B,), dtype=tl.float32)
    remaining = p
    for k in range(0, TOPK):
        best, idx = _top1(remaining, offs_e, BLOCK_E)
        total += best
        remaining = tl.where(offs_e[None, :] == idx[:, None], -1.0, remaining)
    remaining = p
    for k in range(0, TOPK):
        best, idx = _top1(remaining, offs_e, BLOCK_E)
        tl.store(w_out_ptr + offs_b * TOPK + k, best / total, mask=bmask)
        tl.store(e_out_ptr + offs_b * TOPK + k, idx, mask=bmask)
        remaining = tl.where(offs_e[None, :] == idx[:, None], -1.0, remaining)


@triton.jit
def _expert_up_kernel(x_ptr, w1_ptr, b1_ptr, order_ptr, offsets_ptr, counts_ptr, C, DH, TOPK, h_ptr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      FP32: tl.constexpr):
    e = tl.program_id(0)
    mb = tl.program_id(1)
    nb = tl.program_id(2)
    count = tl.load(counts_ptr + e)
    if mb * BLOCK_M < count:
        start = tl.load(offsets_ptr + e)
        offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        mmask = offs_m < count
        slot = tl.load(order_ptr + start + offs_m, mask=mmask, other=0)  # flattened (token * TOPK + k)
        tok = slot // TOPK
        offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = offs_n < DH
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, C, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            kmask = offs_k < C
            a = tl.load(x_ptr + tok[:, None] * C + offs_k[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
            b = tl.load(w1_ptr + e * C * DH + offs_k[:, None] * DH + offs_n[None, :],
                        mask=kmask[:, None] & nmask[None, :], other=0.0)
            acc += _mma(a, b, FP32)
        acc += tl.load(b1_ptr + e * DH + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        hval = _gelu_tanh(acc)
        tl.store(h_ptr + (start + offs_m)[:, None] * DH + offs_n[None, :], hval.to(h_ptr.dtype.element_ty),
                 mask=mmask[:, None] & nmask[None, :])


@triton.jit
def _expert_down_kernel(h_ptr, w2_ptr, b2_ptr, order_ptr, offsets_ptr, counts_ptr, wts_ptr, C, DH, y_ptr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        FP32: tl.constexpr):
    e = tl.program_id(0)
    mb = tl.program_id(1)
    nb = tl.program_id(2)
    count = tl.load(counts_ptr + e)
    if mb * BLOCK_M < count:
        start = tl.load(offsets_ptr + e)
        offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        mmask = offs_m < count
        slot = tl.load(order_ptr + start + offs_m, mask=mmask, other=0)
        wt = tl.load(wts_ptr + slot, mask=mmask, other=0.0)
        offs_n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = offs_n < C
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, DH, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            kmask = offs_k < DH
            a = tl.load(h_ptr + (start + offs_m)[:, None] * DH + offs_k[None, :], mask=mmask[:, None] & kmask[None, :],
                        other=0.0)
            b = tl.load(w2_ptr + e * DH * C + offs_k[:, None] * C + offs_n[None, :],
                        mask=kmask[:, None] & nmask[None, :], other=0.0)
            acc += _mma(a, b, FP32)
        acc += tl.load(b2_ptr + e * C + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        acc = acc * wt[:, None]
        tl.store(y_ptr + slot[:, None] * C + offs_n[None, :], acc, mask=mmask[:, None] & nmask[None, :])


@triton.jit
def _combine_kernel(y_ptr, B, C, TOPK, out_ptr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    cb = tl.program_id(1)
    offs = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs < C
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for k in range(0, TOPK):  # fixed slot order: bit-reproducible
        acc += tl.load(y_ptr + (b * TOPK + k) * C + offs, mask=cmask, other=0.0)
    tl.store(out_ptr + b * C + offs, acc.to(out_ptr.dtype.element_ty), mask=cmask)


def moe_router_triton(x: Tensor, w_router: Tensor, b_router: Tensor, top_k: int,
                      target: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """``(weights (B, k) float32, experts (B, k) int32)``, as :func:`wmoe.kernels.moe_ref.moe_router_ref`."""
    B, C = x.shape
    ne = w_router.shape[0]
    if not 1 <= top_k <= ne:
        raise ValueError(f"top_k must be in [1, {ne}], got {top_k}")
    w = torch.empty(B, top_k, device=x.device, dtype=torch.float32)
    e = torch.empty(B, top_k, device=x.device, dtype=torch.int32)
    launch(ROUTER, {"x_ptr": x.contiguous(), "wr_ptr": w_router.contiguous(), "br_ptr": b_router.contiguous(),
                    "w_out_ptr": w, "e_out_ptr": e}, dict(B=B, C=C, NE=ne, TOPK=top_k), dtype_name(x.dtype), target)
    return w, e


def moe_experts_triton(x: Tensor, w_router: Tensor, b_router: Tensor, w1: Tensor, b1: Tensor, w2: Tensor,
                       b2: Tensor, top_k: int, out: Optional[Tensor] = None, fp32: str = "ieee",
                       target: Optional[str] = None) -> Tensor:
    """``x_p = sum_k w_k E_k(x)`` (Eq. 8) for ``x (B, C)``; w1 ``(N, C, Dh)``, w2 ``(N, Dh, C)``. ``fp32``/``target``
    as :func:`wmoe.kernels.wcma_frequency_triton.wcma_frequency_triton`. Inference only."""
    x = x.contiguous()
    B, C = x.shape
    ne, _, dh = w1.shape
    dims = SPEC.dims(B=B, C=C, NE=ne, DH=dh, TOPK=top_k)
    name = dtype_name(x.dtype)
    weights, experts = moe_router_triton(x, w_router, b_router, top_k, target)
    flat = experts.reshape(-1).to(torch.int64)
    # tokens sorted to experts on the device (stable: deterministic order within an expert), no host sync
    order = torch.sort(flat, stable=True).indices.to(torch.int32)
    counts = torch.zeros(ne, device=x.device, dtype=torch.int32).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int32))
    offsets = (torch.cumsum(counts, 0) - counts).to(torch.int32)
    n_rows = B * top_k
    h = torch.empty(n_rows, dh, device=x.device, dtype=x.dtype)
    y = torch.empty(n_rows, C, device=x.device, dtype=torch.float32)
    rows = {"order_ptr": order, "offsets_ptr": offsets, "counts_ptr": counts}
    launch(UP, {"x_ptr": x, "w1_ptr": w1.to(x.dtype).contiguous(), "b1_ptr": b1.contiguous(), **rows, "h_ptr": h},
           dims, name, target, FP32=fp32)
    launch(DOWN, {"h_ptr": h, "w2_ptr": w2.to(x.dtype).contiguous(), "b2_ptr": b2.contiguous(), **rows,
                  "wts_ptr": weights.reshape(-1), "y_ptr": y}, dims, name, target, FP32=fp32)
    if out is None:
        out = torch.empty(B, C, device=x.device, dtype=x.dtype)
    launch(COMBINE, {"y_ptr": y, "out_ptr": out}, dims, name, target)
    return out
