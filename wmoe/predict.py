"""Score images with a trained checkpoint: scores.csv/.json, a verdict against a threshold, heatmap overlays.

The threshold comes from ``--threshold`` or, failing that, from ``<checkpoint>.threshold.json`` (the F1-max
threshold written by ``wmoe eval``). A file that cannot be read is listed with its reason; the other images are still scored.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

from PIL import Image

from .atomic import atomic_path, atomic_write_text, ensure_output_dir
from .contract import VERDICT_ANOMALOUS
from .data import DataError, IMAGE_EXTENSIONS, load_image, load_mask
from .errors import NonFiniteError, printable
from .overlay import overlay_panel


def expand_inputs(inputs: Sequence[Union[str, Path]],
                  unreadable: Optional[List[Dict[str, str]]] = None) -> List[Path]:
    """Files as given; folders expanded to their image files (sorted). A missing path is an error.

    A sub-folder that cannot be listed (permissions) is never skipped silently: it is added to ``unreadable``
    (``{"path", "error"}``) when a list is given, and raises :class:`DataError` otherwise. Symbolic links to
    folders are followed, each real folder once (no loops)."""
    out: List[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            def onerror(e: OSError) -> None:
                msg = f"{printable(e.filename)}: folder cannot be listed ({e.strerror}); its images were not scored"
                if unreadable is None:
                    raise DataError(msg)
                unreadable.append({"path": printable(e.filename), "error": msg})

            seen, found = set(), []
            for root, dirs, files in os.walk(p, onerror=onerror, followlinks=True):
                real = os.path.realpath(root)
                if real in seen:  # a symlink loop or a second link to the same folder
                    dirs[:] = []
                    continue
                seen.add(real)
                found.extend(Path(root) / f for f in files)
            out.extend(sorted(q for q in found if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not out:
        raise DataError(f"no image files found in {', '.join(map(str, inputs))}")
    return out


def predict(ckpt: Union[str, Path], inputs: Sequence[Union[str, Path]], out_dir: Union[str, Path],
            threshold: Optional[float] = None, pretrained: Optional[str] = None, device: Optional[str] = None,
            batch_size: int = 8, overlays: bool = True, progress: bool = True,
            overlay_size: int = 512, masks: Optional[Mapping[Union[str, Path], Union[str, Path]]] = None,
            pixel_threshold: Optional[float] = None, class_name: Optional[str] = None) -> Dict[str, object]:
    """Score ``inputs`` (files or folders); return the JSON document also written to ``OUT/scores.json``.

    An image the model scores NaN/inf gets no verdict: it is listed under ``errors`` ("undecided"), never judged
    normal. Overlays (image | heatmap with the decision) are at most ``overlay_size`` px per panel; ``masks`` maps
    an input path to its ground-truth mask file, whose contour is then drawn on the heatmap; the predicted defect
    contour is drawn at ``pixel_threshold`` (default: the one stored beside the checkpoint, if any). ``class_name``:
    the product class whose stored thresholds judge the images (a decision calibrated per class). The overlay is
    :func:`wmoe.overlay.overlay_panel`, the same picture ``wmoe-camera --overlays`` writes.
    """
    from .detector import Detector

    if threshold is not None and not math.isfinite(threshold):
        raise NonFiniteError(f"the decision threshold is {threshold}; pass a finite --threshold")
    # the decision stored beside the checkpoint (refused when calibrated on another one, or when it does not know
    # class_name: before anything is written), overridden by the user's numbers; judged by the runtime's one rule
    # (wmoe.contract.Decision), per class when asked
    det = Detector.from_checkpoint(ckpt, pretrained=pretrained, device=device, batch_size=batch_size,
                                   threshold=threshold, pixel_threshold=pixel_threshold, class_name=class_name)
    out = ensure_output_dir(out_dir)
    errors: List[Dict[str, str]] = []
    paths = expand_inputs(inputs, unreadable=errors)
    thr = det.threshold
    pixel_threshold = det.decision.pixel_threshold_for(class_name)
    results: List[Dict[str, object]] = []
    it = range(0, len(paths), batch_size)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="predict", unit="batch", dynamic_ncols=True)
    for start in it:
        imgs, ok = [], []
        for p in paths[start:start + batch_size]:
            try:
                imgs.append(load_image(p))
                ok.append(p)
            except DataError as e:
                errors.append({"path": printable(p), "error": printable(e)})
        if not imgs:
            continue
        res = det(imgs, max_map_side=overlay_size)
        for k, (p, img) in enumerate(zip(ok, imgs)):
            if res.faults[k]:  # the one NaN policy: undecided, counted (listed), never judged
                errors.append({"path": printable(p), "error": f"undecided: {res.faults[k]}"})
                continue
            s, ts, m, verdict = res.scores[k], res.text_scores[k], res.maps[k], res.verdicts[k]
            rec: Dict[str, object] = {"path": printable(p), "score": float(s), "text_score": float(ts),
                                      "max_map": float(m.max())}
            rec["verdict"] = verdict
            if thr is not None:
                rec["anomalous"] = verdict == VERDICT_ANOMALOUS
            if overlays:
                name = f"{len(results):04d}_{printable(p.stem)}_overlay.png"
                gt = None
                if masks and masks.get(str(p), masks.get(p)):
                    try:
                        gt = load_mask(masks.get(str(p), masks.get(p)))
                    except DataError as e:  # the score stands; only the contour is missing, and said so
                        rec["mask_error"] = printable(e)
                with atomic_path(out / name) as tmp:
                    Image.fromarray(overlay_panel(img, m, float(s), thr, mask=gt, max_side=overlay_size,
                                                  pixel_threshold=pixel_threshold, verdict=verdict,
                                                  label=printable(p.name))
                                    ).save(tmp, "PNG")
                rec["overlay"] = name
            results.append(rec)
        del imgs, res
    doc = {"checkpoint": printable(ckpt), "class": class_name, "threshold": thr, "pixel_threshold": pixel_threshold,
           "n_scored": len(results), "n_failed": len(errors),
           "n_undecided": sum(e["error"].startswith("undecided: ") for e in errors), "results": results,
           "errors": errors}
    atomic_write_text(out / "scores.json", json.dumps(doc, indent=2) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "score", "text_score", "max_map", "anomalous", "error"])
    for r in results:
        w.writerow([r["path"], f"{r['score']:.6f}", f"{r['text_score']:.6f}", f"{r['max_map']:.6f}",
                    r.get("anomalous", ""), ""])
    for e in errors:
        w.writerow([e["path"], "", "", "", "", e["error"]])
    atomic_write_text(out / "scores.csv", buf.getvalue())
    return doc
