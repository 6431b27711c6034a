"""Score images with a trained checkpoint: scores.csv/.json, a verdict against a threshold, heatmap overlays.

The threshold comes from ``--threshold`` or, failing that, from the checkpoint (the F1-max threshold stored by
``wmoe eval``). A file that cannot be read is listed with its reason; the other images are still scored.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .atomic import atomic_path, atomic_write_text
from .data import DataError, IMAGE_EXTENSIONS, load_image
from .overlay import heatmap_overlay


def expand_inputs(inputs: Sequence[Union[str, Path]]) -> List[Path]:
    """Files as given; folders expanded to their image files (sorted). A missing path is an error."""
    out: List[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not out:
        raise DataError(f"no image files found in {', '.join(map(str, inputs))}")
    return out


def predict(ckpt: Union[str, Path], inputs: Sequence[Union[str, Path]], out_dir: Union[str, Path],
            threshold: Optional[float] = None, pretrained: Optional[str] = None, device: Optional[str] = None,
            batch_size: int = 8, overlays: bool = True, progress: bool = True) -> Dict[str, object]:
    """Score ``inputs`` (files or folders); return the JSON document also written to ``OUT/scores.json``."""
    from .detector import Detector

    det = Detector.from_checkpoint(ckpt, pretrained=pretrained, device=device, batch_size=batch_size)
    thr = threshold if threshold is not None else det.threshold
    paths = expand_inputs(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: List[Dict[str, object]] = []
    errors: List[Dict[str, str]] = []
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
                errors.append({"path": str(p), "error": str(e)})
        if not imgs:
            continue
        res = det(imgs)
        for p, img, s, ts, m in zip(ok, imgs, res.scores, res.text_scores, res.maps):
            rec: Dict[str, object] = {"path": str(p), "score": float(s), "text_score": float(ts),
                                      "max_map": float(m.max())}
            if thr is not None and not math.isnan(thr):
                rec["anomalous"] = bool(s >= thr)
            if overlays:
                name = f"{len(results):04d}_{p.stem}_overlay.png"
                with atomic_path(out / name) as tmp:
                    Image.fromarray(heatmap_overlay(img, m, vmin=0.0, vmax=1.0)).save(tmp, format="PNG")
                rec["overlay"] = name
            results.append(rec)
    doc = {"checkpoint": str(ckpt), "threshold": thr, "n_scored": len(results), "n_failed": len(errors),
           "results": results, "errors": errors}
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
