"""Data layer: meta.json generators, image/mask loading, the AnomalyDataset and the embedded demo set.

``wmoe.data.images`` (``preprocess``, ``load_image``, ``CLIP_MEAN``/``CLIP_STD``) has no side effects and is safe
to import from model code.

The names below are resolved on first use (PEP 562): ``import wmoe.data.meta`` (reading a meta.json, as the
torch-free quantization does) imports no torch; ``from wmoe.data import AnomalyDataset`` imports the data set
(and torch) when asked.
"""
import importlib
from typing import Any, List

# name -> the submodule that defines it
_NAMES = {
    **dict.fromkeys(["AnomalyDataset", "Sample", "SkippedFiles", "SKIPPED", "collate", "is_skipped"], "dataset"),
    **dict.fromkeys(["DEFECT_TYPES", "DEMO_CATEGORIES", "DEMO_TEST_CLASSES", "DEMO_TRAIN_CLASSES", "DemoConfig",
                     "make_defect", "make_demo_dataset"], "demo"),
    **dict.fromkeys(["CLIP_MEAN", "CLIP_STD", "IMAGE_EXTENSIONS", "DataError", "load_image", "load_mask",
                     "preprocess", "resize_mask"], "images"),
    **dict.fromkeys(["GENERATORS", "build_meta", "list_formats", "read_meta", "register_format", "validate_meta",
                     "write_meta"], "meta"),
}
__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted({*globals(), *__all__})
