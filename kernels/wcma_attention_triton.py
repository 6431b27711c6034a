"""The whole WCMA stage (Eq. 5-7): the frequency stage fused with the cross-attention, so ``F_p`` never reaches
memory -- its Triton kernels, its spec, its launcher.

Eq. 7 is refactored by associativity (exact in real arithmetic, see ``wcma_ref.wcma_cross_attention_folded_ref``):

    Q_T K_I^T = (F_T W_q^T W_k) F_p^T = q' F_p^T          softmax(...) V_I = (softmax(...) F_p) W_v^T

so the two (h·w × C × C) projections ``K_I`` and ``V_I`` are never computed: the queries are folded into
``q' = F_T W_q^T W_k / sqrt(C)`` (a (T, C) × (C, C) product per image) and ``W_v`` is applied once to the pooled
result ``z = softmax(q' F_p^T) F_p``. What remains per position is a dot product with T = 2 queries and a weighted
sum: flash-attention with two queries, split over position tiles.

Two launches after the frequency stage's pool + GEMV pre-pass (``wcma_frequency._pool_kernel`` / ``_gemv_kernel``):

1. ``_wcma_attn_kernel``, grid ``(NT, B)`` with ``NT = ⌈h·w / BLOCK_M⌉``: per tile of BLOCK_M positions of one
   image, ``t = ReLU(2a W_pw^T + b_pw)`` once (kept on chip), then two passes over channel blocks that each
   rebuild the ``F_p`` block from ``t`` and the four pixels (the local GEMM is recomputed rather than holding the
   (BLOCK_M, C) tile on chip): pass 1 accumulates the logits ``s = q' F_p^T``, pass 2 the tile's softmax-weighted
   sum ``Σ_m exp(s_m - max_tile s) F_p[m]``. Writes the tile's partial sums, max and normalizer.
2. ``_attn_combine_kernel``, grid ``(B, ⌈C/BLOCK_C⌉)``: the online-softmax merge of the NT partials in a fixed
   order (deterministic), ``z = Σ_i e^{m_i - M} acc_i / Σ_i e^{m_i - M} l_i``.

``F'_T = z W_v^T`` is a (B·T, C) × (C, C) GEMM left to the caller. Plugin friendly like the other kernels:
arguments ordered inputs, int32 scalars, outputs; the partials are explicit outputs, not scratch. ``SPEC``: the
stage's record in :mod:`wmoe.kernels.stages`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from .spec import device_target, launch
from .stages import (WCMA_ATTENTION as SPEC, WCMA_ATTN as ATTN, WCMA_ATTN_COMBINE as COMBINE, WCMA_GEMV as GEMV,
                     WCMA_POOL as POOL)
from .triton_common import dtype_name
from .wcma_frequency_triton import _fp_block, _pw_relu_tile


@triton.jit
def _wcma_attn_kernel(x_ptr, g_ptr, wpw_ptr, bpw_ptr, wl_ptr, bl_ptr, q_ptr,
                      B, H, W, h, w, C, D, T, NT,
                      acc_ptr, m_ptr, l_ptr,
                      BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr, FP32: tl.constexpr):
    tile = tl.program_id(0)
    b = tl.program_id(1)
    offs_p = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_p < h * w
    i = offs_p // w
    j = offs_p % w
    row_a = (b * H + 2 * i) * W + 2 * j
    has_b = (2 * j + 1) < W
    has_c = (2 * i + 1) < H
    g_row = tl.zeros((BLOCK_M,), dtype=tl.int32) + b * C
    offs_t = tl.arange(0, BLOCK_T)
    tmask = offs_t < T
    t = _pw_relu_tile(x_ptr, wpw_ptr, bpw_ptr, row_a, mmask, C, D, BLOCK_M, BLOCK_K, BLOCK_D, FP32)

    # pass 1: logits s[m, t] = sum_c F_p[m, c] q'[b, t, c]
    s = tl.zeros((BLOCK_M, BLOCK_T), dtype=tl.float32)
    for n0 in range(0, C, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < C
        fp = _fp_block(x_ptr, wl_ptr, bl_ptr, g_ptr, t, g_row, row_a, mmask, has_b, has_c, offs_n, nmask, W, C, D,
                       BLOCK_D, FP32)
        q = tl.load(q_ptr + (b * T + offs_t[:, None]) * C + offs_n[None, :], mask=tmask[:, None] & nmask[None, :],
                    other=0.0)  # (BLOCK_T, BLOCK_N)
        s += tl.sum(fp[:, None, :] * q[None, :, :], axis=2)

    s = tl.where(mmask[:, None], s, float("-inf"))
    m_tile = tl.max(s, axis=0)  # (BLOCK_T,), finite: every tile holds at least one position
    p = tl.exp(s - m_tile[None, :])  # (BLOCK_M, BLOCK_T), 0 at padded positions
    l_tile = tl.sum(p, axis=0)
    part = (b * NT + tile) * T + offs_t
    tl.store(m_ptr + part, m_tile, mask=tmask)
    tl.store(l_ptr + part, l_tile, mask=tmask)

    # pass 2: acc[t, c] = sum_m p[m, t] F_p[m, c] (F_p rebuilt: one more local GEMM instead of an on-chip tile)
    for n0 in range(0, C, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < C
        fp = _fp_block(x_ptr, wl_ptr, bl_ptr, g_ptr, t, g_row, row_a, mmask, has_b, has_c, offs_n, nmask, W, C, D,
                       BLOCK_D, FP32)
        acc = tl.sum(p[:, :, None] * fp[:, None, :], axis=0)  # (BLOCK_T, BLOCK_N)
        tl.store(acc_ptr + part[:, None] * C + offs_n[None, :], acc, mask=tmask[:, None] & nmask[None, :])


@triton.jit
def _attn_combine_kernel(acc_ptr, m_ptr, l_ptr, B, C, T, NT, z_ptr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    # grid: (B, cdiv(C, BLOCK_C)); tiles merged in index order (bit-reproducible)
    b = tl.program_id(0)
    cb = tl.program_id(1)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    offs_t = tl.arange(0, BLOCK_T)
    tmask = offs_t < T
    mx = tl.full((BLOCK_T,), float("-inf"), dtype=tl.float32)
    den = tl.zeros((BLOCK_T,), dtype=tl.float32)
    num = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    for it in range(0, NT):
        part = (b * NT + it) * T + offs_t
        m_i = tl.load(m_ptr + part, mask=tmask, other=0.0)
        l_i = tl.load(l_ptr + part, mask=tmask, other=0.0)
        a_i = tl.load(acc_ptr + part[:, None] * C + offs_c[None, :], mask=tmask[:, None] & cmask[None, :], other=0.0)
        new = tl.maximum(mx, m_i)
        keep = tl.exp(mx - new)  # 0 on the first tile (mx = -inf)
        take = tl.exp(m_i - new)
        den = den * keep + l_i * take
        num = num * keep[:, None] + a_i * take[:, None]
        mx = new
    den = tl.where(tmask, den, 1.0)
    z = num / den[:, None]
    tl.store(z_ptr + (b * T + offs_t[:, None]) * C + offs_c[None, :], z, mask=tmask[:, None] & cmask[None, :])


def attn_partials_shape(B: int, H: int, W: int, C: int, T: int, dtype: torch.dtype = torch.float32,
                        target: str = "default") -> Tuple[int, int]:
    """``(NT, T)``: the partial buffers are acc (B, NT, T, C), m and l (B, NT, T), all fp32."""
    dims = SPEC.dims(B=B, H=H, W=W, C=C, T=T, D=16)
    return ATTN.all_dims(dims, ATTN.config(target, dtype_name(dtype)).constexprs)["NT"], T


def wcma_attention_triton(f_t: Tensor, x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor,
                          w_local: Tensor, b_local: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor,
                          partials: Optional[Tuple[Tensor, Tensor, Tensor]] = None, fp32: str = "ieee",
                          target: Optional[str] = None) -> Tensor:
    """``F'_T`` (B, T, C) of Eq. 7 on ``F_p`` of Eq. 5-6, without writing ``F_p``.

    Same result as ``wcma_cross_attention_ref(f_t, wcma_frequency_ref(x, ...), w_q, w_k, w_v)``; returned in
    ``x.dtype``. ``F_p``, the logits and the softmax stay fp32 on chip (more precise in fp16 than the unfused path,
    which rounds ``F_p`` to fp16 in memory). ``partials`` (acc, m, l) may be passed in (tests poison them).
    ``fp32``/``target`` as :func:`wmoe.kernels.wcma_frequency_triton.wcma_frequency_triton`. Inference only; fp32 and
    fp16 verified.
    """
    if x.dim() != 4 or f_t.dim() != 3 or f_t.shape[0] != x.shape[0] or f_t.shape[2] != x.shape[3]:
        raise ValueError(f"wcma_attention_triton expects f_t (B, T, C) and x (B, H, W, C), got "
                         f"{tuple(f_t.shape)} and {tuple(x.shape)}")
    x = x.contiguous()
    B, H, W, C = x.shape
    T = f_t.shape[1]
    dt = x.dtype
    dev = x.device
    name = dtype_name(dt)
    dims = SPEC.dims(B=B, H=H, W=W, C=C, D=w_pw.shape[0], T=T)
    NT, _ = attn_partials_shape(B, H, W, C, T, dt, target or device_target(dev))
    # the folded queries q' = F_T W_q^T W_k / sqrt(C): (B, T, C) fp32, a tiny GEMM
    q = (F.linear(F.linear(f_t.float(), w_q.float()), w_k.float().t()) / C ** 0.5).contiguous()
    pooled = torch.empty(B, C, device=dev, dtype=torch.float32)
    g = torch.empty(B, C, device=dev, dtype=torch.float32)
    if partials is None:
        partials = (torch.empty(B, NT, T, C, device=dev, dtype=torch.float32),
                    torch.empty(B, NT, T, device=dev, dtype=torch.float32),
                    torch.empty(B, NT, T, device=dev, dtype=torch.float32))
    acc, m, l_ = partials
    if acc.shape != (B, NT, T, C) or m.shape != (B, NT, T) or l_.shape != (B, NT, T):
        raise ValueError(f"partials must be fp32 (B, NT, T, C), (B, NT, T), (B, NT, T) with NT={NT}")
    z = torch.empty(B, T, C, device=dev, dtype=torch.float32)
    launch(POOL, {"x_ptr": x, "p_ptr": pooled}, dims, name, target)
    launch(GEMV, {"p_ptr": pooled, "w_ptr": w_global.contiguous(), "bias_ptr": b_global.contiguous(), "g_ptr": g},
           dims, name, target)
    launch(ATTN, {"x_ptr": x, "g_ptr": g, "wpw_ptr": w_pw.to(dt).contiguous(), "bpw_ptr": b_pw.contiguous(),
                  "wl_ptr": w_local.to(dt).contiguous(), "bl_ptr": b_local.contiguous(), "q_ptr": q,
                  "acc_ptr": acc, "m_ptr": m, "l_ptr": l_}, dims, name, target, FP32=fp32)
    launch(COMBINE, {"acc_ptr": acc, "m_ptr": m, "l_ptr": l_, "z_ptr": z}, {**dims, "NT": NT}, name, target)
    return F.linear(z, w_v.float()).to(dt)  # F'_T = z W_v^T

