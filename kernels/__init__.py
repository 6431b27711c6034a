"""Fused stages of WMoE-CLIP: Triton kernels beside their PyTorch references (``wmoe.kernels``).

One file per stage: ``<stage>_triton.py`` (its ``@triton.jit`` kernels, its spec, its launcher); the entry points
and the kernel choice in ``dispatch.py`` (exported here); references in ``wcma_ref.py`` / ``moe_ref.py``.

The names are resolved lazily (PEP 562): ``import wmoe.kernels.spec`` or ``wmoe.kernels.aot``'s manifest helpers
must not import torch, because the TensorRT engine build (``wmoe export trt``, run on a Jetson without torch)
imports the plugin code, which reads the launch formulas in :mod:`wmoe.kernels.spec`. ``from wmoe.kernels import
Kernels`` imports the dispatch module (and torch) on first use, as before.
"""
import importlib
import importlib.util
from typing import Any, List

_REFS = {"haar_dwt_ref": "wcma_ref", "wcma_frequency_ref": "wcma_ref", "wcma_cross_attention_ref": "wcma_ref",
         "wcma_cross_attention_folded_ref": "wcma_ref", "moe_router_ref": "moe_ref",
         "moe_router_probs_ref": "moe_ref", "moe_experts_ref": "moe_ref", "moe_experts_dense_ref": "moe_ref",
         "expert_outputs_dense_ref": "moe_ref"}


def _all() -> List[str]:
    return [*importlib.import_module(".dispatch", __name__).__all__, *_REFS]


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return _all()
    if name in _REFS:
        return getattr(importlib.import_module(f".{_REFS[name]}", __name__), name)
    if not name.startswith("_"):
        dispatch = importlib.import_module(".dispatch", __name__)
        if name in dispatch.__all__:
            return getattr(dispatch, name)
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: wmoe.kernels.ops
            return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
