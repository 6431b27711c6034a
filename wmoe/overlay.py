"""The one overlay picture (predict, camera loop, app): image | fixed-scale heatmap + colour bar, the defect
contour at the pixel threshold (+ ground-truth contour), under a banner with verdict, score and threshold.

:func:`overlay_panel` is the entry point; numpy + Pillow only (the torch-free runtime and the app use it).

No matplotlib: the 'jet' colour map is its piecewise-linear definition evaluated once into a 256-entry table.
Everything is uint8 or float32 and the panel is at most ``max_side`` pixels on its longest side, so a 12000x12000
input costs a few MB here, not GBs.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .contract import VERDICT_ANOMALOUS, VERDICT_UNDECIDED, Decision, verdict_label

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
CONTOUR = (255, 255, 255)     # the predicted defect (map >= pixel threshold)
GT_CONTOUR = (255, 0, 255)    # the ground-truth mask, when known
MAP_RANGE = (0.0, 1.0)        # anomaly maps are probabilities (mean of per-layer sigmoids): the fixed colour scale
COLOUR_BAR_WIDTH = 64


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
    m = np.asarray(Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).resize(
        (hw[1], hw[0]), Image.Resampling.NEAREST)) > 0
    return _outline(m)


def _outline(m: np.ndarray) -> np.ndarray:
    """Bool outline (2 px, inside the region) of a bool HxW mask."""
    inner = m.copy()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1), (-2, 0), (2, 0), (0, -2), (0, 2)):
        shifted = np.zeros_like(m)
        ys, yd = (slice(dy, None), slice(0, -dy)) if dy > 0 else (slice(0, dy or None), slice(-dy, None))
        xs, xd = (slice(dx, None), slice(0, -dx)) if dx > 0 else (slice(0, dx or None), slice(-dx, None))
        shifted[yd, xd] = m[ys, xs]
        inner &= shifted
    return m & ~inner


def decision_text(score: float, threshold: Optional[float], verdict: Optional[str] = None
                  ) -> Tuple[str, Tuple[int, int, int]]:
    """The verdict line and its colour, in the contract's vocabulary (:func:`wmoe.contract.verdict_label`).
    ``verdict`` (the runtime's, e.g. from a per-class threshold) wins; without one it is
    ``Decision(threshold).verdict(score)`` — the one rule. A NaN score is ``UNDECIDED``, never ``NORMAL``."""
    known = threshold is not None and bool(np.isfinite(threshold))
    if not np.isfinite(score):
        verdict = VERDICT_UNDECIDED
    elif verdict is None:
        verdict = Decision(threshold=threshold if known else None).verdict(score)
    if verdict == VERDICT_UNDECIDED and (known or not np.isfinite(score)):
        return f"{verdict_label(verdict)}  score {score}", NEUTRAL
    if not known:
        return f"score {score:.4f}  (no threshold)", NEUTRAL
    if verdict == VERDICT_ANOMALOUS:
        return f"{verdict_label(verdict)}  score {score:.4f} >= {threshold:.4f}", BAD
    return f"{verdict_label(verdict)}  score {score:.4f} < {threshold:.4f}", GOOD


def pixel_threshold_text(p: float) -> str:
    """The pixel threshold as printed: six significant digits, so a calibrated 0.999972 reads 0.999972, not 1 (the
    maps of a poorly separating model crowd just under 1, where fewer digits round every threshold to 1)."""
    return f"{p:.6g}"


def banner_lines(score: float, threshold: Optional[float], pixel_threshold: Optional[float],
                 defect: Optional[np.ndarray], label: str = "", ground_truth: bool = False,
                 verdict: Optional[str] = None) -> Tuple[str, str]:
    """The banner's two lines: verdict, score and threshold; then ``label``, the pixel threshold and the defect area
    (``defect``: the boolean defect mask at the pixel threshold), and the ground-truth colour when it is drawn."""
    second = [label] if label else []
    if pixel_threshold is not None and defect is not None:
        second.append(f"defect (white) at map >= {pixel_threshold_text(pixel_threshold)}: "
                      f"{float(defect.mean()) * 100:.1f}% of image")
    else:
        second.append("no pixel threshold: no defect contour")
    if ground_truth:
        second.append("ground truth: magenta")
    return decision_text(float(score), threshold, verdict)[0], "  |  ".join(second)


BANNER_FONT_SIZES = (15, 12)  # the banner's two lines at full size
MIN_FONT_SIZE = 7


def banner_fonts(lines: Sequence[str], width: int) -> list:
    """One font per banner line, each the largest up to its full size whose line fits ``width`` minus the margins
    (a small crop's banner kept running off the picture's right edge, cutting the threshold off)."""
    draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    fonts = []
    for line, size in zip(lines, BANNER_FONT_SIZES):
        font = _font(size)
        while size > MIN_FONT_SIZE and draw.textlength(line, font=font) > width - 12:  # 6 px margins
            size -= 1
            font = _font(size)
        fonts.append(font)
    return fonts


def _font(size: int):
    try:  # Pillow >= 10.1 with FreeType: a scalable font that ships inside Pillow (nothing downloaded)
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # older Pillow / no FreeType: the bitmap font
        return ImageFont.load_default()


def _colour_bar(height: int, vmin: float, vmax: float, pixel_threshold: Optional[float], font
                ) -> np.ndarray:
    """A vertical 'jet' bar (top: ``vmax``) with ticks at both ends, the middle and the pixel threshold."""
    bar_w, width = 14, COLOUR_BAR_WIDTH
    out = np.full((height, width, 3), 255, np.uint8)
    ramp = np.linspace(vmax, vmin, height, dtype=np.float32)[:, None]
    out[:, :bar_w] = colorize(np.repeat(ramp, bar_w, 1), vmin, vmax)
    canvas = Image.fromarray(out)
    d = ImageDraw.Draw(canvas)

    def y_of(v: float) -> int:
        return int(round((vmax - v) / (vmax - vmin) * (height - 1))) if vmax > vmin else 0

    near_px = pixel_threshold is not None and abs(pixel_threshold - (vmin + vmax) / 2) < 0.1 * (vmax - vmin)
    for v in (vmax, vmin) if near_px else (vmax, (vmin + vmax) / 2, vmin):  # no label under the threshold's
        y = y_of(v)
        d.line([(bar_w, y), (bar_w + 3, y)], fill=(0, 0, 0))
        d.text((bar_w + 5, min(max(y - 6, 0), height - 13)), f"{v:g}", fill=(0, 0, 0), font=font)
    if pixel_threshold is not None and vmin <= pixel_threshold <= vmax:
        y = y_of(pixel_threshold)
        d.line([(0, y), (bar_w + 3, y)], fill=CONTOUR, width=2)
        d.line([(0, y + 2), (bar_w + 3, y + 2)], fill=(0, 0, 0))
        d.text((bar_w + 5, min(max(y - 6, 13), height - 26)), f"px {pixel_threshold:.2f}", fill=(0, 0, 0),
               font=font)
    return np.asarray(canvas)


def overlay_panel(image: np.ndarray, amap: np.ndarray, score: float, threshold: Optional[float] = None,
                  mask: Optional[np.ndarray] = None, vmin: float = MAP_RANGE[0], vmax: float = MAP_RANGE[1],
                  max_side: int = 512, pixel_threshold: Optional[float] = None, verdict: Optional[str] = None,
                  label: str = "") -> np.ndarray:
    """The one overlay picture of ``wmoe predict``, ``wmoe-camera --out`` and the app, as RGB uint8 (H, W, 3).

    Left: the image; right: the anomaly map over it in 'jet' on a FIXED scale ``[vmin, vmax]`` (default the maps'
    range [0, 1], so a good part stays blue and frames compare), with a colour bar; the predicted defect contour
    (white) where ``amap >= pixel_threshold``, the ground-truth contour (magenta) when ``mask`` is given; above both
    a banner: verdict (red: anomalous, green: normal, grey: no threshold or undecided), score and threshold on the first
    line, then ``label`` (e.g. the class or frame), the pixel threshold and the defect area.

    ``image`` is RGB uint8 HxWx3; ``amap`` an HxW float map of any size (resized here, bilinear); ``mask`` a boolean
    or 0/1 ground-truth mask of any size; ``verdict`` the runtime's verdict string when it was decided elsewhere
    (e.g. by a per-class threshold). Both panels are at most ``max_side`` px. numpy + Pillow only (no torch).
    """
    image = np.asarray(image, dtype=np.uint8)
    hw = fit_size(image.shape[0], image.shape[1], max_side)
    img = _resize_rgb(image, hw)
    m = _resize_map(amap, hw)
    heat = heatmap_overlay(img, m, vmin=vmin, vmax=vmax)
    defect = Decision(pixel_threshold=pixel_threshold).mask(m)
    if defect is not None:
        heat[_outline(defect)] = CONTOUR
    if mask is not None:
        heat[_contour(mask, hw)] = GT_CONTOUR
    colour = decision_text(float(score), threshold, verdict)[1]
    lines = banner_lines(score, threshold, pixel_threshold, defect, label, mask is not None, verdict)
    banner_h, gap = 40, 4
    width = 2 * hw[1] + 2 * gap + COLOUR_BAR_WIDTH
    font, small = banner_fonts(lines, width)
    out = np.full((banner_h + hw[0], width, 3), 255, np.uint8)
    out[:banner_h] = colour
    out[banner_h:, :hw[1]] = img
    out[banner_h:, hw[1] + gap:2 * hw[1] + gap] = heat
    out[banner_h:, 2 * hw[1] + 2 * gap:] = _colour_bar(hw[0], vmin, vmax, pixel_threshold, small)
    canvas = Image.fromarray(out)
    d = ImageDraw.Draw(canvas)
    d.text((6, 3), lines[0], fill=(255, 255, 255), font=font)
    d.text((6, 22), lines[1], fill=(255, 255, 255), font=small)
    return np.asarray(canvas)
