"""Wavelet-enhanced Cross-Modal Attention (WCMA), Sec. 2.2, Eq. 5-7.

One module per feature layer. The frequency stage (Haar DWT, channel attention ``W_h``, ``F_p``) runs through
``wmoe.kernels.wcma_frequency`` and the text queries attend over ``F_p`` (Eq. 7); on CUDA at inference both run as
one fused Triton pass (``wmoe.kernels.wcma_attention``) that never writes ``F_p``, elsewhere as the PyTorch
reference.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from wmoe.kernels import KernelChoice, wcma_attention, wcma_frequency


class WCMA(nn.Module):
    """Refine the text embeddings ``F_T`` (B, 2, E) with the patch grid ``F_I`` (B, H, W, E) of one layer.

    Args:
        dim: channel width E.
        hidden: width D of the pointwise convolution ``delta_p`` (not given in the paper).
        residual: return ``F_T + F'_T`` (default, ours: "refine") instead of ``F'_T`` alone (Eq. 7 as written).
    """

    def __init__(self, dim: int, hidden: int, residual: bool = True) -> None:
        super().__init__()
        self.global_fc = nn.Linear(dim, dim)  # W_1 of Eq. 5 (global branch)
        self.pw = nn.Linear(dim, hidden)  # delta_p: 1x1 convolution == per-position linear in BHWC
        self.local_fc = nn.Linear(hidden, dim)  # W_2 of Eq. 5 (local branch)
        self.q = nn.Linear(dim, dim, bias=False)  # W_q, W_k, W_v of Eq. 7
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.residual = residual
        self.kernels = KernelChoice()  # which implementation the fused stages run (WMoECLIP.set_kernels)
        if residual:
            # Start at F'_T ~ F_T so training begins from CLIP's own text-image alignment.
            nn.init.normal_(self.v.weight, std=1e-3)

    def frequency(self, patches: Tensor) -> Tensor:
        """``F_p`` (Eq. 5-6): (B, H, W, E) -> (B, ceil(H/2), ceil(W/2), E)."""
        return wcma_frequency(patches, self.global_fc.weight, self.global_fc.bias, self.pw.weight, self.pw.bias,
                              self.local_fc.weight, self.local_fc.bias, kernels=self.kernels)

    def forward(self, text: Tensor, patches: Tensor) -> Tensor:
        att = wcma_attention(text.to(patches.dtype), patches, self.global_fc.weight, self.global_fc.bias,
                             self.pw.weight, self.pw.bias, self.local_fc.weight, self.local_fc.bias,
                             self.q.weight, self.k.weight, self.v.weight, kernels=self.kernels)
        return text + att.to(text.dtype) if self.residual else att.to(text.dtype)
