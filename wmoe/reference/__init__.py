"""The normal-reference mode: when a line has good images of a product, a memory of their patch features (and its
nearest-neighbour map) beside the zero-shot map, fused into one map and score (ours, after AnomalyMoE and PatchCore;
docs/paper_mapping.md "Normal-reference mode").

``wmoe fit-normal CKPT good_dir --out ref/`` builds it (:func:`fit_normal`), ``wmoe eval --reference ref/`` evaluates
it, ``wmoe export onnx --reference ref/ --product NAME`` puts one product's reference into the same ONNX graph.
Names are imported on first use (the command line reads the default weight without importing torch).
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "find_good_images": "fit", "fit_class": "fit", "fit_normal": "fit", "memory_table": "fit",
    "DEFAULT_FUSION_WEIGHT": "fusion", "FUSED_SCORE_MEANING": "fusion", "FusionStats": "fusion",
    "ReferenceError": "fusion", "fuse": "fusion", "ReferenceModel": "model", "REFERENCE_FILE": "store",
    "ClassReference": "store", "NormalReference": "store", "ReferenceConfig": "store",
    "DEFAULT_EXPERTS_WEIGHT": "fusion", "ExpertsConfig": "experts", "LevelExperts": "experts",
    "fit_experts": "experts",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
