"""Overlays for predictions and reports: image | heatmap (+ ground-truth contour) with the decision, in numpy.

No matplotlib: the 'jet' colour map is its piecewise-linear definition evaluated once into a 256-entry table.
Everything is uint8 or float32 and the panel is at most ``max_side`` pixels on its longest side, so a 12000x12000
input costs a few MB here, not GBs.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

# matplotlib's 'jet' segment data (x, value) per channel (matplotlib/_cm.py, _jet_data)
_JET = {
    "r": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "g": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "b": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


def _lut() -> np.ndarray:
    x = np.linspace(0.0, 1.0, 256)
    chans = [np.interp(x, [p[0] for p in _JET[c]], [p[1] for p in _JET[c]]) for c in "rgb"]
    return (np.stack(chans, 1) * 255.0 + 0.5).astype(np.uint8)


JET_LUT: np.ndarray = _lut()  # 256x3 uint8

GOOD = (40, 170, 60)
BAD = (215, 30, 30)
NEUTRAL = (110, 110, 110)
CONTOUR = (255, 255, 255)


def colorize(amap: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None) -> np.ndarray:
    """HxW map -> HxWx3 uint8 'jet' colours, the map scaled to [vmin, vmax] (default: its own range)."""
    a = np.asarray(amap, dtype=np.float32)
    lo = float(np.nanmin(a)) if vmin is None else float(vmin)
    hi = float(np.nanmax(a)) if vmax is None else float(vmax)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    idx = np.clip(np.nan_to_num((a - lo) * scale), 0, 255).astype(np.uint8)
    return JET_LUT[idx]


def heatmap_overlay(image: np.ndarray, amap: np.ndarray, alpha: float = 0.5, vmin: Optional[float] = None,
                    vmax: Optional[float] = None) -> np.ndarray:
    """RGB uint8 HxWx3 image + HxW map (same size) -> RGB uint8 blend ('jet' colour map)."""
    color = colorize(amap, vmin, vmax).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * color
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def fit_size(h: int, w: int, max_side: int) -> Tuple[int, int]:
    """(h, w) scaled down (aspect kept) so that the longest side is at most ``max_side``."""
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def _resize_rgb(image: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == hw:
        return image
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.Resampling.BILINEAR, reducing_gap=2.0))


def _resize_map(amap: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    a = np.asarray(amap, dtype=np.float32)
    if a.shape == hw:
        return a
    return np.asarray(Image.fromarray(a, mode="F").resize((hw[1], hw[0]), Image.Resampling.BILINEAR))


def _contour(mask: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """Bool HxW outline (2 px) of a ground-truth mask resized to ``hw``."""
    m = np.asarray(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize((hw[1], hw[0]),
                                                                                   Image.Resampling.NEAREST)) > 0
    inner = m.copy()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1), (-2, 0), (2, 0), (0, -2), (0, 2)):
        shifted = np.zeros_like(m)
        ys, yd = (slice(dy, None), slice(0, -dy)) if dy > 0 else (slice(0, dy or None), slice(-dy, None))
        xs, xd = (slice(dx, None), slice(0, -dx)) if dx > 0 else (slice(0, dx or None), slice(-dx, None))
        shifted[yd, xd] = m[ys, xs]
        inner &= shifted
    return m & ~inner


def decision_text(score: float, threshold: Optional[float]) -> Tuple[str, Tuple[int, int, int]]:
    """The verdict line and its colour. NaN scores are "UNDECIDED", never "ok"."""
    if not np.isfinite(score):
        return f"UNDECIDED  score {score}", NEUTRAL
    if threshold is None or not np.isfinite(threshold):
        return f"score {score:.4f}  (no threshold)", NEUTRAL
    if score >= threshold:
        return f"ANOMALOUS  score {score:.4f} >= {threshold:.4f}", BAD
    return f"ok  score {score:.4f} < {threshold:.4f}", GOOD


def overlay_panel(image: np.ndarray, amap: np.ndarray, score: float, threshold: Optional[float] = None,
                  mask: Optional[np.ndarray] = None, vmin: float = 0.0, vmax: float = 1.0,
                  max_side: int = 512) -> np.ndarray:
    """The picture users know from anomaly-detection visualizers, as one RGB uint8 array.

    Left: the image; right: the heatmap over it, with the ground-truth contour (white) when ``mask`` is given;
    above both, a banner with the decision (red: anomalous, green: ok, grey: no threshold or undecided).
    ``image`` is RGB uint8 HxWx3, ``amap`` any size (resized here), both panels at most ``max_side`` px.
    """
    hw = fit_size(image.shape[0], image.shape[1], max_side)
    img = _resize_rgb(np.asarray(image, dtype=np.uint8), hw)
    heat = heatmap_overlay(img, _resize_map(amap, hw), vmin=vmin, vmax=vmax)
    if mask is not None:
        heat[_contour(mask, hw)] = CONTOUR
    text, colour = decision_text(float(score), threshold)
    banner_h, gap = 22, 4
    out = np.full((banner_h + hw[0], 2 * hw[1] + gap, 3), 255, np.uint8)
    out[:banner_h] = colour
    out[banner_h:, :hw[1]] = img
    out[banner_h:, hw[1] + gap:] = heat
    canvas = Image.fromarray(out)
    ImageDraw.Draw(canvas).text((6, 5), text, fill=(255, 255, 255))
    return np.asarray(canvas)
