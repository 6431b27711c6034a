"""The accuracy gate: a reduced-precision model against fp32 on the same images.

Figures: maximum and mean anomaly-map difference, Spearman correlation of the image scores, Pearson correlation
of the maps, and — on labeled images — the image and pixel AUROC of both and their change; with a decision (the
threshold stored in the model), the **verdict agreement** at it: the share of images that get the same verdict
from both models, and how many flip each way (a reduced precision moves scores by up to ~0.1, which matters only
near the line). The gate passes when the image AUROC drops by at most ``max_image_auroc_drop`` (default 0.5 point),
the score Spearman is at least ``min_spearman`` (default 0.99) and the verdict agreement at least
``min_verdict_agreement`` (default 0.99). A gain in AUROC never fails the gate (it is reported, signed).

:func:`gate` is the whole check as one function of two models' outputs — what ``wmoe export quantize`` runs and
any other reduced-precision path (OpenVINO precisions, TensorRT fp16) reuses.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from wmoe.contract import OUTPUT_MAPS as MAPS, OUTPUT_SCORES as SCORES, VERDICT_UNDECIDED, Decision

Outputs = Dict[str, np.ndarray]  # "scores" (N,), "maps" (N,S,S), "text_scores" (N,)


@dataclass(frozen=True)
class GateThresholds:
    max_image_auroc_drop: float = 0.005  # 0.5 AUROC point
    min_spearman: float = 0.99
    min_verdict_agreement: float = 0.99  # share of images judged alike at the stored threshold

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


def verdict_agreement(ref_scores: np.ndarray, got_scores: np.ndarray, decision: Decision,
                      class_names: Optional[Sequence[Optional[str]]] = None) -> Dict[str, float]:
    """How the verdicts of two models agree at ``decision``'s thresholds (per class with ``class_names``):
    ``verdict_agreement`` (share of images with the same verdict), ``verdict_flips`` and each direction
    (``flips_to_anomalous``: a good verdict became a reject; ``flips_to_normal``: a reject now passes)."""
    a = decision.verdicts(ref_scores, class_names)
    b = decision.verdicts(got_scores, class_names)
    n = len(a)
    same = sum(x == y for x, y in zip(a, b))
    return {"verdict_agreement": same / n if n else float("nan"), "verdict_flips": n - same,
            "flips_to_anomalous": sum(x != y and y == "anomalous" for x, y in zip(a, b)),
            "flips_to_normal": sum(x != y and y == "normal" for x, y in zip(a, b)),
            "flips_to_undecided": sum(x != y and y == VERDICT_UNDECIDED for x, y in zip(a, b)),
            "verdict_threshold": decision.threshold}


def compare(ref: Outputs, got: Outputs, labels: Optional[np.ndarray] = None,
            masks: Optional[np.ndarray] = None, decision: Optional[Decision] = None,
            class_names: Optional[Sequence[Optional[str]]] = None) -> Dict[str, float]:
    """Gate figures of ``got`` against the fp32 reference ``ref`` (same images, same order); with a ``decision``
    that has a threshold, the verdict agreement at it (:func:`verdict_agreement`)."""
    from wmoe.evaluation.metrics import image_metrics, pixel_metrics, smooth_maps
    d = np.abs(got[MAPS].astype(np.float64) - ref[MAPS])
    fig: Dict[str, float] = {
        "n_images": int(len(ref[SCORES])),
        "max_map_diff": float(d.max()), "mean_map_diff": float(d.mean()),
        "max_score_diff": float(np.abs(got[SCORES].astype(np.float64) - ref[SCORES]).max()),
        "spearman_scores": _corr(ref[SCORES], got[SCORES], rank=True),
        "pearson_scores": _corr(ref[SCORES], got[SCORES], rank=False),
        "pearson_maps": _corr(ref[MAPS], got[MAPS], rank=False),
    }
    if labels is not None and 0 < int(np.sum(labels)) < len(labels):
        fig["image_auroc_ref"] = image_metrics(labels, ref[SCORES])["auroc"]
        fig["image_auroc"] = image_metrics(labels, got[SCORES])["auroc"]
        fig["image_auroc_change"] = fig["image_auroc"] - fig["image_auroc_ref"]
        if masks is not None and masks.any():
            def pixel_auroc(maps: np.ndarray) -> float:
                return pixel_metrics(masks, smooth_maps(maps), pro=False, pro_binned=False)["auroc"]
            fig["pixel_auroc_ref"] = pixel_auroc(ref[MAPS])
            fig["pixel_auroc"] = pixel_auroc(got[MAPS])
            fig["pixel_auroc_change"] = fig["pixel_auroc"] - fig["pixel_auroc_ref"]
    if decision is not None and (decision.threshold is not None or decision.class_thresholds):
        fig.update(verdict_agreement(ref[SCORES], got[SCORES], decision, class_names))
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
    if "verdict_agreement" in fig:
        va = fig["verdict_agreement"]
        if not va >= thr.min_verdict_agreement:
            out.append(f"verdict agreement at the stored threshold {100 * va:.1f}% < "
                       f"{100 * thr.min_verdict_agreement:g}% ({fig['verdict_flips']} of {fig['n_images']} verdicts "
                       f"flip: {fig['flips_to_anomalous']} to anomalous, {fig['flips_to_normal']} to normal; "
                       f"recalibrate the reduced-precision model: wmoe calibrate)")
    return out


def gate(ref: Outputs, got: Outputs, labels: Optional[np.ndarray] = None, masks: Optional[np.ndarray] = None,
         decision: Optional[Decision] = None, class_names: Optional[Sequence[Optional[str]]] = None,
         thresholds: GateThresholds = GateThresholds()) -> Dict[str, object]:
    """The accuracy gate in one call: ``{"passed", "failures", "thresholds", **figures}`` of ``got`` (the reduced
    precision model's outputs) against ``ref`` (fp32) on the same images. ``decision``: the one the reduced model
    will ship with (its threshold is where verdict agreement is measured)."""
    fig = compare(ref, got, labels, masks, decision, class_names)
    why = failures(fig, thresholds)
    return {"passed": not why, "failures": why, "thresholds": thresholds.to_dict(), **fig}


def run_session(session, x: np.ndarray, batch: int = 8,
                progress: Optional[Callable[[int], None]] = None) -> Outputs:
    """All outputs of an ONNX Runtime ``session`` (or any runtime backend: its ``run``) on ``x`` in chunks of
    ``batch``, concatenated."""
    if hasattr(session, "meta") and hasattr(session, "run"):
        run = session.run
    else:
        from wmoe.runtime.onnx_backend import session_runner
        run = session_runner(session)
    parts: Dict[str, List[np.ndarray]] = {}
    for i in range(0, len(x), batch):
        for n, v in run(x[i:i + batch]).items():
            parts.setdefault(n, []).append(v)
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
    if "verdict_agreement" in fig:
        parts.append(f"verdicts agree at the threshold on {100 * fig['verdict_agreement']:.1f}% "
                     f"({fig['verdict_flips']} flip)")
    else:
        parts.append("verdict agreement not measured (no threshold stored)")
    return ", ".join(parts)
