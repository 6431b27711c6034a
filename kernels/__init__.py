"""Fused stages of WMoE-CLIP: Triton kernels beside their PyTorch references (``wmoe.kernels``)."""
from .dispatch import (ChoiceLike, Fp32, KernelChoice, Kernels, as_choice, moe_experts, moe_router, wcma_attention,
                       wcma_frequency)
from .moe_ref import (expert_outputs_dense_ref, moe_experts_dense_ref, moe_experts_ref, moe_router_probs_ref,
                      moe_router_ref)
from .wcma_ref import (haar_dwt_ref, wcma_cross_attention_folded_ref, wcma_cross_attention_ref,
                       wcma_frequency_ref)

__all__ = [
    "Kernels", "Fp32", "ChoiceLike", "KernelChoice", "as_choice", "wcma_frequency", "wcma_attention", "moe_router",
    "moe_experts", "haar_dwt_ref", "wcma_frequency_ref", "wcma_cross_attention_ref",
    "wcma_cross_attention_folded_ref", "moe_router_ref", "moe_router_probs_ref", "moe_experts_ref",
    "moe_experts_dense_ref", "expert_outputs_dense_ref",
]
