"""What a quality engineer reads at a threshold, drawn with numpy and Pillow (no matplotlib): per class, the ROC
curve and the precision-recall curve with the operating point of the threshold marked, and the score histograms
of good and defective images with the threshold drawn as a line. One row per class, one PNG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_path
from .calibration import binary_curve
from ..contract import above_threshold

_W, _H, _M = 250, 190, 34  # panel size and margin (px)
_GOOD, _BAD, _THR, _CURVE = (46, 125, 50), (198, 40, 40), (21, 101, 192), (33, 33, 33)


def _axes(draw: ImageDraw.ImageDraw, x0: int, y0: int, title: str, xlabel: str, ylabel: str,
          xr: Tuple[float, float] = (0.0, 1.0), yr: Tuple[float, float] = (0.0, 1.0)):
    """Draw a panel's frame and labels; return a function mapping data (x, y) to pixels."""
    font = ImageFont.load_default()
    left, top, right, bottom = x0 + _M, y0 + 18, x0 + _W - 8, y0 + _H - 26
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    draw.text((left, y0 + 3), f"{title} ({ylabel})", fill=(0, 0, 0), font=font)
    draw.text((left + (right - left) // 2 - 3 * len(xlabel), bottom + 13), xlabel, fill=(60, 60, 60), font=font)
    for v, anchor in ((xr[0], left), (xr[1], right)):
        draw.text((anchor - 8, bottom + 2), f"{v:.3g}", fill=(90, 90, 90), font=font)
    for v, anchor in ((yr[0], bottom), (yr[1], top)):
        draw.text((x0 + 2, anchor - 5), f"{v:.3g}", fill=(90, 90, 90), font=font)
    sx = (right - left) / ((xr[1] - xr[0]) or 1.0)
    sy = (bottom - top) / ((yr[1] - yr[0]) or 1.0)

    def to_px(x: float, y: float) -> Tuple[float, float]:
        return left + (x - xr[0]) * sx, bottom - (y - yr[0]) * sy
    return to_px


def _mark(draw: ImageDraw.ImageDraw, p: Tuple[float, float]) -> None:
    draw.ellipse([p[0] - 4, p[1] - 4, p[0] + 4, p[1] + 4], outline=_THR, width=2)


def _row(draw: ImageDraw.ImageDraw, y0: int, name: str, labels: np.ndarray, scores: np.ndarray,
         threshold: Optional[float]) -> None:
    y, s = labels.astype(bool), scores.astype(np.float64)
    both = y.any() and (~y).any()
    pred = above_threshold(s, threshold) if threshold is not None else None
    if both:
        tps, fps, _ = binary_curve(y, s)
        tpr, fpr = np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]
        roc = _axes(draw, 0, y0, f"{name}: ROC", "false-reject rate (good)", "recall")
        draw.line([roc(a, b) for a, b in zip(fpr, tpr)], fill=_CURVE, width=2)
        prec = tps / (tps + fps)
        pr = _axes(draw, _W, y0, f"{name}: precision-recall", "recall", "prec.")
        draw.line([pr(a, b) for a, b in zip(tps / tps[-1], prec)], fill=_CURVE, width=2)
        if pred is not None:
            r, f = (pred & y).sum() / y.sum(), (pred & ~y).sum() / (~y).sum()
            _mark(draw, roc(f, r))
            if pred.any():
                _mark(draw, pr(r, (pred & y).sum() / pred.sum()))
    else:
        draw.text((_M, y0 + 60), f"{name}: ROC/PR need good and defective images", fill=(0, 0, 0))
    lo, hi = float(s.min()), float(s.max())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    hi = hi if hi > lo else lo + 1.0
    bins = np.linspace(lo, hi, 21)
    hg, _ = np.histogram(s[~y], bins)
    hb, _ = np.histogram(s[y], bins)
    top = max(1, int(max(hg.max(initial=0), hb.max(initial=0))))
    h = _axes(draw, 2 * _W, y0, f"{name}: scores (good / defective)", "image score", "count", (lo, hi), (0, top))
    half = (bins[1] - bins[0]) / 2
    for counts, color, off in ((hg, _GOOD, 0.0), (hb, _BAD, half)):  # good: left half of a bin, defective: right
        for i, c in enumerate(counts):
            if c:
                p0, p1 = h(bins[i] + off, 0), h(bins[i] + off + half, c)
                draw.rectangle([p0[0], p1[1], max(p0[0] + 1, p1[0] - 1), p0[1]], fill=color)
    if threshold is not None:
        draw.line([h(threshold, 0), h(threshold, top)], fill=_THR, width=2)


def draw_decision_plots(rows: Sequence[Tuple[str, np.ndarray, np.ndarray, Optional[float]]], path: Path) -> Path:
    """Write the panels for ``rows`` = [(name, labels, scores, threshold or None), ...] to ``path`` (PNG,
    atomically). The legend: good green, defective red, threshold / operating point blue."""
    img = Image.new("RGB", (3 * _W, _H * len(rows) + 18), "white")
    draw = ImageDraw.Draw(img)
    for i, (name, labels, scores, thr) in enumerate(rows):
        _row(draw, i * _H, name, np.asarray(labels), np.asarray(scores), thr)
    draw.text((8, _H * len(rows) + 3), "good: green   defective: red   threshold / its operating point: blue",
              fill=(0, 0, 0), font=ImageFont.load_default())
    with atomic_path(path) as tmp:
        img.save(tmp, "PNG")
    return Path(path)


def rows_from_scores_csv(path: Path, thresholds: Dict[str, Optional[float]],
                         default: Optional[float]) -> List[Tuple[str, np.ndarray, np.ndarray, Optional[float]]]:
    """Rows for :func:`draw_decision_plots` from an evaluation's ``scores.csv``, one per class, each with its
    threshold (``thresholds[class]``, else ``default``)."""
    import csv
    by: Dict[str, Tuple[List[int], List[float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            ys, ss = by.setdefault(r["class"], ([], []))
            ys.append(int(r["label"]))
            ss.append(float(r["score"]))
    return [(c, np.array(ys), np.array(ss), thresholds.get(c, default)) for c, (ys, ss) in sorted(by.items())]
