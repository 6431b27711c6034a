"""Fused stages of WMoE-CLIP: Triton kernels beside their PyTorch references (``wmoe.kernels``)."""
from .dispatch import get_backend, moe_experts, set_backend, wcma_attention, wcma_frequency
from .moe_ref import moe_experts_dense_ref, moe_experts_ref, moe_router_ref
from .wcma_ref import (haar_dwt_ref, wcma_cross_attention_folded_ref, wcma_cross_attention_ref,
                       wcma_frequency_ref)

__all__ = [
    "get_backend", "set_backend", "wcma_frequency", "wcma_attention", "moe_experts",
    "haar_dwt_ref", "wcma_frequency_ref", "wcma_cross_attention_ref", "wcma_cross_attention_folded_ref",
    "moe_router_ref", "moe_experts_ref", "moe_experts_dense_ref",
]
