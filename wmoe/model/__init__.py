"""The network of the paper and what builds, feeds and stores it (torch; ``config`` alone is torch-free).

``wmoe_clip`` (WMoECLIP: frozen CLIP ``backbone``, ``ctds`` prompts, ``wcma`` frequency/cross attention, ``samoe``
experts), ``config`` (ModelConfig), ``preprocess`` (the one image preprocessing), ``checkpoint`` (safetensors + JSON).
``from wmoe.model import WMoECLIP`` works as it did when this was one module; the names resolve lazily so that
``import wmoe.model.config`` stays free of torch.
"""
from typing import Any

_NETWORK = ("WMoECLIP", "WMoEOutput", "anomaly_probability")


def __getattr__(name: str) -> Any:
    if name in _NETWORK:
        from . import wmoe_clip
        return getattr(wmoe_clip, name)
    raise AttributeError(f"module 'wmoe.model' has no attribute {name!r}")
