"""PyTorch reference for the SA-MoE router and experts (Eq. 8).

The oracle for the Triton grouped top-k expert GEMM in ``moe_experts_triton.py``, and what the model runs on the CPU.

Expert ``n`` is a two-layer MLP ``E_n(x) = GELU_tanh(x W1[n] + b1[n]) W2[n] + b2[n]`` with weights stacked
over experts (``W1: (N, C, D)``, ``W2: (N, D, C)``), so the whole layer is a grouped GEMM. The router is
``softmax(x W_r^T + b_r)`` in float32; the top-k experts are chosen with ties broken towards the lower expert
index (a stable sort), and their weights renormalized to sum to one.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _tracing() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return bool(torch.jit.is_tracing() or torch.compiler.is_compiling() or exporting
                or torch.onnx.is_in_onnx_export())


def moe_router_probs_ref(x: Tensor, w_router: Tensor, b_router: Tensor) -> Tensor:
    """The router's softmax over all N experts, ``softmax(x W_r^T + b_r)`` (B, N) in float32 (differentiable)."""
    return torch.softmax(F.linear(x.float(), w_router.float(), b_router.float()), dim=-1)


def moe_router_ref(x: Tensor, w_router: Tensor, b_router: Tensor, top_k: int) -> Tuple[Tensor, Tensor]:
    """Routing gate ``G(x_a)``: returns ``(weights (B, k) float32, experts (B, k) int64)``.

    Weights are the softmax probabilities of the chosen experts renormalized over the top-k (the ``w_k`` of Eq. 8).
    """
    n_experts = w_router.shape[0]
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in [1, {n_experts}], got {top_k}")
    probs = moe_router_probs_ref(x, w_router, b_router)
    if _tracing():
        # ONNX TopK puts the lower index first on ties (its spec), the same order as the stable sort below;
        # the exporters have no stable sort.
        top_p, top_i = torch.topk(probs, top_k, dim=-1, largest=True, sorted=True)
    else:
        # A stable descending sort makes ties go to the lower expert index: deterministic on every backend.
        top_p, top_i = torch.sort(probs, dim=-1, descending=True, stable=True)
        top_p, top_i = top_p[:, :top_k], top_i[:, :top_k]
    return top_p / top_p.sum(dim=-1, keepdim=True), top_i


def expert_mlp_ref(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """One expert: ``GELU_tanh(x w1 + b1) w2 + b2`` for ``x (T, C)``, ``w1 (C, D)``, ``w2 (D, C)``."""
    return F.gelu(x @ w1 + b1, approximate="tanh") @ w2 + b2


def moe_experts_ref(x: Tensor, w_router: Tensor, b_router: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                    top_k: int) -> Tensor:
    """``x_p = sum_k w_k E_k(x_a)`` (Eq. 8) for ``x (B, C)``; returns ``(B, C)`` in the dtype of ``x``.

    A plain loop over experts: each expert runs once on the tokens routed to it (the eager baseline the
    kernel is measured against).
    """
    weights, experts = moe_router_ref(x, w_router, b_router, top_k)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for n in range(w1.shape[0]):
        tok, slot = torch.nonzero(experts == n, as_tuple=True)
        if tok.numel() == 0:
            continue
        y = expert_mlp_ref(x[tok], w1[n], b1[n], w2[n], b2[n]).float()
        out.index_add_(0, tok, y * weights[tok, slot, None])
    return out.to(x.dtype)


def moe_experts_dense_ref(x: Tensor, w_router: Tensor, b_router: Tensor, w1: Tensor, b1: Tensor, w2: Tensor,
                          b2: Tensor, top_k: int) -> Tensor:
    """The same result as :func:`moe_experts_ref` computed densely: every expert on every token, masked combine.

    Host-sync free and export friendly (no data-dependent shapes); this is the form ONNX export uses.
    """
    weights, experts = moe_router_ref(x, w_router, b_router, top_k)
    n_experts = w1.shape[0]
    # (B, N) combine weights: zero for experts not chosen.
    dense_w = torch.zeros(x.shape[0], n_experts, dtype=torch.float32, device=x.device)
    dense_w = dense_w.scatter(1, experts, weights)
    y = expert_outputs_dense_ref(x, w1, b1, w2, b2)
    return torch.einsum("nbc,bn->bc", y.float(), dense_w).to(x.dtype)


def expert_outputs_dense_ref(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """Every expert on every token: ``E_n(x_b)`` as ``(N, B, C)`` in the dtype of ``x`` (see :func:`expert_mlp_ref`)."""
    h = F.gelu(torch.einsum("bc,ncd->nbd", x, w1) + b1[:, None, :], approximate="tanh")
    return torch.einsum("nbd,ndc->nbc", h, w2) + b2[:, None, :]


def moe_experts_fake(x: Tensor, w_router: Tensor, b_router: Tensor, w1: Tensor, b1: Tensor, w2: Tensor,
                     b2: Tensor, top_k: int, kernels: str = "auto", fp32: str = "ieee") -> Tensor:
    """The shape of ``x_p`` (the custom op's meta implementation): that of ``x``."""
    return x.new_empty(x.shape)


# --- the TensorRT plugin of the MoE stage: the router kernel as one ONNX node, the experts in standard ops ---

def moe_experts_onnx(node, op, x, w_router, b_router, w1, b1, w2, b2, top_k: int, kernels: str = "auto",
                     fp32: str = "ieee"):
    """``wmoe::moe_experts`` as ONNX (onnxscript, traced by the exporter): the plugin node of ``_router_kernel``,
    then the k experts as a dense masked batched GEMM in standard ops (every expert is hit from batch ~16 on, so
    the layer reads all expert weights anyway)."""
    import math

    import numpy as np
    import onnxscript

    def const(v, dtype=np.int64):
        return op.Constant(value=onnxscript.ir.tensor(np.asarray(v, dtype=dtype)))

    FLOAT = 1  # onnx.TensorProto.FLOAT
    n_experts = int(w1.shape[0])
    weights, experts = node(x, op.Cast(w_router, to=FLOAT), op.Cast(b_router, to=FLOAT), top_k=top_k,
                            n_experts=n_experts, aot=1)
    # (B, N) combine weights, zero for the experts not chosen (Eq. 8's w_k)
    ids = op.Range(const(0), const(n_experts), const(1))
    hit = op.Cast(op.Equal(op.Cast(op.Unsqueeze(experts, const([2])), to=7), ids), to=FLOAT)
    dense_w = op.ReduceSum(op.Mul(hit, op.Unsqueeze(weights, const([2]))), const([1]), keepdims=0)
    h = op.Add(op.Einsum(x, w1, equation="bc,ncd->nbd"), op.Unsqueeze(b1, const([1])))
    # GELU (tanh form, the experts' activation): opset 18 has no Gelu(approximate="tanh")
    k = op.CastLike(const(math.sqrt(2.0 / math.pi), np.float32), h)
    c = op.CastLike(const(0.044715, np.float32), h)
    half = op.CastLike(const(0.5, np.float32), h)
    one = op.CastLike(const(1.0, np.float32), h)
    h = op.Mul(op.Mul(half, h), op.Add(one, op.Tanh(op.Mul(k, op.Add(h, op.Mul(c, op.Mul(h, op.Mul(h, h))))))))
    y = op.Add(op.Einsum(h, w2, equation="nbd,ndc->nbc"), op.Unsqueeze(b2, const([1])))
    return op.CastLike(op.Einsum(op.Cast(y, to=FLOAT), dense_w, equation="nbc,bn->bc"), x)


def moe_router_node_ref(x, w_router, b_router, top_k=None, n_experts=None, aot=None):
    """What ``_router_kernel`` (the plugin node) computes, from numpy inputs: (weights float32, experts int32)."""
    import numpy as np

    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float64))

    w, e = moe_router_ref(t(x), t(w_router), t(b_router), int(top_k))
    return w.numpy().astype(np.float32), e.numpy().astype(np.int32)
