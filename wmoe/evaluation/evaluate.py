"""Zero-shot evaluation: per-class and mean image AUROC/F1-max/AP and pixel AUROC/AP/PRO (σ=4 smoothed maps).

Classes are evaluated one at a time so that only one class's maps are in memory (float16, at the model's input
size). The image score is the model's ``ŝ = s_txt + max(M)`` (Sec. 3.5) on the unsmoothed map; the pixel metrics use
the maps smoothed with a Gaussian of σ = 4, as the peers evaluate.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..atomic import atomic_write_text, ensure_output_dir
from ..model.checkpoint import load_model
from ..contract import (METHOD_F1_MAX, VERDICT_ANOMALOUS, VERDICT_NORMAL, VERDICT_UNDECIDED, CalibrationRecord,
                        ContractError, Decision, decision_for_checkpoint, sha256_file, write_decision)
from ..data import AnomalyDataset, DataError, SkippedFiles, collate, read_meta
from ..errors import NonFiniteError
from ..model.expert_health import ExpertUsage, moe_routing, usage_line, usage_markdown
from .metrics import MetricsTable, evaluate_class, image_metrics, smooth_maps
from ..model.wmoe_clip import WMoECLIP


@torch.no_grad()
def _infer_class(model: WMoECLIP, ds: AnomalyDataset, batch_size: int, device: str, skipped: SkippedFiles,
                 bar, usage: Optional[ExpertUsage] = None, paths: Optional[List[str]] = None,
                 undecided: Optional[List[Dict[str, object]]] = None
                 ) -> "tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]":
    """One class through the runtime (:class:`wmoe.torch_backend.TorchBackend`): labels, scores, maps (float16),
    masks of the images with finite outputs. An image with a NaN/inf output is a fault, as everywhere: undecided,
    appended to ``undecided`` (path, label, fault) and left out of the metrics, never an exception."""
    from ..runtime import Runtime
    from ..torch_backend import TorchBackend

    def observe(out) -> None:
        if usage is not None and out.moe_context is not None:
            usage.update(moe_routing(model.samoe, out.moe_context))

    rt = Runtime(TorchBackend(model, device=device, on_output=observe))
    labels: List[np.ndarray] = []
    scores: List[np.ndarray] = []
    maps: List[np.ndarray] = []
    masks: List[np.ndarray] = []
    paths = [] if paths is None else paths
    undecided = [] if undecided is None else undecided
    for batch, bad in DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate):
        skipped.add(bad)
        n = len(bad) + (0 if batch is None else len(batch["label"]))
        if batch is not None:
            res = rt.score_preprocessed(batch["image"].to(device))
            ok = np.array([not f for f in res.faults])
            y = batch["label"].numpy()
            undecided += [{"path": str(p), "label": int(y[i]), "fault": f}
                          for i, (p, f) in enumerate(zip(batch["img_path"], res.faults)) if f]
            labels.append(y[ok])
            paths.extend(str(p) for p, keep in zip(batch["img_path"], ok) if keep)
            scores.append(res.scores[ok])
            maps.append(res.maps[ok].astype(np.float16))
            masks.append(batch["mask"][:, 0].numpy()[ok] > 0.5)
        if bar is not None:
            bar.update(n)
    if not labels:
        return (np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 1, 1), np.float16),
                np.zeros((0, 1, 1), bool))
    return np.concatenate(labels), np.concatenate(scores), np.concatenate(maps), np.concatenate(masks)


def evaluate(model_or_ckpt: Union[WMoECLIP, str, Path], data_root: Union[str, Path], meta=None,
             classes: Optional[Sequence[str]] = None, batch_size: int = 8, out_dir: Optional[Union[str, Path]] = None,
             pro: bool = True, sigma: float = 4.0, pretrained: Optional[str] = None, device: Optional[str] = None,
             store_threshold: bool = False, progress: bool = True, reference=None,
             fusion_weight: Optional[float] = None) -> MetricsTable:
    """Evaluate on the test split of ``data_root``; write metrics.md/.csv/.json, the per-image ``scores.csv``
    (path, class, label, score, verdict at the stored decision) and skipped.json to ``out_dir``.

    Evaluation reports; it does not decide. The stored decision (``<checkpoint>.threshold.json``, set by
    ``wmoe calibrate``) is read, and the confusion counts at it are reported (``table.extra["decision"]``), but
    it is replaced only when asked: with ``store_threshold`` (``wmoe eval --write-threshold``) the F1-max threshold
    over all evaluated images is written there, recorded as method ``f1-max`` with its confusion counts, and the
    change is printed. The checkpoint itself is never rewritten (its SHA-256, recorded in exports, stays valid).

    ``reference`` (a folder written by ``wmoe fit-normal`` or a :class:`wmoe.reference.NormalReference`) evaluates the
    normal-reference mode: each class is scored with its own reference (:class:`wmoe.reference.ReferenceModel`,
    fusion weight ``fusion_weight`` or the reference's). Its scores are in other units than zero-shot ones, so the
    checkpoint's decision is neither applied nor replaced then (calibrate the reference-mode ONNX instead).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if out_dir is not None:
        ensure_output_dir(out_dir)  # before the work, not after the whole evaluation
    ckpt_path = None
    if isinstance(model_or_ckpt, WMoECLIP):
        model = model_or_ckpt
    else:
        ckpt_path = Path(model_or_ckpt)
        model = load_model(ckpt_path, pretrained=pretrained)
    model = model.to(device).eval()
    root = Path(data_root)
    meta_doc = read_meta(Path(meta) if meta else root / "meta.json") if not isinstance(meta, dict) else meta
    if "test" not in meta_doc:
        raise DataError(f"{root}: meta has no 'test' split")
    chosen = list(classes) if classes else sorted(meta_doc["test"])
    models = {c: model for c in chosen}
    if reference is not None:
        from ..reference import NormalReference, ReferenceModel
        ref = reference if isinstance(reference, NormalReference) else NormalReference.load(reference, ckpt_path)
        models = {c: ReferenceModel(model, ref.get(c), ref.config, fusion_weight).eval() for c in chosen}
        store_threshold = False
    datasets = [AnomalyDataset(root, meta_doc, split="test", classes=[c], image_size=model.image_size)
                for c in chosen]
    total = sum(len(d) for d in datasets)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="eval", unit="img", dynamic_ncols=True)
    table = MetricsTable()
    skipped = SkippedFiles()
    all_labels, all_scores, all_paths, all_classes = [], [], [], []
    undecided: List[Dict[str, object]] = []  # images with a NaN/inf output: counted, reported, not in the metrics
    # SA-MoE utilization per class and over all classes (the report's "expert utilization" section)
    usages = {c: ExpertUsage(model.samoe.w1.shape[0], model.samoe.top_k) for c in chosen} if model.samoe else {}
    t0 = time.time()

    def class_metrics(labels, scores, maps, masks):
        smoothed = smooth_maps(maps.astype(np.float32), sigma=sigma)
        return evaluate_class(labels, scores, masks, smoothed, pro=pro)

    # The metrics of a class (numpy sorts, which release the GIL) run in a worker thread while the model infers
    # the next class; at most one class waits, so at most two classes' maps are in memory.
    from concurrent.futures import ThreadPoolExecutor
    pending = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for cls, ds in zip(chosen, datasets):
            if bar is not None:
                bar.set_postfix_str(cls)
            cls_paths: List[str] = []
            cls_undecided: List[Dict[str, object]] = []
            labels, scores, maps, masks = _infer_class(models[cls], ds, batch_size, device, skipped, bar,
                                                       usages.get(cls), cls_paths, cls_undecided)
            undecided += [{**u, "class": cls} for u in cls_undecided]
            all_labels.append(labels)
            all_scores.append(scores)
            all_paths += cls_paths
            all_classes += [cls] * len(cls_paths)
            if pending and pending[-1][1] is not None:
                pending[-1][1].result()  # back-pressure: bound the memory
            if labels.size == 0:
                pending.append((cls, None, 0, 0))
                continue
            pending.append((cls, pool.submit(class_metrics, labels, scores, maps, masks), int(labels.size),
                            int(labels.sum())))
            del maps, masks
        for cls, fut, n, n_anom in pending:
            table.add_row(cls, fut.result() if fut is not None else {}, n_images=n, n_anomalous=n_anom)
    if bar is not None:
        bar.close()
    if undecided and not sum(a.size for a in all_labels):
        raise NonFiniteError(f"the model produced NaN/inf scores or maps for {len(undecided)} image(s) (all "
                             f"undecided), first {undecided[0]['path']}: no metric can be computed (broken or "
                             f"diverged weights?)")
    if undecided:
        warnings.warn(f"{len(undecided)} image(s) undecided (NaN/inf model output), left out of the metrics, first "
                      f"{undecided[0]['path']}: {undecided[0]['fault']}", RuntimeWarning, stacklevel=2)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        overall = image_metrics(labels, scores)
    threshold = overall["threshold"]
    table.extra.update({
        "data_root": str(root), "classes": chosen, "sigma": sigma, "n_images": int(labels.size),
        "skipped_files": len(skipped), "threshold": None if math.isnan(threshold) else threshold,
        "seconds": round(time.time() - t0, 2), "checkpoint": str(ckpt_path) if ckpt_path else None,
        "image_size": model.image_size, "undecided": len(undecided),
    })
    if reference is not None:
        w = next(iter(models.values())).weight if models else None
        table.extra["reference"] = {"path": None if isinstance(reference, NormalReference) else str(reference),
                                    "fusion_weight": w, "per_class": {c: ref.get(c).summary() for c in chosen}}
    appendix = ""
    if usages:
        total = ExpertUsage(model.samoe.w1.shape[0], model.samoe.top_k)
        for u in usages.values():
            total.merge(u)
        per_class = {c: u.summary() for c, u in usages.items() if u.n_images}
        table.extra["expert_usage"] = {"all": total.summary(matrix=True), "per_class": per_class}
        appendix = "\n" + usage_markdown(table.extra["expert_usage"]["all"], per_class)
        if progress:
            print(usage_line(table.extra["expert_usage"]["all"]))
    if len(skipped):
        print(skipped.summary())
    stored = None
    if ckpt_path is not None and reference is None:  # a zero-shot decision means nothing on fused scores
        try:
            stored = decision_for_checkpoint(ckpt_path)
        except ContractError as e:  # a stale decision: reported, not used (and replaced only when asked)
            warnings.warn(str(e), RuntimeWarning, stacklevel=2)
    verdicts = stored.verdicts(scores, all_classes) if stored is not None else [""] * len(scores)
    if stored is not None and (stored.threshold is not None or stored.class_thresholds):
        table.extra["decision"] = {
            "threshold": stored.threshold, "class_thresholds": stored.class_thresholds,
            "method": stored.record.method or "unrecorded",
            "confusion": confusion_at_verdicts(labels, verdicts)}
        table.extra["decision"]["confusion"]["undecided"] += len(undecided)
    if out_dir is not None:
        out = Path(out_dir)
        table.write(out, appendix=appendix)
        skipped.write(out / "skipped.json")
        write_eval_scores(out / "scores.csv", all_paths + [str(u["path"]) for u in undecided],
                          all_classes + [str(u["class"]) for u in undecided],
                          np.concatenate([labels, [u["label"] for u in undecided]]).astype(np.int64),
                          np.concatenate([scores, np.full(len(undecided), np.nan)]),
                          list(verdicts) + [VERDICT_UNDECIDED] * len(undecided))
    if ckpt_path is not None and store_threshold and not math.isnan(threshold):
        from .calibration import confusion
        rec = CalibrationRecord(
            method=METHOD_F1_MAX, quantile_rule="max of 2PR/(P+R) over thresholds at the scores",
            n_good=int((labels == 0).sum()), n_defective=int(labels.sum()), data=str(root), model=str(ckpt_path),
            checkpoint_sha256=sha256_file(ckpt_path), tool="wmoe eval --write-threshold",
            operating_points={METHOD_F1_MAX: {"threshold": threshold, "f1": overall["f1_max"],
                                              "confusion": confusion(scores, labels, threshold)}},
            extra={"classes": chosen, "image_auroc": overall["auroc"], "image_size": model.image_size})
        new = Decision(threshold=threshold, pixel_threshold=stored.pixel_threshold if stored else None,
                       calibration=rec.to_dict())
        path = write_decision(ckpt_path, new)
        was = f"was {stored.threshold:.6g} ({stored.record.method or 'unrecorded'})" if stored and \
            stored.threshold is not None else "no decision before"
        if stored is not None and stored.class_thresholds:  # one threshold for all now: say what goes
            was += f"; the per-class thresholds of {', '.join(sorted(stored.class_thresholds))} are removed"
        print(f"wrote the F1-max threshold {threshold:.6g} of this set to {path} ({was})")
    elif ckpt_path is not None and reference is None and not math.isnan(threshold) and progress:
        print(f"F1-max threshold on this set: {threshold:.6g}; the stored decision is unchanged "
              f"({'none' if stored is None or stored.threshold is None else f'{stored.threshold:.6g}'}; "
              f"wmoe calibrate sets it, wmoe eval --write-threshold replaces it with this one)")
    return table


def confusion_at_verdicts(labels: np.ndarray, verdicts: Sequence[str]) -> Dict[str, int]:
    """TP/FP/TN/FN of ``verdicts`` (per image, possibly per-class thresholds) against ``labels``; undecided
    images counted apart."""
    y = np.asarray(labels).astype(bool)
    v = np.asarray(verdicts)
    anom, norm = v == VERDICT_ANOMALOUS, v == VERDICT_NORMAL
    return {"tp": int((anom & y).sum()), "fp": int((anom & ~y).sum()), "tn": int((norm & ~y).sum()),
            "fn": int((norm & y).sum()), "undecided": int((~anom & ~norm).sum())}


def write_eval_scores(path: Path, paths: Sequence[str], classes: Sequence[str], labels: np.ndarray,
                      scores: np.ndarray, verdicts: Sequence[str]) -> Path:
    """``scores.csv`` of an evaluation: one row per image (path, class, label, score, verdict at the stored
    decision; empty without one)."""
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "class", "label", "score", "verdict"])
    for p, c, y, s, v in zip(paths, classes, labels, scores, verdicts):
        w.writerow([p, c, int(y), f"{float(s):.6f}", v])
    return atomic_write_text(path, buf.getvalue())
