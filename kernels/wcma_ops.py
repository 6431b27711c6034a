"""Launchers of the WCMA Triton kernels (:mod:`wmoe.kernels.wcma_triton`) with the reference's signature."""
from __future__ import annotations

import torch
import triton
from torch import Tensor

from .wcma_triton import _gemv_kernel, _pool_kernel, _wcma_main_kernel

BLOCK_M, BLOCK_K, BLOCK_N = 32, 32, 32


def wcma_frequency_triton(x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor,
                          w_local: Tensor, b_local: Tensor, out: "Tensor | None" = None, fp32: str = "ieee") -> Tensor:
    """Same contract as :func:`wmoe.kernels.wcma_ref.wcma_frequency_ref` (BHWC in, (B, ceil(H/2), ceil(W/2), C) out).

    Weights are used in the dtype of ``x`` for the tensor-core GEMMs; accumulation is fp32. ``fp32``: the
    fp32 GEMMs' ``input_precision`` (``ieee``, ``tf32``, ``tf32x3``; see ``dispatch.Fp32``). Inference only.
    Verified dtypes: float32 and float16 (bfloat16 compiles but is not verified: Triton's CPU interpreter
    cannot run it and no GPU was available, so the dispatch sends bf16 to the reference).
    """
    if x.dim() != 4:
        raise ValueError(f"wcma_frequency_triton expects (B, H, W, C), got {tuple(x.shape)}")
    x = x.contiguous()
    B, H, W, C = x.shape
    D = w_pw.shape[0]
    h, w = (H + 1) // 2, (W + 1) // 2
    dt = x.dtype
    w_pw_c, w_l_c = w_pw.to(dt).contiguous(), w_local.to(dt).contiguous()
    pooled = torch.empty(B, C, device=x.device, dtype=torch.float32)
    g = torch.empty(B, C, device=x.device, dtype=torch.float32)
    if out is None:
        out = torch.empty(B, h, w, C, device=x.device, dtype=dt)
    elif out.shape != (B, h, w, C) or out.dtype != dt or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dt} tensor of shape {(B, h, w, C)}")
    _pool_kernel[(B, triton.cdiv(C, 64))](x, B, H, W, h, w, C, pooled, BLOCK_P=32, BLOCK_C=64, num_warps=4, num_stages=2)
    _gemv_kernel[(B, triton.cdiv(C, 64))](pooled, w_global.contiguous(), b_global.contiguous(), B, C, g,
                                          BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2)
    block_d = max(16, triton.next_power_of_2(D))
    _wcma_main_kernel[(triton.cdiv(B * h * w, BLOCK_M),)](
        x, g, w_pw_c, b_pw.contiguous(), w_l_c, b_local.contiguous(), B, H, W, h, w, C, D, out,
        BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, BLOCK_D=block_d, BLOCK_N=BLOCK_N, FP32=fp32, num_warps=8, num_stages=2)
    return out
