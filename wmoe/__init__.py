"""wmoe: WMoE-CLIP zero-shot anomaly detection, from the paper to the factory floor."""
__version__ = "0.1.0"

from .model.config import ModelConfig  # noqa: E402
from .moved import install as _install_moved  # noqa: E402

_install_moved()  # 0.1's flat module paths (wmoe.checkpoint, ...) import with a DeprecationWarning

__all__ = ["ModelConfig", "WMoECLIP", "Detector", "DetectionResult", "save_checkpoint", "load_model", "__version__"]


def __getattr__(name: str):
    # Lazy: `import wmoe` stays light (no torch/open_clip import) for the runtime and the CLI's --help.
    if name == "WMoECLIP":
        from .model.wmoe_clip import WMoECLIP
        return WMoECLIP
    if name in ("Detector", "DetectionResult"):
        from . import detector
        return getattr(detector, name)
    if name in ("save_checkpoint", "load_model"):
        from .model import checkpoint
        return getattr(checkpoint, name)
    raise AttributeError(f"module 'wmoe' has no attribute {name!r}")
