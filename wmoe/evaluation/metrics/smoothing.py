"""Gaussian smoothing of anomaly maps (σ = 4, as the paper and its peers evaluate)."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def smooth_maps(maps: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Smooth each map of an (N, H, W) or (H, W) array in float32 (scipy, truncate=4σ, 'reflect' borders).

    Each map is filtered on its own (never across the batch axis), as ``gaussian_filter(map, sigma=4)`` in the
    peers' evaluation code.
    """
    a = np.asarray(maps)
    if sigma <= 0:
        return a.astype(np.float32, copy=False)
    if a.ndim == 2:
        return gaussian_filter(a.astype(np.float32), sigma=sigma)
    if a.ndim != 3:
        raise ValueError(f"maps must be (N, H, W) or (H, W), got shape {a.shape}")
    # sigma 0 on the batch axis: one pass of scipy's separable filter, no Python loop over maps.
    return gaussian_filter(a.astype(np.float32), sigma=(0, sigma, sigma))
