"""The demo report's "normal-reference mode" section: zero-shot, reference and fused AUROC on the held-out
categories with k = 1, 4, 16 good images and the full reference, and the memory each needs."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..atomic import atomic_write_text
from ..model.wmoe_clip import WMoECLIP
from .compare import score_test_split
from .experts import ExpertsConfig
from .fit import find_good_images, fit_class
from .store import ReferenceConfig


def reference_section(out: Path, model: WMoECLIP, root: Path, classes: Sequence[str], ks: Sequence[int] = (1, 4, 16),
                      cfg: ReferenceConfig = None, experts: bool = True,
                      experts_cfg: Optional[ExpertsConfig] = None) -> List[str]:
    """Fit the references of ``classes`` from their ``train/good`` images, score their test split and return the
    report's markdown lines (also written to ``out/reference_mode.json``). With ``experts``, each reference also
    trains the three-level experts and the table shows the memory alone and memory + experts (v =
    ``cfg.experts_weight``) side by side."""
    cfg = dataclasses.replace(cfg or ReferenceConfig(), experts=experts)
    w = cfg.fusion_weight
    v = cfg.experts_weight
    vs = [0.0, v] if experts else []
    t0 = time.time()
    results: Dict[str, Any] = {}
    memory: Dict[str, Dict[str, Any]] = {}
    for cls in classes:
        paths = find_good_images(root, [cls])[cls]
        refs = {str(k): fit_class(model, cls, paths[:k], cfg, experts_cfg=experts_cfg) for k in ks if k < len(paths)}
        refs["full"] = fit_class(model, cls, paths, cfg, experts_cfg=experts_cfg)
        memory[cls] = {key: r.summary() for key, r in refs.items()}
        results[cls] = score_test_split(model, root, cls, refs, cfg, [0.0, 1.0, w], experts_weights=vs)
    keys = [str(k) for k in ks if str(k) in next(iter(results.values()))] + ["full"]
    lines = ["## Normal-reference mode (good images of the held-out categories)", "",
             f"`wmoe fit-normal` on the first k `train/good` images of each held-out category (the full reference: "
             f"all of them, greedy coreset above {cfg.max_memory} memory rows); scored zero-shot, by the reference "
             f"alone, and fused with weight w = {w} (measured on other categories: docs/paper_mapping.md). AUROC %, "
             "mean over the categories.", "",
             "| k | memory rows | memory KiB | I-AUROC zero-shot | reference | fused | P-AUROC zero-shot | reference "
             "| fused |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    variants = [("", "memory")] + ([(f" v={float(v)}", f"memory + experts (v = {v})")] if experts else [])
    if experts:
        lines[-2] = lines[-2].replace("| k |", "| k | reference map |")
        lines[-1] = "|---|---|" + lines[-1][len("|---|"):]
    for key in keys:
        for suffix, label in variants:
            rkey = f"{key} v=0.0" if experts and not suffix else key + suffix

            def mean(wt: float, metric: str) -> str:
                return f"{100 * np.mean([results[c][rkey][wt][metric] for c in classes]):.1f}"
            rows = max(memory[c][key]["memory_rows"] for c in classes)
            kib = max(memory[c][key]["memory_bytes"] for c in classes) / 1024
            k_label = key if key != "full" else f"full ({memory[classes[0]]['full']['k']})"
            lines.append(f"| {k_label} | " + (f"{label} | " if experts else "") + f"{rows} | {kib:.0f} | " +
                         " | ".join(mean(wt, m) for m in ("image_auroc", "pixel_auroc") for wt in (0.0, 1.0, w)) +
                         " |")
    if experts:
        lines += ["", "Memory + experts: the three-level reconstruction experts (patch, component, global; ESB/EIR) "
                  "trained on the same good images, their map mixed into the reference map with v "
                  f"= {v} (`wmoe fit-normal --experts`; docs/paper_mapping.md)."]
    lines += ["", f"({time.time() - t0:.0f} s; the seeds and the fusion-weight curve: "
              "bench/results/reference_cpu.md)", ""]
    atomic_write_text(out / "reference_mode.json", json.dumps({"results": results, "memory": memory,
                                                               "fusion_weight": w, "experts_weights": vs},
                                                              indent=1, default=str) + "\n")
    return lines
