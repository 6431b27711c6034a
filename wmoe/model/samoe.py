"""Semantic-Aware Mixture-of-Experts (SA-MoE), Sec. 2.3, Eq. 8.

Per-layer adapters (a linear layer then global average pooling) project each layer's patch grid to an
``E / L`` slice; the slices are concatenated to the contextual token ``x_a`` (E). A router picks the top-k of
N experts, whose outputs are combined with renormalized weights into ``x_p`` (Eq. 8); ``x_cls = x_p + x_c``.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import Tensor, nn

from wmoe.kernels import KernelChoice, moe_experts, moe_router


def _split(dim: int, parts: int) -> List[int]:
    return [dim // parts + (1 if i < dim % parts else 0) for i in range(parts)]


class SAMoE(nn.Module):
    """``x_p = sum_k w_k E_k(x_a)`` from the multi-layer patch grids.

    Args:
        dim: channel width E; n_layers: number of feature layers L; n_experts: N; top_k: k;
        hidden: width of each expert MLP.
    """

    def __init__(self, dim: int, n_layers: int, n_experts: int = 8, top_k: int = 2, hidden: int = 768) -> None:
        super().__init__()
        # Concatenating L slices of width ~E/L gives x_a in R^E as the paper states (x_a in R^C).
        self.adapters = nn.ModuleList(nn.Linear(dim, d) for d in _split(dim, n_layers))
        self.router = nn.Linear(dim, n_experts)
        # Expert weights stacked over experts so the layer is one grouped GEMM (wmoe.kernels.moe_experts).
        self.w1 = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(n_experts, dim))
        nn.init.normal_(self.w1, std=1.0 / math.sqrt(dim))
        nn.init.normal_(self.w2, std=1e-3)  # small: x_cls starts close to the class token x_c
        self.top_k = top_k
        self.kernels = KernelChoice()  # which implementation the router and experts run (WMoECLIP.set_kernels)

    def context(self, grids: Sequence[Tensor]) -> Tensor:
        """``x_a`` (B, E): GAP commutes with the adapters' linear map, so pool first (same result, less work)."""
        return torch.cat([a(g.mean(dim=(1, 2))) for a, g in zip(self.adapters, grids)], dim=-1)

    def route(self, x_a: Tensor):
        """Router weights and expert indices (B, k), for the utilization statistics (wmoe.model.expert_health)
        and tests."""
        return moe_router(x_a, self.router.weight, self.router.bias, self.top_k, kernels=self.kernels)

    def mix(self, x_a: Tensor) -> Tensor:
        """``x_p = sum_k w_k E_k(x_a)`` (Eq. 8) from the contextual token ``x_a`` (B, E)."""
        return moe_experts(x_a, self.router.weight, self.router.bias, self.w1, self.b1, self.w2, self.b2, self.top_k,
                           kernels=self.kernels)

    def forward(self, grids: Sequence[Tensor]) -> Tensor:
        return self.mix(self.context(grids))
