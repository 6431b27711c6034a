"""A small PNG of SA-MoE expert utilization for the demo report, drawn with numpy and Pillow (no matplotlib).

One row per training epoch and one for the held-out evaluation; one column per expert. A cell's shade is the
expert's selection frequency relative to its maximum 1/k (white: never chosen, dark blue: chosen for every image),
its number that frequency in percent; the right-hand column is the usage evenness H / ln N (1 = all experts used
equally).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..atomic import atomic_path

_CELL_W, _CELL_H = 40, 18
_LABEL_W, _EVEN_W, _HEAD_H = 56, 64, 34
_LOW = np.array([255, 255, 255], np.float32)
_HIGH = np.array([8, 48, 107], np.float32)


def _shade(v: float) -> Tuple[int, int, int]:
    c = _LOW + (_HIGH - _LOW) * float(np.clip(v, 0.0, 1.0))
    return tuple(int(round(x)) for x in c)


def draw_usage_grid(rows: Sequence[Tuple[str, Dict[str, Any]]], path: Path, max_epochs: int = 30) -> Path:
    """Write the grid for ``rows`` = [(label, :meth:`ExpertUsage.summary`), ...] to ``path`` (PNG, atomically).

    More than ``max_epochs`` rows keep the first, the last and evenly spaced ones between.
    """
    from PIL import Image, ImageDraw, ImageFont

    rows = list(rows)
    if not rows:
        raise ValueError("draw_usage_grid needs at least one row")
    if len(rows) > max_epochs:
        keep = sorted(set(np.linspace(0, len(rows) - 1, max_epochs).round().astype(int).tolist()))
        rows = [rows[i] for i in keep]
    n = len(rows[0][1]["selection_frequency"])
    width = _LABEL_W + n * _CELL_W + _EVEN_W
    height = _HEAD_H + len(rows) * _CELL_H + 4
    img = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    k = rows[0][1].get("top_k", 1)
    d.text((4, 2), f"SA-MoE experts selected (%), top-{k} of {n}", fill=(0, 0, 0), font=font)
    for j in range(n):
        d.text((_LABEL_W + j * _CELL_W + _CELL_W // 2 - 3, _HEAD_H - 14), str(j), fill=(0, 0, 0), font=font)
    d.text((_LABEL_W + n * _CELL_W + 6, _HEAD_H - 14), "evenness", fill=(0, 0, 0), font=font)
    lines: List[int] = []
    for i, (label, s) in enumerate(rows):
        y = _HEAD_H + i * _CELL_H
        if i and not label.startswith("ep") and rows[i - 1][0].startswith("ep"):
            lines.append(y)
        d.text((4, y + 3), label, fill=(0, 0, 0), font=font)
        for j, f in enumerate(s["selection_frequency"]):
            v = f * k  # 1/k is the most one expert can get
            x = _LABEL_W + j * _CELL_W
            d.rectangle([x, y, x + _CELL_W - 2, y + _CELL_H - 2], fill=_shade(v))
            d.text((x + 6, y + 3), f"{100 * f:.0f}", fill=(255, 255, 255) if v > 0.55 else (0, 0, 0), font=font)
        d.text((_LABEL_W + n * _CELL_W + 10, y + 3), f"{s['usage_evenness']:.2f}", fill=(0, 0, 0), font=font)
    for y in lines:  # separate training epochs from the evaluation row
        d.line([0, y - 1, width, y - 1], fill=(200, 0, 0), width=1)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
