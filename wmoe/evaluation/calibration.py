"""Where to draw the line: thresholds from scores, with the statistics stated. numpy only (no torch), so
``wmoe calibrate`` on an exported model runs in the runtime-only install; the torch path only produces the scores.

**The false-reject-rate threshold (good images only).** Given the image scores ``s_(1) <= ... <= s_(n)`` of ``n``
good images and a target false-reject rate ``a``, take the order statistic

    k = ceil((n + 1) * (1 - a)),        threshold t = s_(k)   (a part is anomalous when its score > s_(k))

This is the finite-sample (conformal, split-conformal) quantile: for a new good part whose score is exchangeable
with the calibration scores, ``P(score > s_(k)) <= (n + 1 - k) / (n + 1) <= a`` — a guarantee for any score
distribution, with no fitted model. The ``(n + 1)`` instead of ``n`` is what makes it hold for finite ``n``. It needs
``k <= n``, i.e. ``n >= 1/a - 1`` good images (99 for 1 %, 19 for 5 %, 9 for 10 %); fewer are refused with that
number. The contract's rule is ``anomalous when score >= threshold``, so the stored threshold is the next float32
above ``s_(k)`` (scores are float32): a score equal to ``s_(k)`` is normal, as the guarantee needs.

The false-reject rate a given calibration set actually yields on the line is random (over the draw of the ``n``
good images): it follows ``Beta(n + 1 - k, k)``. Its mean is ``(n + 1 - k) / (n + 1)`` and :func:`frr_upper_bound`
gives the value it stays below with probability ``confidence`` (0.9 by default): more good images tighten it.

**The pixel threshold** is the same rule applied to each good image's maximum map value at ``pixel_rate``: at most
that fraction of good parts shows any defect pixel. **With labelled images** also: the F1-max threshold (the
max of 2PR/(P+R) over all thresholds, as :mod:`wmoe.evaluation.metrics` computes F1-max) and the highest
threshold reaching a target defect recall (the ``ceil(recall * n_defective)``-th highest defect score), each with its
confusion counts on the calibration images (in-sample figures: an evaluation on other images says what the line will
see).

Per class: when the images carry more than one class name, each class gets its own threshold (chosen at run time
by a class name, :meth:`wmoe.contract.Decision.threshold_for`), and the pooled threshold serves images of no class.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..contract import (CALIBRATION_METHODS, METHOD_DEFECT_RECALL, METHOD_F1_MAX, METHOD_FALSE_REJECT,
                        CalibrationRecord, Decision, above_threshold)
from ..errors import WMoEError

#: The rule of :func:`false_reject_threshold`, recorded with every decision it makes.
QUANTILE_RULE = ("k = ceil((n+1)(1-rate)); anomalous when score > s_(k), the k-th smallest of n good scores "
                 "(finite-sample conformal quantile: P(false reject) <= (n+1-k)/(n+1) <= rate; needs n >= 1/rate - 1)")
PIXEL_RULE = "the same rule on each good image's maximum map value (fraction of good parts showing a defect pixel)"


class CalibrationError(WMoEError, ValueError):
    """The images cannot give the requested threshold (too few good images, no defects, ...); says what is needed."""


@dataclass
class CalibrationConfig:
    """What ``wmoe calibrate`` computes.

    method: which threshold becomes the decision: ``false-reject-rate`` (good images suffice), ``f1-max`` or
        ``defect-recall`` (labelled images).
    false_reject_rate: target fraction of good parts called anomalous (the ``false-reject-rate`` method).
    defect_recall: target fraction of defective parts caught (the ``defect-recall`` method; reported when labels).
    pixel_rate: target fraction of good parts with any defect pixel (None: ``false_reject_rate``).
    pixel: compute the pixel threshold (needs maps).
    per_class: one threshold per class when the images have several classes.
    confidence: of the reported upper bound on the false-reject rate the line will see.
    """

    method: str = METHOD_FALSE_REJECT
    false_reject_rate: float = 0.01
    defect_recall: float = 0.95
    pixel_rate: Optional[float] = None
    pixel: bool = True
    per_class: bool = True
    confidence: float = 0.9

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS or self.method == "given":
            raise CalibrationError(f"calibration method must be one of {METHOD_FALSE_REJECT}, {METHOD_F1_MAX}, "
                                   f"{METHOD_DEFECT_RECALL}; got {self.method!r}")
        for name in ("false_reject_rate", "defect_recall", "pixel_rate", "confidence"):
            v = getattr(self, name)
            if v is not None and not 0.0 < float(v) < 1.0:
                raise CalibrationError(f"{name.replace('_', ' ')} must be strictly between 0 and 1, got {v}")

    @property
    def resolved_pixel_rate(self) -> float:
        return self.false_reject_rate if self.pixel_rate is None else self.pixel_rate


@dataclass
class ScoredImages:
    """What a model said about the calibration images (from the torch path or the runtime path alike)."""

    scores: np.ndarray                      # (N,) image scores
    map_max: Optional[np.ndarray] = None    # (N,) maximum of each anomaly map (for the pixel threshold)
    labels: Optional[np.ndarray] = None     # (N,) 1 = defective, 0 = good; None: all good
    classes: Optional[List[str]] = None     # (N,) product class of each image; None: one class
    paths: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        n = len(self.scores)
        if self.labels is None:
            self.labels = np.zeros(n, np.int64)
        self.labels = np.asarray(self.labels).astype(np.int64).reshape(-1)
        if self.map_max is not None:
            self.map_max = np.asarray(self.map_max, np.float64).reshape(-1)
        for name, v in (("labels", self.labels), ("map_max", self.map_max), ("classes", self.classes)):
            if v is not None and len(v) != n:
                raise CalibrationError(f"{len(v)} {name} for {n} scores")
        bad = ~np.isfinite(self.scores) | (~np.isfinite(self.map_max) if self.map_max is not None else False)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            where = self.paths[i] if i < len(self.paths) else f"image {i}"
            raise CalibrationError(f"the model gave {int(bad.sum())} non-finite score(s) or map(s), first {where}: "
                                   f"no threshold can be calibrated on a broken model or image")

    def subset(self, mask: np.ndarray) -> "ScoredImages":
        return ScoredImages(self.scores[mask], None if self.map_max is None else self.map_max[mask],
                            self.labels[mask], None if self.classes is None else
                            [c for c, m in zip(self.classes, mask) if m],
                            [p for p, m in zip(self.paths, mask) if m] if self.paths else [])

    @property
    def class_names(self) -> List[str]:
        return sorted(set(self.classes)) if self.classes else []


# ------------------------------------------------------------------------------------------- the statistics
def conformal_rank(n: int, rate: float) -> int:
    """``k = ceil((n + 1)(1 - rate))`` (rounded to 9 decimals first: ``20 * 0.95`` is 19, not 19.000000000000004)."""
    return int(math.ceil(round((n + 1) * (1.0 - rate), 9)))


def min_good_images(rate: float) -> int:
    """The fewest good images for which the finite-sample quantile at ``rate`` exists: ``n >= 1/rate - 1``."""
    n = max(1, int(math.floor(1.0 / rate - 1.0)) - 1)
    while conformal_rank(n, rate) > n:
        n += 1
    return n


def frr_upper_bound(n: int, k: int, confidence: float = 0.9) -> float:
    """The false-reject rate the line sees stays below this with probability ``confidence`` over the draw of the
    ``n`` calibration images: the ``confidence`` quantile of ``Beta(n + 1 - k, k)``, found by bisection on
    ``P(Beta(a, b) <= x) = P(Binomial(n, x) >= a)`` (standard library only)."""
    a = n + 1 - k

    def cdf(x: float) -> float:  # P(Binomial(n, x) >= a), terms in log space (no overflow for large n)
        if x <= 0.0:
            return 0.0
        if x >= 1.0:
            return 1.0
        lx, l1x = math.log(x), math.log1p(-x)
        return 1.0 - sum(math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
                                  + j * lx + (n - j) * l1x) for j in range(a))

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if cdf(mid) < confidence:
            lo = mid
        else:
            hi = mid
    return hi


def _float32_above(v: float) -> np.float32:
    """The smallest float32 above ``v``. Model scores are float32, and numpy 2 compares a float32 array with a
    Python float in float32: a float64 threshold just above ``s_(k)`` would round down onto it there."""
    t = np.float32(v)
    return t if float(t) > v else np.nextafter(t, np.float32(np.inf))


def false_reject_threshold(good_scores: np.ndarray, rate: float, what: str = "good images",
                           confidence: float = 0.9) -> Tuple[float, Dict[str, Any]]:
    """The threshold of the module's rule and its figures (n, k, the expected false-reject rate and its bound).
    Too few images raise :class:`CalibrationError` naming how many the rate needs."""
    s = np.sort(np.asarray(good_scores, np.float64).reshape(-1))
    n = len(s)
    need = min_good_images(rate)
    if n < need:
        raise CalibrationError(f"{what}: {n} good image(s); a false-reject rate of {rate:g} needs at least {need} "
                               f"(n >= 1/rate - 1): add good images or ask for a higher rate")
    k = conformal_rank(n, rate)
    thr = float(_float32_above(s[k - 1]))
    return thr, {"n": n, "k": k, "score_k": float(s[k - 1]), "expected_rate": (n + 1 - k) / (n + 1),
                 "rate_upper_bound": frr_upper_bound(n, k, confidence), "confidence": confidence}


def confusion(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Dict[str, Any]:
    """Counts at ``threshold`` (anomalous when ``score >= threshold``) and the rates a quality engineer reads."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pred = above_threshold(s, threshold)
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "false_reject_rate": fp / (fp + tn) if fp + tn else None,
            "defect_recall": tp / (tp + fn) if tp + fn else None,
            "precision": tp / (tp + fp) if tp + fp else None}


def _need_labels(scores: np.ndarray, labels: np.ndarray, what: str, method: str) -> None:
    y = np.asarray(labels).astype(bool)
    if not y.any() or y.all():
        raise CalibrationError(f"{what}: {method} needs good and defective images ({int(y.sum())} defective of "
                               f"{len(y)}); use the {METHOD_FALSE_REJECT} method on good images")


def binary_curve(labels: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct threshold, scores descending (one sort, no loops): the
    counts behind ROC, PR, F1-max (here and in :mod:`wmoe.evaluation.metrics`)."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    y = labels[order].astype(np.float64)
    distinct = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tie group
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    return tps, fps, s[distinct]


def f1_max_threshold(scores: np.ndarray, labels: np.ndarray, what: str = "images") -> Tuple[float, Dict[str, Any]]:
    """The threshold maximizing F1 = 2PR/(P+R) over all thresholds at the scores (ties: the higher threshold),
    the same point as :func:`wmoe.evaluation.metrics.image_metrics`' F1-max."""
    _need_labels(scores, labels, what, METHOD_F1_MAX)
    tps, fps, th = binary_curve(np.asarray(labels).astype(bool), np.asarray(scores, np.float64))
    f1 = 2 * tps / (tps + fps + tps[-1])  # = 2PR/(P+R)
    i = int(np.argmax(f1))
    return float(th[i]), {"f1": float(f1[i])}


def recall_threshold(scores: np.ndarray, labels: np.ndarray, recall: float,
                     what: str = "images") -> Tuple[float, Dict[str, Any]]:
    """The highest threshold that catches at least ``recall`` of the defective images: the
    ``ceil(recall * n_defective)``-th highest defect score."""
    _need_labels(scores, labels, what, METHOD_DEFECT_RECALL)
    d = np.sort(np.asarray(scores, np.float64)[np.asarray(labels).astype(bool)])[::-1]
    m = max(1, int(math.ceil(round(recall * len(d), 9))))
    return float(d[m - 1]), {"n_defective": len(d), "m": m}


# ------------------------------------------------------------------------------------------ the decision
def _points(sc: ScoredImages, cfg: CalibrationConfig, what: str, strict: str) -> Dict[str, Dict[str, Any]]:
    """Every operating point computable on ``sc``; the one named ``strict`` must be, the others are skipped."""
    good = sc.scores[sc.labels == 0]
    out: Dict[str, Dict[str, Any]] = {}
    makers = {
        METHOD_FALSE_REJECT: lambda: false_reject_threshold(good, cfg.false_reject_rate, f"{what}",
                                                            cfg.confidence) + (cfg.false_reject_rate,),
        METHOD_F1_MAX: lambda: f1_max_threshold(sc.scores, sc.labels, what) + (None,),
        METHOD_DEFECT_RECALL: lambda: recall_threshold(sc.scores, sc.labels, cfg.defect_recall, what)
        + (cfg.defect_recall,),
    }
    for method, make in makers.items():
        try:
            thr, info, target = make()
        except CalibrationError:
            if method == strict:
                raise
            continue
        out[method] = {"threshold": thr, "target": target, **info, "confusion": confusion(sc.scores, sc.labels, thr)}
    return out


def _pixel(sc: ScoredImages, cfg: CalibrationConfig, what: str) -> Optional[Tuple[float, Dict[str, Any]]]:
    if not cfg.pixel or sc.map_max is None:
        return None
    return false_reject_threshold(sc.map_max[sc.labels == 0], cfg.resolved_pixel_rate, f"{what} (pixel threshold)",
                                  cfg.confidence)


def decide(sc: ScoredImages, cfg: CalibrationConfig = CalibrationConfig(), **record: Any) -> Decision:
    """The :class:`Decision` for ``sc`` under ``cfg``, with how it was calibrated in its record. ``record``: more
    :class:`CalibrationRecord` fields (``model``, ``model_sha256``, ``checkpoint_sha256``, ``data``, ...)."""
    if len(sc.scores) == 0:
        raise CalibrationError("no images to calibrate on")
    points = _points(sc, cfg, "all images", cfg.method)
    pix = _pixel(sc, cfg, "all images")
    per_class: Dict[str, Dict[str, Any]] = {}
    class_thr: Dict[str, float] = {}
    class_pix: Dict[str, float] = {}
    names = sc.class_names
    if cfg.per_class and len(names) > 1:
        for c in names:
            sub = sc.subset(np.array([x == c for x in sc.classes]))
            what = f"class {c!r}"
            cp = _points(sub, cfg, what, cfg.method)
            class_thr[c] = cp[cfg.method]["threshold"]
            entry: Dict[str, Any] = {"n_good": int((sub.labels == 0).sum()), "n_defective": int(sub.labels.sum()),
                                     "threshold": class_thr[c], "operating_points": cp}
            cpix = _pixel(sub, cfg, what)
            if cpix is not None:
                class_pix[c] = entry["pixel_threshold"] = cpix[0]
            per_class[c] = entry
    import datetime

    from .. import __version__
    rec = CalibrationRecord(
        method=cfg.method,
        target=cfg.false_reject_rate if cfg.method == METHOD_FALSE_REJECT else
        (cfg.defect_recall if cfg.method == METHOD_DEFECT_RECALL else None),
        quantile_rule=QUANTILE_RULE if cfg.method == METHOD_FALSE_REJECT else
        ("max of 2PR/(P+R) over thresholds at the scores" if cfg.method == METHOD_F1_MAX else
         "the ceil(recall * n_defective)-th highest defect score"),
        n_good=int((sc.labels == 0).sum()), n_defective=int(sc.labels.sum()),
        pixel_method=(f"{METHOD_FALSE_REJECT} of the map maximum ({PIXEL_RULE})" if pix else ""),
        pixel_target=cfg.resolved_pixel_rate if pix else None,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        tool=f"wmoe {__version__}", per_class=per_class, operating_points=points)
    for k, v in record.items():
        setattr(rec, k, v)
    if pix is not None:
        rec.extra["pixel"] = pix[1]
    return Decision(threshold=points[cfg.method]["threshold"], pixel_threshold=pix[0] if pix else None,
                    calibration=rec.to_dict(), class_thresholds=class_thr, class_pixel_thresholds=class_pix)


def recalibration_config(decision: Decision) -> CalibrationConfig:
    """The :class:`CalibrationConfig` that reproduces how ``decision`` was calibrated (method, target, pixel rate,
    per class), to recalibrate another model of the same network (a quantized one) the same way. A decision
    whose method was not recorded (typed by hand, or written before it was recorded) gets the defaults."""
    rec = decision.record
    if rec.method not in (METHOD_FALSE_REJECT, METHOD_F1_MAX, METHOD_DEFECT_RECALL):
        return CalibrationConfig()
    base = CalibrationConfig()
    return CalibrationConfig(
        method=rec.method,
        false_reject_rate=rec.target if rec.method == METHOD_FALSE_REJECT and rec.target else base.false_reject_rate,
        defect_recall=rec.target if rec.method == METHOD_DEFECT_RECALL and rec.target else base.defect_recall,
        pixel_rate=rec.pixel_target, pixel=decision.pixel_threshold is not None or not rec.method,
        per_class=bool(decision.class_thresholds))


def _fmt(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def summary_lines(decision: Decision) -> List[str]:
    """The decision in words (what ``wmoe calibrate`` prints): thresholds, the rule, and every operating point with
    its confusion counts on the calibration images."""
    rec = decision.record
    lines = [f"method {rec.method or 'unrecorded'}"
             + (f", target {rec.target:g}" if rec.target is not None else "")
             + f", {rec.n_good} good / {rec.n_defective} defective images"]
    if rec.method == METHOD_FALSE_REJECT:
        lines.append(f"rule: {rec.quantile_rule}")

    def describe(scope: str, thr: Optional[float], pix: Optional[float], points: Dict[str, Dict[str, Any]]) -> None:
        lines.append(f"{scope}: image threshold {thr:.6g}" + (f", pixel threshold {pix:.6g}" if pix is not None
                                                                 else ""))
        for m, p in points.items():
            c = p["confusion"]
            extra = ""
            if m == METHOD_FALSE_REJECT:
                extra = (f"; k={p['k']} of n={p['n']}, expected FRR {_fmt(p['expected_rate'])}, below "
                         f"{_fmt(p['rate_upper_bound'])} with {100 * p['confidence']:.0f}% confidence")
            lines.append(f"  {m:<17} {p['threshold']:.6g}: TP {c['tp']} FP {c['fp']} TN {c['tn']} FN {c['fn']} "
                         f"(FRR {_fmt(c['false_reject_rate'])}, recall {_fmt(c['defect_recall'])}){extra}")

    describe("all images", decision.threshold, decision.pixel_threshold, rec.operating_points)
    for c, e in rec.per_class.items():
        describe(f"class {c}", e["threshold"], e.get("pixel_threshold"), e["operating_points"])
    return lines


__all__ = ["CalibrationConfig", "CalibrationError", "ScoredImages", "QUANTILE_RULE", "conformal_rank",
           "min_good_images", "frr_upper_bound", "false_reject_threshold", "confusion", "f1_max_threshold",
           "recall_threshold", "binary_curve", "decide", "recalibration_config", "summary_lines"]
