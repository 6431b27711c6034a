"""Evaluation metrics of the paper: image AUROC/AP/F1-max, pixel AUROC/AP/PRO, σ=4 smoothing, the table."""
from .image import image_metrics
from .pixel import pixel_metrics, region_weights
from .smoothing import smooth_maps
from .table import COLUMNS, MetricsRow, MetricsTable, evaluate_class

__all__ = ["image_metrics", "pixel_metrics", "region_weights", "smooth_maps", "MetricsTable", "MetricsRow",
           "COLUMNS", "evaluate_class"]
