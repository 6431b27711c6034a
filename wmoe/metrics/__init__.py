"""Evaluation metrics of the paper: image AUROC/AP, pixel AUROC/AUPRO (``wmoe.metrics``)."""
