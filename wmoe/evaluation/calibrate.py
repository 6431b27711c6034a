"""``wmoe calibrate``: set a model's decision from images, as its own step, and store it with the model.

The model is a checkpoint (scored with torch, :class:`wmoe.Detector`) or an exported ONNX / TensorRT engine (scored
with the torch-free runtime, :class:`wmoe.runtime.Runtime`: this path works in the runtime-only install). Either
way only the scores come from the model; the thresholds come from :mod:`wmoe.evaluation.calibration` (numpy), and the
result is written where that model keeps its decision (:func:`wmoe.contract.write_decision`): the checkpoint's
``CKPT.threshold.json``, the ONNX metadata, the engine sidecar.

Images: a data root with a ``meta.json`` (labels and class names from it: good and defective images, one class per
``cls_name``), or a folder of good images (searched recursively; ``classes_from_folders``: the first sub-folder
under it names each image's class).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .calibration import CalibrationConfig, CalibrationError, ScoredImages, decide
from ..contract import Decision, decision_carrier, is_image_name, read_onnx_contract, sha256_file, write_decision
from ..errors import printable

PathLike = Union[str, "os.PathLike[str]"]
Item = Tuple[Path, int, Optional[str]]  # image path, label (1 = defective), class name


def calibration_images(source: PathLike, split: str = "all", classes: Optional[Sequence[str]] = None,
                       classes_from_folders: bool = False) -> List[Item]:
    """The images to calibrate on (see the module doc), sorted. ``split``: which split of a meta.json (``train``,
    ``test`` or ``all``); ``classes``: keep only these. Torch-free (reads meta.json as JSON)."""
    src = Path(source)
    if not src.exists():
        raise CalibrationError(f"{src}: no such folder or meta.json")
    meta = src if src.is_file() else src / "meta.json"
    items: List[Item] = []
    if meta.is_file():
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise CalibrationError(f"{meta}: cannot read it as meta.json ({e})") from None
        if not isinstance(doc, dict):
            raise CalibrationError(f"{meta}: expected a JSON object of splits")
        splits = sorted(doc) if split == "all" else [split]
        for sp in splits:
            if sp not in doc:
                raise CalibrationError(f"{meta}: no split {sp!r} (has {', '.join(sorted(doc))})")
            for cls, entries in sorted(doc[sp].items()):
                for e in entries:
                    try:
                        items.append((meta.parent / str(e["img_path"]), int(e["anomaly"]),
                                      str(e.get("cls_name") or cls)))
                    except (KeyError, TypeError, ValueError):
                        raise CalibrationError(f"{meta}: entry {e!r} of split {sp!r} lacks img_path/anomaly"
                                               ) from None
    elif src.is_dir():
        for root, _, files in os.walk(src, followlinks=True):
            for f in files:
                p = Path(root) / f
                if is_image_name(p):
                    rel = p.relative_to(src).parts
                    items.append((p, 0, rel[0] if classes_from_folders and len(rel) > 1 else None))
    else:
        raise CalibrationError(f"{src}: give a folder of good images or a data root / meta.json")
    if classes:
        want = set(classes)
        unknown = want - {c for _, _, c in items}
        if unknown:
            raise CalibrationError(f"{src}: no images of class(es) {', '.join(sorted(unknown))}")
        items = [it for it in items if it[2] in want]
    if not items:
        raise CalibrationError(f"{src}: no images to calibrate on")
    return sorted(items, key=lambda it: (str(it[2]), str(it[0])))


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the runtime-only install has no tqdm
        return None
    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


def score_images(model: PathLike, items: Sequence[Item], *, batch_size: int = 8, provider: str = "cpu",
                 allow_cpu_fallback: bool = False, device: Optional[str] = None, pretrained: Optional[str] = None,
                 progress: bool = True) -> Tuple[ScoredImages, List[Dict[str, str]]]:
    """Image scores and map maxima of ``items`` from ``model``; unreadable images are skipped and returned as
    ``{"path", "error"}`` (never silently: the caller reports them). An exported model (ONNX, engine) is run by
    the torch-free runtime; a checkpoint by the torch :class:`wmoe.Detector`."""
    from ..image_io import DataError, load_image
    kind = decision_carrier(model)
    if kind in ("onnx", "engine"):
        from ..runtime import Runtime
        rt = Runtime.open(model, provider=provider, allow_cpu_fallback=allow_cpu_fallback)

        def run(imgs: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
            r = rt.score(imgs)
            return r.scores, r.maps.reshape(len(imgs), -1).max(axis=1)
    elif kind == "checkpoint":
        from ..detector import Detector
        det = Detector.from_checkpoint(model, pretrained=pretrained, device=device, batch_size=batch_size)

        def run(imgs: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
            r = det(imgs, max_map_side=det.image_size)
            return r.scores, np.array([m.max() for m in r.maps])
    else:
        raise CalibrationError(f"{model}: calibrate a checkpoint, an ONNX model or a TensorRT engine")
    scores, maxima, kept, errors = [], [], [], []
    bar = _bar(len(items), "calibrate", progress)
    for start in range(0, len(items), batch_size):
        imgs, ok = [], []
        for it in items[start:start + batch_size]:
            try:
                imgs.append(load_image(it[0]))
                ok.append(it)
            except DataError as e:
                errors.append({"path": printable(it[0]), "error": printable(e)})
        if imgs:
            s, m = run(imgs)
            scores.append(np.asarray(s, np.float64))
            maxima.append(np.asarray(m, np.float64))
            kept += ok
        if bar is not None:
            bar.update(len(items[start:start + batch_size]))
    if bar is not None:
        bar.close()
    if not kept:
        raise CalibrationError(f"none of the {len(items)} images could be read (first: {errors[0]['error']})")
    has_classes = any(c is not None for _, _, c in kept)
    return ScoredImages(np.concatenate(scores), np.concatenate(maxima), np.array([y for _, y, _ in kept]),
                        [str(c) for _, _, c in kept] if has_classes else None,
                        [str(p) for p, _, _ in kept]), errors


def calibrate(model: PathLike, source: PathLike, cfg: CalibrationConfig = CalibrationConfig(), *,
              split: str = "all", classes: Optional[Sequence[str]] = None, classes_from_folders: bool = False,
              write: bool = True, out: Optional[PathLike] = None, scores_csv: Optional[PathLike] = None,
              batch_size: int = 8, provider: str = "cpu", allow_cpu_fallback: bool = False,
              device: Optional[str] = None, pretrained: Optional[str] = None,
              progress: bool = True) -> Tuple[Decision, Optional[Path]]:
    """Score the images of ``source`` with ``model``, compute the decision
    (:func:`wmoe.evaluation.calibration.decide`) and, with ``write``, store it with the model (``out``: another file:
    a decision JSON for a checkpoint, a copy of the ONNX for an ONNX). Returns the decision and the file written (None
    when not written).

    ``scores_csv``: the per-image scores (path, class, label, score, map maximum) as CSV."""
    model = Path(model)
    if not model.is_file():
        raise CalibrationError(f"{model}: no such model file")
    items = calibration_images(source, split, classes, classes_from_folders)
    sc, errors = score_images(model, items, batch_size=batch_size, provider=provider,
                              allow_cpu_fallback=allow_cpu_fallback, device=device, pretrained=pretrained,
                              progress=progress)
    for e in errors:
        print(f"skipped {e['path']}: {e['error']}", file=sys.stderr)
    kind = decision_carrier(model)
    rec: Dict[str, object] = {"data": printable(source), "model": printable(model)}
    meta = None
    if kind == "checkpoint":
        rec["checkpoint_sha256"] = sha256_file(model)
    else:
        meta = read_onnx_contract(model) if kind == "onnx" else None
        if meta is not None and meta.checkpoint_sha256:
            rec["checkpoint_sha256"] = meta.checkpoint_sha256
        rec["model_sha256"] = sha256_file(model)  # the scored file, before its metadata is rewritten
    decision = decide(sc, cfg, **rec)
    if meta is not None:  # what a score means is the model's (e.g. a normal-reference export), not calibration's
        decision.score = meta.decision.score
    if errors:
        decision.calibration["skipped_images"] = len(errors)
    if scores_csv is not None:
        write_scores_csv(scores_csv, sc)
    written = write_decision(model, decision, out=out) if write else None
    return decision, written


def write_scores_csv(path: PathLike, sc: ScoredImages) -> Path:
    """Per-image scores as CSV (``path, class, label, score, map_max``), atomically."""
    import csv
    import io

    from ..atomic import atomic_write_text
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "class", "label", "score", "map_max"])
    for i, s in enumerate(sc.scores):
        w.writerow([sc.paths[i] if sc.paths else "", sc.classes[i] if sc.classes else "", int(sc.labels[i]),
                    f"{s:.6f}", "" if sc.map_max is None else f"{sc.map_max[i]:.6f}"])
    return atomic_write_text(path, buf.getvalue())


__all__ = ["calibrate", "calibration_images", "score_images", "write_scores_csv"]
