"""The accuracy gate: a reduced-precision model against fp32 on the same images.

Figures: maximum and mean anomaly-map difference, Spearman correlation of the image scores, Pearson correlation
of the maps, and — on labeled images — the image and pixel AUROC of both and their change. The gate passes when
the image AUROC drops by at most ``max_image_auroc_drop`` (default 0.5 point) and the score Spearman is at least
``min_spearman`` (default 0.99). A gain in AUROC never fails the gate (it is reported, signed).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

Outputs = Dict[str, np.ndarray]  # "scores" (N,), "maps" (N,S,S), "text_scores" (N,)


@dataclass(frozen=True)
class GateThresholds:
    max_image_auroc_drop: float = 0.005  # 0.5 AUROC point
    min_spearman: float = 0.99

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def _corr(a: np.ndarray, b: np.ndarray, rank: bool) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size < 2:
        return float("nan")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    if rank:
        from scipy.stats import spearmanr
        return float(spearmanr(a, b)[0])
    return float(np.corrcoef(a, b)[0, 1])


def compare(ref: Outputs, got: Outputs, labels: Optional[np.ndarray] = None,
            masks: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Gate figures of ``got`` against the fp32 reference ``ref`` (same images, same order)."""
    from wmoe.metrics import image_metrics, pixel_metrics, smooth_maps
    d = np.abs(got["maps"].astype(np.float64) - ref["maps"])
    fig: Dict[str, float] = {
        "n_images": int(len(ref["scores"])),
        "max_map_diff": float(d.max()), "mean_map_diff": float(d.mean()),
        "max_score_diff": float(np.abs(got["scores"].astype(np.float64) - ref["scores"]).max()),
        "spearman_scores": _corr(ref["scores"], got["scores"], rank=True),
        "pearson_scores": _corr(ref["scores"], got["scores"], rank=False),
        "pearson_maps": _corr(ref["maps"], got["maps"], rank=False),
    }
    if labels is not None and 0 < int(np.sum(labels)) < len(labels):
        fig["image_auroc_ref"] = image_metrics(labels, ref["scores"])["auroc"]
        fig["image_auroc"] = image_metrics(labels, got["scores"])["auroc"]
        fig["image_auroc_change"] = fig["image_auroc"] - fig["image_auroc_ref"]
        if masks is not None and masks.any():
            def pixel_auroc(maps: np.ndarray) -> float:
                return pixel_metrics(masks, smooth_maps(maps), pro=False, pro_binned=False)["auroc"]
            fig["pixel_auroc_ref"] = pixel_auroc(ref["maps"])
            fig["pixel_auroc"] = pixel_auroc(got["maps"])
            fig["pixel_auroc_change"] = fig["pixel_auroc"] - fig["pixel_auroc_ref"]
    return fig


def failures(fig: Dict[str, float], thr: GateThresholds = GateThresholds()) -> List[str]:
    """Why ``fig`` fails the gate (empty list: it passes). A figure that could not be measured is not a failure
    of that criterion (see :func:`gate_passed`); NaN is."""
    out = []
    rho = fig.get("spearman_scores", float("nan"))
    if not rho >= thr.min_spearman:
        out.append(f"score Spearman {rho:.4f} < {thr.min_spearman}")
    if "image_auroc_change" in fig:
        ch = fig["image_auroc_change"]
        if not ch >= -thr.max_image_auroc_drop:
            out.append(f"image AUROC change {100 * ch:+.2f} points < -{100 * thr.max_image_auroc_drop:.2f}")
    return out


def run_session(session, x: np.ndarray, batch: int = 8,
                progress: Optional[Callable[[int], None]] = None) -> Outputs:
    """All outputs of an ONNX Runtime ``session`` on ``x`` in chunks of ``batch``, concatenated."""
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    parts: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(x), batch):
        for n, v in zip(names, session.run(None, {name: x[i:i + batch]})):
            parts[n].append(v)
        if progress:
            progress(min(i + batch, len(x)))
    return {n: np.concatenate(v) for n, v in parts.items()}


def labeled_images(root: Union[str, Path], image_size: int, max_images: Optional[int] = None,
                   seed: int = 0, frame_size: Optional[Tuple[int, int]] = None
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test split of the data set at ``root`` (a meta.json there): images (N,3,S,S) float32 normalized — or
    uint8 (N,H,W,3) frames for a model with in-graph preprocessing (``frame_size``, as in calibration) —,
    labels (N,) int and masks (N,S,S) bool, read by :class:`wmoe.data.AnomalyDataset`. ``max_images`` draws a
    seeded subset (both labels kept in proportion) to bound the cost on a CPU."""
    from torch.utils.data import DataLoader, Subset

    from wmoe.data import AnomalyDataset, collate
    ds = AnomalyDataset(root, split="test", image_size=image_size)
    if max_images and len(ds) > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=max_images, replace=False))
        ds = Subset(ds, idx.tolist())
    images, labels, masks = [], [], []
    for batch, _ in DataLoader(ds, batch_size=16, collate_fn=collate):
        if batch is not None:
            if frame_size is None:
                images.append(batch["image"].numpy())
            else:
                from .calib import as_model_input, load_image
                images.append(np.stack([as_model_input(load_image(p), image_size, frame_size)
                                        for p in batch["img_path"]]))
            labels.append(batch["label"].numpy())
            masks.append(batch["mask"][:, 0].numpy() > 0.5)
    if not images:
        raise ValueError(f"{root}: no readable test images for the accuracy gate")
    return np.concatenate(images), np.concatenate(labels), np.concatenate(masks)


def format_figures(fig: Dict[str, float]) -> str:
    """One line for logs and error messages."""
    parts = [f"{fig['n_images']} images", f"Spearman {fig['spearman_scores']:.4f}",
             f"map |diff| max {fig['max_map_diff']:.2e} mean {fig['mean_map_diff']:.2e}"]
    if "image_auroc_change" in fig:
        parts.append(f"image AUROC {fig['image_auroc_ref']:.4f} -> {fig['image_auroc']:.4f} "
                     f"({100 * fig['image_auroc_change']:+.2f} pt)")
    else:
        parts.append("image AUROC not measured (no labeled images)")
    if "pixel_auroc_change" in fig:
        parts.append(f"pixel AUROC {100 * fig['pixel_auroc_change']:+.2f} pt")
    return ", ".join(parts)
