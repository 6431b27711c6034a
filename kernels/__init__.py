"""Fused stages of WMoE-CLIP: Triton kernels beside their PyTorch references (``wmoe.kernels``).

One file per stage: ``<stage>_triton.py`` (its ``@triton.jit`` kernels, its spec, its launcher); the entry points
and the kernel choice in ``dispatch.py`` (exported here); references in ``wcma_ref.py`` / ``moe_ref.py``.
"""
from . import dispatch
from .dispatch import *  # noqa: F401,F403 - the entry points and the kernel choice (dispatch.__all__)
from .moe_ref import (expert_outputs_dense_ref, moe_experts_dense_ref, moe_experts_ref, moe_router_probs_ref,
                      moe_router_ref)
from .wcma_ref import (haar_dwt_ref, wcma_cross_attention_folded_ref, wcma_cross_attention_ref,
                       wcma_frequency_ref)

__all__ = [*dispatch.__all__, "haar_dwt_ref", "wcma_frequency_ref", "wcma_cross_attention_ref",
           "wcma_cross_attention_folded_ref", "moe_router_ref", "moe_router_probs_ref", "moe_experts_ref",
           "moe_experts_dense_ref", "expert_outputs_dense_ref"]
