"""The WCMA frequency stage (Eq. 5-6), fused with the Haar DWT: its Triton kernels, its spec, its launcher.

Haar identity (see ``wcma_ref``): for each 2x2 block [[a, b], [c, d]], ``F_L + F_H = 2a`` and
``F_L = LL = (a+b+c+d)/2``, ``F_H = 2a - LL``. So the attention input is a strided subsample of the grid and only
the output epilogue needs all four pixels.

Three launches:

1. ``_pool_kernel``: ``p[b, c] = ReLU(mean_{i,j} 2 x[b, 2i, 2j, c])`` (the tiny pooling pre-pass of GAP),
2. ``_gemv_kernel``: ``g = p W_1^T + b_1`` for BLOCK_B images at once (the global branch; one read of ``W_1``
   per BLOCK_B images, not per image),
3. ``_wcma_main_kernel``: per tile of BLOCK_M output positions: ``t = ReLU(2a W_pw^T + b_pw)`` on tensor cores
   (``tl.dot``), kept on chip; then per BLOCK_N channels ``loc = t W_2^T + b_2``, and the epilogue
   ``F_p = F_H * sigmoid(loc + g[b]) + F_L`` computed from a, b, c, d (zero outside the grid: odd sides).

TensorRT-plugin friendly by construction: arguments are ordered inputs, int32 scalars, outputs; no scratch memory,
no TMA descriptors; float constants are compile-time constants. ``SPEC`` (the stage's record in
:mod:`wmoe.kernels.stages`, torch- and Triton-free) is the single description of the launches.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .spec import launch
from .stages import WCMA_FREQUENCY as SPEC, WCMA_GEMV as GEMV, WCMA_MAIN as MAIN, WCMA_POOL as POOL
from .triton_common import _mma, dtype_name


@triton.jit
def _pool_kernel(x_ptr, B, H, W, h, w, C, p_ptr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # grid: (B, cdiv(C, BLOCK_C))
    b = tl.program_id(0)
    cb = tl.program_id(1)
    offs_c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    n = h * w
    for start in range(0, n, BLOCK_P):
        offs_p = start + tl.arange(0, BLOCK_P)
        pmask = offs_p < n
        i = offs_p // w
        j = offs_p % w
        row = (b * H + 2 * i) * W + 2 * j  # top-left pixel a of each block
        ptrs = x_ptr + row[:, None] * C + offs_c[None, :]
        a = tl.load(ptrs, mask=pmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(a, axis=0)
    mean = 2.0 * acc / n
    tl.store(p_ptr + b * C + offs_c, tl.maximum(mean, 0.0), mask=cmask)


@triton.jit
def _gemv_kernel(p_ptr, w_ptr, bias_ptr, B, C, g_ptr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    # g[b, n] = sum_k p[b, k] W[n, k] + bias[n] for BLOCK_B images; grid: (cdiv(B, BLOCK_B), cdiv(C, BLOCK_N))
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    bmask = offs_b < B
    nmask = offs_n < C
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < C
        pv = tl.load(p_ptr + offs_b[:, None] * C + offs_k[None, :], mask=bmask[:, None] & kmask[None, :], other=0.0)
        wv = tl.load(w_ptr + offs_n[None, :] * C + offs_k[:, None], mask=kmask[:, None] & nmask[None, :],
                     other=0.0).to(tl.float32)  # (BLOCK_K, BLOCK_N) = W_1^T tile
        acc += _mma(pv, wv, "ieee")  # fp32 inputs, exact: the global branch is < 1% of the stage's FLOPs
    acc += tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    tl.store(g_ptr + offs_b[:, None] * C + offs_n[None, :], acc, mask=bmask[:, None] & nmask[None, :])


@triton.jit
def _pw_relu_tile(x_ptr, wpw_ptr, bpw_ptr, row_a, mmask, C, D,
                  BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, FP32: tl.constexpr):
    """``t = ReLU(2a W_pw^T + b_pw)`` for BLOCK_M positions (a = row ``row_a`` of the grid): (BLOCK_M, BLOCK_D) in
    the grid's dtype, fp32 accumulation; it stays on chip for the local GEMM."""
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    t = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < C
        a = tl.load(x_ptr + row_a[:, None] * C + offs_k[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        wt = tl.load(wpw_ptr + offs_d[None, :] * C + offs_k[:, None], mask=kmask[:, None] & dmask[None, :],
                     other=0.0)  # (BLOCK_K, BLOCK_D) = W_pw^T tile
        t += _mma(a, wt, FP32)
    t = 2.0 * t + tl.load(bpw_ptr + offs_d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    return tl.maximum(t, 0.0).to(x_ptr.dtype.element_ty)


@triton.jit
def _fp_block(x_ptr, wl_ptr, bl_ptr, g_ptr, t, g_row, row_a, mmask, has_b, has_c, offs_n, nmask, W, C, D,
              BLOCK_D: tl.constexpr, FP32: tl.constexpr):
    """``F_p`` (Eq. 6) for BLOCK_M positions × the channels ``offs_n``, fp32: ``loc = t W_2^T + b_2 + g`` and the
    epilogue ``(2a - LL)·σ(loc) + LL`` from the four pixels of each block (zero outside the grid: odd sides)."""
    offs_d = tl.arange(0, BLOCK_D)
    wl = tl.load(wl_ptr + offs_n[None, :] * D + offs_d[:, None], mask=(offs_d < D)[:, None] & nmask[None, :],
                 other=0.0)  # (BLOCK_D, BLOCK_N) = W_2^T tile
    mn = mmask[:, None] & nmask[None, :]
    loc = _mma(t, wl, FP32) + tl.load(bl_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    loc += tl.load(g_ptr + g_row[:, None] + offs_n[None, :], mask=mn, other=0.0)
    base = x_ptr + offs_n[None, :]
    a = tl.load(base + row_a[:, None] * C, mask=mn, other=0.0).to(tl.float32)
    bb = tl.load(base + (row_a + 1)[:, None] * C, mask=mn & has_b[:, None], other=0.0).to(tl.float32)
    cc = tl.load(base + (row_a + W)[:, None] * C, mask=mn & has_c[:, None], other=0.0).to(tl.float32)
    dd = tl.load(base + (row_a + W + 1)[:, None] * C, mask=mn & (has_b & has_c)[:, None], other=0.0).to(tl.float32)
    ll = 0.5 * (a + bb + cc + dd)
    return (2.0 * a - ll) * tl.sigmoid(loc) + ll


@triton.jit
def _wcma_main_kernel(x_ptr, g_ptr, wpw_ptr, bpw_ptr, wl_ptr, bl_ptr,
                      B, H, W, h, w, C, D,
                      out_ptr,
                      BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_N: tl.constexpr, FP32: tl.constexpr):
    # grid: (cdiv(B*h*w, BLOCK_M),)
    pid = tl.program_id(0)
    M = B * h * w
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = offs_m < M
    bidx = offs_m // (h * w)
    rem = offs_m % (h * w)
    i = rem // w
    j = rem % w
    row_a = (bidx * H + 2 * i) * W + 2 * j
    has_b = (2 * j + 1) < W
    has_c = (2 * i + 1) < H
    t = _pw_relu_tile(x_ptr, wpw_ptr, bpw_ptr, row_a, mmask, C, D, BLOCK_M, BLOCK_K, BLOCK_D, FP32)
    for n0 in range(0, C, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        nmask = offs_n < C
        res = _fp_block(x_ptr, wl_ptr, bl_ptr, g_ptr, t, bidx * C, row_a, mmask, has_b, has_c, offs_n, nmask, W, C, D,
                        BLOCK_D, FP32)
        tl.store(out_ptr + offs_m[:, None] * C + offs_n[None, :], res.to(out_ptr.dtype.element_ty),
                 mask=mmask[:, None] & nmask[None, :])


def wcma_frequency_triton(x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor,
                          w_local: Tensor, b_local: Tensor, out: Optional[Tensor] = None, fp32: str = "ieee",
                          target: Optional[str] = None) -> Tensor:
    """Same contract as :func:`wmoe.kernels.wcma_ref.wcma_frequency_ref` (BHWC in, (B, ceil(H/2), ceil(W/2), C) out).

    Weights are used in the dtype of ``x`` for the tensor-core GEMMs; accumulation is fp32. ``fp32``: the
    fp32 GEMMs' ``input_precision`` (``ieee``, ``tf32``, ``tf32x3``; see ``dispatch.Fp32``). ``target``: the
    configuration to use (default: the device's; tests run every target's tiles under the interpreter).
    Verified dtypes: float32 and float16 (bfloat16 compiles but is not verified: Triton's CPU interpreter
    cannot run it and no GPU was available, so the dispatch sends bf16 to the reference). Inference only.
    """
    if x.dim() != 4:
        raise ValueError(f"wcma_frequency_triton expects (B, H, W, C), got {tuple(x.shape)}")
    x = x.contiguous()
    B, H, W, C = x.shape
    dims = SPEC.dims(B=B, H=H, W=W, C=C, D=w_pw.shape[0])
    dt = x.dtype
    pooled = torch.empty(B, C, device=x.device, dtype=torch.float32)
    g = torch.empty(B, C, device=x.device, dtype=torch.float32)
    shape = (B, dims["h"], dims["w"], C)
    if out is None:
        out = torch.empty(shape, device=x.device, dtype=dt)
    elif tuple(out.shape) != shape or out.dtype != dt or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dt} tensor of shape {shape}")
    name = dtype_name(dt)
    launch(POOL, {"x_ptr": x, "p_ptr": pooled}, dims, name, target)
    launch(GEMV, {"p_ptr": pooled, "w_ptr": w_global.contiguous(), "bias_ptr": b_global.contiguous(), "g_ptr": g},
           dims, name, target)
    launch(MAIN, {"x_ptr": x, "g_ptr": g, "wpw_ptr": w_pw.to(dt).contiguous(), "bpw_ptr": b_pw.contiguous(),
                  "wl_ptr": w_local.to(dt).contiguous(), "bl_ptr": b_local.contiguous(), "out_ptr": out},
           dims, name, target, FP32=fp32)
    return out
