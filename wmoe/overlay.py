"""Heatmap overlays: an anomaly map blended over its image as a colour map (for reports and predictions)."""
from __future__ import annotations

from typing import Optional

import numpy as np


def heatmap_overlay(image: np.ndarray, amap: np.ndarray, alpha: float = 0.5, vmin: Optional[float] = None,
                    vmax: Optional[float] = None) -> np.ndarray:
    """RGB uint8 HxWx3 image + HxW map -> RGB uint8 overlay ('jet' colour map, map scaled to [vmin, vmax])."""
    from matplotlib import colormaps

    a = np.asarray(amap, dtype=np.float32)
    lo = float(a.min()) if vmin is None else vmin
    hi = float(a.max()) if vmax is None else vmax
    norm = np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)
    color = colormaps["jet"](norm)[..., :3] * 255.0
    out = (1 - alpha) * image.astype(np.float32) + alpha * color
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
