"""Pixel-level metrics: AUROC, AP and PRO (both conventions), all from one sort of a class's pixels.

PRO, two conventions named apart:

* ``pro`` — the MVTec AD reference definition: connected components of the ground truth (8-connectivity,
  ``scipy.ndimage.label`` with a 3x3 structure of ones), the per-region overlap averaged over all regions of the
  class, plotted against the false-positive rate over *every* distinct threshold, integrated with the trapezoid
  rule up to FPR 0.3 (interpolated at the limit) and divided by 0.3.
* ``pro_binned`` — AnomalyCLIP's evaluation code: 200 thresholds on a linear grid from the minimum score (step
  (max-min)/200), PRO and FPR at each, the points with FPR < 0.3 kept, FPR min-max normalized to [0, 1], AUC.

Both are computed from cumulative sums over the pixels sorted by score (the PRO curve is a cumulative sum of
per-pixel weights 1/(R * |region|)), so no per-threshold pass over the maps.
"""
from __future__ import annotations

import warnings
from typing import Dict

import numpy as np
from scipy import ndimage

from .image import auroc_ap_from_counts

_EIGHT = np.ones((3, 3), dtype=bool)


def region_weights(masks: np.ndarray) -> np.ndarray:
    """Per-pixel weight 1/(R * area of its region) inside ground-truth regions, 0 elsewhere (float64, N*H*W)."""
    w = np.zeros(masks.shape, dtype=np.float64)
    sizes_all = []
    labelled = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=_EIGHT)
        if n:
            sizes = np.bincount(lab.ravel())[1:]
            labelled.append((i, lab, sizes))
            sizes_all.append(sizes)
    r = sum(len(s) for s in sizes_all)
    for i, lab, sizes in labelled:
        per = np.r_[0.0, 1.0 / (sizes * float(r))]
        w[i] = per[lab]
    return w.ravel()


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the piecewise-linear curve (x ascending) from x[0] to ``x_max``, interpolating at the limit."""
    keep = x <= x_max
    xs, ys = x[keep], y[keep]
    if xs.size == 0:
        return 0.0
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))
    j = int(np.searchsorted(x, x_max, side="right"))
    if j < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0) if x1 > x0 else y1
        area += (x_max - x0) * (y0 + y_at) / 2.0
    return area


def pixel_metrics(masks, maps, pro: bool = True, pro_binned: bool = True,
                  max_fpr: float = 0.3, bins: int = 200) -> Dict[str, float]:
    """``auroc``, ``ap``, ``pro`` and ``pro_binned`` of one class; masks (N,H,W) bool, maps (N,H,W) float.

    Undefined values (no anomalous or no normal pixel) are NaN, with a warning.
    """
    m = np.asarray(masks).astype(bool)
    a = np.asarray(maps)
    if m.shape != a.shape:
        raise ValueError(f"masks and maps differ in shape: {m.shape} vs {a.shape}")
    if m.ndim == 2:
        m, a = m[None], a[None]
    nan = float("nan")
    out = {"auroc": nan, "ap": nan, "pro": nan, "pro_binned": nan}
    y = m.ravel()
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        warnings.warn("pixel metrics undefined: " + ("no anomalous pixels" if n_pos == 0 else "no normal pixels"),
                      RuntimeWarning, stacklevel=2)
        return out
    s = a.ravel().astype(np.float32, copy=False)
    if not np.isfinite(s).all():
        raise ValueError("anomaly maps contain NaN or infinite values")
    # descending; any sort order works since ties are grouped by value below, so the fast (SIMD) unstable sort
    order = np.argsort(s)[::-1]
    s_sorted = s[order]
    distinct = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    y_sorted = y[order]
    tps_all = np.cumsum(y_sorted, dtype=np.int64)
    tps = tps_all[distinct].astype(np.float64)
    fps = (distinct + 1) - tps
    out["auroc"], out["ap"] = auroc_ap_from_counts(tps, fps)
    if not (pro or pro_binned):
        return out
    w_sorted = region_weights(m)[order]
    pro_all = np.cumsum(w_sorted)
    n_neg = float(y.size - n_pos)
    if pro:
        fpr = np.r_[0.0, fps / n_neg]
        pro_curve = np.r_[0.0, pro_all[distinct]]
        out["pro"] = _trapezoid_to(fpr, pro_curve, max_fpr) / max_fpr
    if pro_binned:
        lo, hi = s_sorted[-1], s_sorted[0]
        if hi > lo:
            # float32 grid, as AnomalyCLIP builds it from float32 maps (a float64 grid moves pixels across it)
            ths = np.arange(lo, hi, (hi - lo) / np.float32(bins), dtype=np.float32)
            # number of pixels with score > th, from the descending order
            k = np.searchsorted(-s_sorted, -ths, side="left")
            fp_cum = np.r_[0, np.cumsum(~y_sorted, dtype=np.int64)]
            pro_cum = np.r_[0.0, pro_all]
            fprs = fp_cum[k] / n_neg
            pros = pro_cum[k]
            keep = fprs < max_fpr
            f, p = fprs[keep], pros[keep]
            if f.size >= 2 and f.max() > f.min():
                f = (f - f.min()) / (f.max() - f.min())
                # as sklearn.metrics.auc: trapezoid in the given (monotone, decreasing) order, sign flipped
                out["pro_binned"] = float(-np.sum(np.diff(f) * (p[1:] + p[:-1]) / 2.0))
    return out
