"""PyTorch reference for the WCMA frequency stage (Eq. 5-6) and its cross-attention (Eq. 7).

These functions are the test oracle for the Triton kernels in ``wcma_frequency_triton.py`` and
``wcma_attention_triton.py``, and the code the model runs when the kernels are not used (CPU tensors, training, ONNX's portable flavor). Layout is channels-last:
a patch grid is ``(B, H, W, C)``.

Haar convention (pinned to ``pytorch_wavelets.DWTForward(J=1, wave="haar", mode="zero")``): odd sides are
zero-padded at the end, each 2x2 block ``[[a, b], [c, d]]`` gives

    LL = (a+b+c+d)/2,  LH = (a+b-c-d)/2,  HL = (a-b+c-d)/2,  HH = (a-b-c+d)/2

so ``F_L + F_H = LL + LH + HL + HH = 2a``: the attention input of Eq. 5 is a strided subsample, and only
``LL`` needs all four pixels.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _pad_even(x: Tensor) -> Tensor:
    """Zero-pad H and W (dims 1, 2 of a BHWC tensor) at the end up to even sizes."""
    H, W = x.shape[1], x.shape[2]
    ph, pw = H % 2, W % 2
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    return x


def haar_dwt_ref(x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """One-level 2-D Haar DWT of a BHWC grid: ``(LL, LH, HL, HH)``, each ``(B, ceil(H/2), ceil(W/2), C)``."""
    if x.dim() != 4:
        raise ValueError(f"haar_dwt_ref expects (B, H, W, C), got shape {tuple(x.shape)}")
    x = _pad_even(x)
    a = x[:, 0::2, 0::2]
    b = x[:, 0::2, 1::2]
    c = x[:, 1::2, 0::2]
    d = x[:, 1::2, 1::2]
    ll = (a + b + c + d) * 0.5
    lh = (a + b - c - d) * 0.5
    hl = (a - b + c - d) * 0.5
    hh = (a - b - c + d) * 0.5
    return ll, lh, hl, hh


def wcma_frequency_ref(
    x: Tensor,
    w_global: Tensor,
    b_global: Tensor,
    w_pw: Tensor,
    b_pw: Tensor,
    w_local: Tensor,
    b_local: Tensor,
) -> Tensor:
    """Frequency-enhanced patch features ``F_p`` (Eq. 5-6).

    Args:
        x: patch grid ``F_I``, ``(B, H, W, C)``.
        w_global, b_global: ``W_1`` of Eq. 5, ``(C, C)`` and ``(C,)`` (nn.Linear layout: out x in).
        w_pw, b_pw: pointwise convolution ``delta_p``, ``(D, C)`` and ``(D,)``.
        w_local, b_local: ``W_2`` of Eq. 5, ``(C, D)`` and ``(C,)``.

    Returns:
        ``F_p = F_H * W_h + F_L`` with ``W_h = sigmoid(W_1 ReLU(GAP(F_L+F_H)) + W_2 ReLU(delta_p(F_L+F_H)))``,
        shape ``(B, ceil(H/2), ceil(W/2), C)``, dtype of ``x``.
    """
    ll, lh, hl, hh = haar_dwt_ref(x)
    f_l = ll
    f_h = lh + hl + hh
    s = f_l + f_h  # = 2 * top-left pixel of each block
    g = F.linear(F.relu(s.mean(dim=(1, 2))), w_global, b_global)  # (B, C): global branch
    loc = F.linear(F.relu(F.linear(s, w_pw, b_pw)), w_local, b_local)  # (B, h, w, C): local branch
    w_h = torch.sigmoid(loc + g[:, None, None, :])
    return f_h * w_h + f_l


def wcma_cross_attention_ref(f_t: Tensor, f_p: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor) -> Tensor:
    """Text queries over frequency-enhanced patches (Eq. 7): ``softmax(Q_T K_I^T / sqrt(C)) V_I``.

    Args:
        f_t: text embeddings ``F_T``, ``(B, T, C)`` (T = 2: normal, abnormal).
        f_p: ``F_p``, ``(B, h, w, C)``.
        w_q, w_k, w_v: ``(C, C)`` each, nn.Linear layout (out x in), no bias.

    Returns:
        ``F'_T``, ``(B, T, C)``.
    """
    B, h, w, C = f_p.shape
    kv = f_p.reshape(B, h * w, C)
    q = F.linear(f_t, w_q)
    k = F.linear(kv, w_k)
    v = F.linear(kv, w_v)
    attn = torch.softmax((q @ k.transpose(1, 2)) / (C ** 0.5), dim=-1)
    return attn @ v


def wcma_cross_attention_folded_ref(f_t: Tensor, f_p: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor) -> Tensor:
    """Eq. 7 refactored by associativity, the form the fused kernel computes (equal to
    :func:`wcma_cross_attention_ref` in exact arithmetic):

    ``Q_T K_I^T = (F_T W_q^T W_k) F_p^T`` and ``softmax(·) V_I = (softmax(·) F_p) W_v^T``, so neither ``K_I`` nor
    ``V_I`` (two (h·w, C) × (C, C) projections) is formed: the cost per image drops from ``4·h·w·C²`` to
    ``4·T·C² + 4·T·h·w·C`` FLOPs (T = 2 text queries).
    """
    B, h, w, C = f_p.shape
    kv = f_p.reshape(B, h * w, C)
    q = F.linear(F.linear(f_t, w_q), w_k.t()) / (C ** 0.5)  # q' = F_T W_q^T W_k / sqrt(C)
    attn = torch.softmax(q @ kv.transpose(1, 2), dim=-1)
    return F.linear(attn @ kv, w_v)


def wcma_attention_ref(f_t: Tensor, x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor,
                       w_local: Tensor, b_local: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor) -> Tensor:
    """The whole WCMA stage, ``F'_T`` of Eq. 7 over ``F_p`` of Eq. 5-6 (the stage ``wcma_attention``'s oracle)."""
    f_p = wcma_frequency_ref(x, w_global, b_global, w_pw, b_pw, w_local, b_local)
    return wcma_cross_attention_ref(f_t.to(f_p.dtype), f_p, w_q, w_k, w_v)


def wcma_frequency_fake(x: Tensor, w_global: Tensor, b_global: Tensor, w_pw: Tensor, b_pw: Tensor, w_local: Tensor,
                        b_local: Tensor, kernels: str = "auto", fp32: str = "ieee") -> Tensor:
    """The shape of ``F_p`` (the custom op's meta implementation): (B, ⌈H/2⌉, ⌈W/2⌉, C)."""
    B, H, W, C = x.shape
    return x.new_empty((B, (H + 1) // 2, (W + 1) // 2, C))


# --- the TensorRT plugin of the frequency stage: its main kernel as one ONNX node, the rest in standard ops ---

_INT_MAX = 2**62


def wcma_frequency_onnx(node, op, x, w_global, b_global, w_pw, b_pw, w_local, b_local, kernels: str = "auto",
                        fp32: str = "ieee"):
    """``wmoe::wcma_frequency`` as ONNX (onnxscript, traced by the exporter): the global branch of Eq. 5,
    ``g = W_1 ReLU(GAP(2a)) + b_1``, in standard ops (fp32), then the plugin node of ``_wcma_main_kernel``."""
    import numpy as np
    import onnxscript

    def const(v, dtype=np.int64):
        return op.Constant(value=onnxscript.ir.tensor(np.asarray(v, dtype=dtype)))

    FLOAT = 1  # onnx.TensorProto.FLOAT
    # F_L + F_H = 2a (top-left pixel of each 2x2 block; odd sides need no padding here)
    a = op.Slice(x, const([0, 0]), const([_INT_MAX, _INT_MAX]), const([1, 2]), const([2, 2]))
    pooled = op.Relu(op.Mul(op.ReduceMean(op.Cast(a, to=FLOAT), const([1, 2]), keepdims=0),
                            const(2.0, np.float32)))
    g = op.Gemm(pooled, op.Cast(w_global, to=FLOAT), op.Cast(b_global, to=FLOAT), transB=1)
    hidden = w_pw.shape[0] if getattr(w_pw, "shape", None) is not None else 0
    return node(x, g, w_pw, op.Cast(b_pw, to=FLOAT), w_local, op.Cast(b_local, to=FLOAT), hidden=int(hidden), aot=1)


def wcma_main_ref(x, g, w_pw, b_pw, w_local, b_local, hidden=None, aot=None):
    """What ``_wcma_main_kernel`` (the plugin node) computes, in float64 numpy: ``F_p = (2a - LL)·σ(loc + g) +
    LL``, Eq. 5-6, with the global branch ``g`` given."""
    import numpy as np
    if hidden is not None and int(hidden) != w_pw.shape[0]:
        raise ValueError(f"attribute hidden={hidden} but w_pw has {w_pw.shape[0]} rows")

    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float64))

    ll, lh, hl, hh = haar_dwt_ref(t(x))
    s = ll + lh + hl + hh  # 2a
    loc = F.linear(torch.relu(F.linear(s, t(w_pw), t(b_pw))), t(w_local), t(b_local))
    return ((s - ll) * torch.sigmoid(loc + t(g)[:, None, None, :]) + ll).numpy().astype(x.dtype)
