"""The demo report's "normal-reference mode" section: zero-shot, reference and fused AUROC on the held-out
categories with k = 1, 4, 16 good images and the full reference, and the memory each needs."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from ..atomic import atomic_write_text
from ..model import WMoECLIP
from .compare import score_test_split
from .fit import find_good_images, fit_class
from .store import ReferenceConfig


def reference_section(out: Path, model: WMoECLIP, root: Path, classes: Sequence[str], ks: Sequence[int] = (1, 4, 16),
                      cfg: ReferenceConfig = None) -> List[str]:
    """Fit the references of ``classes`` from their ``train/good`` images, score their test split and return the
    report's markdown lines (also written to ``out/reference_mode.json``)."""
    cfg = cfg or ReferenceConfig()
    w = cfg.fusion_weight
    t0 = time.time()
    results: Dict[str, Any] = {}
    memory: Dict[str, Dict[str, Any]] = {}
    for cls in classes:
        paths = find_good_images(root, [cls])[cls]
        refs = {str(k): fit_class(model, cls, paths[:k], cfg) for k in ks if k < len(paths)}
        refs["full"] = fit_class(model, cls, paths, cfg)
        memory[cls] = {key: r.summary() for key, r in refs.items()}
        results[cls] = score_test_split(model, root, cls, refs, cfg, [0.0, 1.0, w])
    keys = [str(k) for k in ks if str(k) in next(iter(results.values()))] + ["full"]
    lines = ["## Normal-reference mode (good images of the held-out categories)", "",
             f"`wmoe fit-normal` on the first k `train/good` images of each held-out category (the full reference: "
             f"all of them, greedy coreset above {cfg.max_memory} memory rows); scored zero-shot, by the reference "
             f"alone, and fused with weight w = {w} (measured on other categories: docs/paper_mapping.md). AUROC %, "
             "mean over the categories.", "",
             "| k | memory rows | memory KiB | I-AUROC zero-shot | reference | fused | P-AUROC zero-shot | reference "
             "| fused |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in keys:
        def mean(wt: float, metric: str) -> str:
            return f"{100 * np.mean([results[c][key][wt][metric] for c in classes]):.1f}"
        rows = max(memory[c][key]["memory_rows"] for c in classes)
        kib = max(memory[c][key]["memory_bytes"] for c in classes) / 1024
        k_label = key if key != "full" else f"full ({memory[classes[0]]['full']['k']})"
        lines.append(f"| {k_label} | {rows} | {kib:.0f} | " + " | ".join(
            mean(wt, m) for m in ("image_auroc", "pixel_auroc") for wt in (0.0, 1.0, w)) + " |")
    lines += ["", f"({time.time() - t0:.0f} s; the seeds and the fusion-weight curve: "
              "bench/results/reference_cpu.md)", ""]
    atomic_write_text(out / "reference_mode.json", json.dumps({"results": results, "memory": memory,
                                                               "fusion_weight": w}, indent=1, default=str) + "\n")
    return lines
