"""Data layer: meta.json generators, image/mask loading, the AnomalyDataset and the embedded demo set.

``wmoe.data.images`` (``preprocess``, ``load_image``, ``CLIP_MEAN``/``CLIP_STD``) has no side effects and is safe
to import from model code.
"""
from .dataset import SKIPPED, AnomalyDataset, Sample, SkippedFiles, collate, is_skipped
from .demo import (
    DEFECT_TYPES,
    DEMO_CATEGORIES,
    DEMO_TEST_CLASSES,
    DEMO_TRAIN_CLASSES,
    DemoConfig,
    make_defect,
    make_demo_dataset,
)
from .images import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_EXTENSIONS,
    DataError,
    load_image,
    load_mask,
    preprocess,
    resize_mask,
)
from .meta import GENERATORS, build_meta, list_formats, read_meta, register_format, validate_meta, write_meta

__all__ = [
    "AnomalyDataset", "Sample", "SkippedFiles", "SKIPPED", "collate", "is_skipped",
    "DEFECT_TYPES", "DEMO_CATEGORIES", "DEMO_TEST_CLASSES", "DEMO_TRAIN_CLASSES", "DemoConfig",
    "make_defect", "make_demo_dataset",
    "CLIP_MEAN", "CLIP_STD", "IMAGE_EXTENSIONS", "DataError", "load_image", "load_mask", "preprocess",
    "resize_mask",
    "GENERATORS", "build_meta", "list_formats", "read_meta", "register_format", "validate_meta", "write_meta",
]
