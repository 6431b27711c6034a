"""Image-level metrics: AUROC, average precision and F1-max (the paper's Table 1 image columns)."""
from __future__ import annotations

import warnings
from typing import Dict

import numpy as np

from ..calibration import binary_curve as _binary_curve  # noqa: F401 - numpy only, shared with calibration


def auroc_ap_from_counts(tps: np.ndarray, fps: np.ndarray) -> "tuple[float, float]":
    """AUROC (trapezoid over the ROC, ties as diagonal steps) and AP (sklearn's step sum, no interpolation)."""
    p, n = tps[-1], fps[-1]
    tpr = np.r_[0.0, tps / p]
    fpr = np.r_[0.0, fps / n]
    auroc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    precision = tps / np.maximum(tps + fps, 1)
    recall = tps / p
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return auroc, ap


def image_metrics(labels, scores) -> Dict[str, float]:
    """``auroc``, ``ap``, ``f1_max`` and ``threshold`` (the score at which F1 is maximal).

    A class whose images are all normal or all anomalous has no ranking to measure: every value is NaN and a
    warning says so (the evaluation goes on).
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    nan = float("nan")
    if y.size == 0 or y.all() or not y.any():
        kind = "no images" if y.size == 0 else ("only anomalous" if y.all() else "only normal")
        warnings.warn(f"image metrics undefined: {kind} images in this class", RuntimeWarning, stacklevel=2)
        return {"auroc": nan, "ap": nan, "f1_max": nan, "threshold": nan}
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    tps, fps, th = _binary_curve(y, s)
    auroc, ap = auroc_ap_from_counts(tps, fps)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    k = int(np.argmax(f1))
    return {"auroc": auroc, "ap": ap, "f1_max": float(f1[k]), "threshold": float(th[k])}
