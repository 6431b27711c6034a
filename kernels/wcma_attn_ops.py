"""Launcher of the fused WCMA stage, Eq. 5-7 (:mod:`wmoe.kernels.wcma_attn_triton`)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
from torch import Tensor

from .wcma_attn_triton import _attn_combine_kernel, _wcma_attn_kernel
from .wcma_triton import _gemv_kernel, _pool_kernel

BLOCK_M, BLOCK_K, BLOCK_N, BLOCK_C = 32, 32, 32, 64


def attn_partials_shape(B: int, H: int, W: int, C: int, T: int) -> Tuple[int, int]:
    """``(NT, T)``: the partial buffers are acc (B, NT, T, C), m and l (B, NT, T), all fp32."""
    h, w = (H + 1) // 2, (W + 1) // 2
    return triton.cdiv(h * w, BLOCK_M), T


def wcma_attention_triton(f_t: Tensor, x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor,
                          w_local: Tensor, b_local: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor,
                          partials: Optional[Tuple[Tensor, Tensor, Tensor]] = None, fp32: str = "ieee") -> Tensor:
    """``F'_T`` (B, T, C) of Eq. 7 on ``F_p`` of Eq. 5-6, without writing ``F_p``.

    Same result as ``wcma_cross_attention_ref(f_t, wcma_frequency_ref(x, ...), w_q, w_k, w_v)``; returned in
    ``x.dtype``. ``F_p``, the logits and the softmax stay fp32 on chip (more precise in fp16 than the unfused path,
    which rounds ``F_p`` to fp16 in memory). ``partials`` (acc, m, l) may be passed in (tests poison them).
    Inference only; fp32 and fp16 verified.
    """
    if x.dim() != 4 or f_t.dim() != 3 or f_t.shape[0] != x.shape[0] or f_t.shape[2] != x.shape[3]:
        raise ValueError(f"wcma_attention_triton expects f_t (B, T, C) and x (B, H, W, C), got "
                         f"{tuple(f_t.shape)} and {tuple(x.shape)}")
    x = x.contiguous()
    B, H, W, C = x.shape
    T = f_t.shape[1]
    D = w_pw.shape[0]
    h, w = (H + 1) // 2, (W + 1) // 2
    dt = x.dtype
    dev = x.device
    NT, _ = attn_partials_shape(B, H, W, C, T)
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
    _pool_kernel[(B, triton.cdiv(C, 64))](x, B, H, W, h, w, C, pooled, BLOCK_P=32, BLOCK_C=64, num_warps=4, num_stages=2)
    _gemv_kernel[(B, triton.cdiv(C, 64))](pooled, w_global.contiguous(), b_global.contiguous(), B, C, g,
                                          BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2)
    block_d = max(16, triton.next_power_of_2(D))
    block_t = max(2, triton.next_power_of_2(T))
    _wcma_attn_kernel[(NT, B)](
        x, g, w_pw.to(dt).contiguous(), b_pw.contiguous(), w_local.to(dt).contiguous(), b_local.contiguous(), q,
        B, H, W, h, w, C, D, T, NT, acc, m, l_,
        BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, BLOCK_D=block_d, BLOCK_N=BLOCK_N, BLOCK_T=block_t, FP32=fp32, num_warps=8,
        num_stages=2)
    _attn_combine_kernel[(B, triton.cdiv(C, BLOCK_C))](acc, m, l_, B, C, T, NT, z, BLOCK_C=BLOCK_C, BLOCK_T=block_t,
                                                       num_warps=4, num_stages=2)
    return F.linear(z, w_v.float()).to(dt)  # F'_T = z W_v^T
