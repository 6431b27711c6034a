"""Fused stages of WMoE-CLIP: Triton kernels beside their PyTorch references (``wmoe.kernels``).

One file per stage: ``<stage>_triton.py`` (its ``@triton.jit`` kernels and its launcher); every stage's record
(kernels, launcher, reference, custom op, TensorRT plugin: data) in ``stages.py``, which the entry points
(``dispatch.py``: ``run_stage`` and one function per stage, exported here), the custom ops (``ops.py``), the AOT
compiler and the TensorRT plugins loop over; the kernel choice in ``choice.py``; references in ``wcma_ref.py`` /
``moe_ref.py``.

The names are resolved lazily (PEP 562): ``wmoe.kernels.spec``, ``wmoe.kernels.stages`` (``stage_specs``, also
as ``wmoe.kernels.stage_specs``) and ``wmoe.kernels.aot``'s manifest and PTX helpers must import neither torch nor
Triton, because the TensorRT engine build (``wmoe export trt``, run on a Jetson without them) reads the plugins'
launch formulas there. ``from wmoe.kernels import Kernels`` imports the dispatch module (and torch) on first use.
"""
import importlib
import importlib.util
from typing import Any, List

# names defined outside dispatch.py: the references, and the torch-free stage registry
_REFS = {"haar_dwt_ref": "wcma_ref", "wcma_frequency_ref": "wcma_ref", "wcma_cross_attention_ref": "wcma_ref",
         "wcma_cross_attention_folded_ref": "wcma_ref", "moe_router_ref": "moe_ref",
         "moe_router_probs_ref": "moe_ref", "moe_experts_ref": "moe_ref", "moe_experts_dense_ref": "moe_ref",
         "expert_outputs_dense_ref": "moe_ref", "stage_specs": "stages"}


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
