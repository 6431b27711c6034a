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


def moe_experts_ref(
    x: Tensor,
    w_router: Tensor,
    b_router: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    top_k: int,
) -> Tensor:
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


def moe_experts_dense_ref(
    x: Tensor,
    w_router: Tensor,
    b_router: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    top_k: int,
) -> Tensor:
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
