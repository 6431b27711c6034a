"""The demo's report.md: settings, timings, the metrics table and the prediction heatmaps."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Dict

import torch

from . import __version__
from .atomic import atomic_write_text
from .metrics import MetricsTable


def write_report(out: Path, table: MetricsTable, pred: Dict[str, Any], times: Dict[str, float], model_cfg: Any,
                 demo_cfg: Any) -> Path:
    lines = [
        "# wmoe demo report", "",
        f"wmoe {__version__}, torch {torch.__version__}, {platform.machine()} "
        f"({'CUDA: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'})", "",
        "## Settings", "",
        f"- backbone: `{model_cfg.backbone}` ({'weights: ' + str(demo_cfg.pretrained) if demo_cfg.pretrained else 'random init: the tiny test backbone, numbers show the pipeline runs, not model quality'})",
        f"- input size {model_cfg.image_size}, feature layers {list(model_cfg.feature_layers) if model_cfg.feature_layers else 'auto'}",
        f"- training: {demo_cfg.epochs} epochs, batch {demo_cfg.batch_size}, seed {demo_cfg.seed} "
        f"(on the auxiliary categories' test split)",
        f"- evaluation: zero-shot on held-out categories, maps smoothed with σ=4; "
        f"{table.extra.get('skipped_files', 0)} file(s) skipped",
        f"- threshold (F1-max on the evaluated set): {table.extra.get('threshold')}", "",
        "## Timings (s)", "",
        "| " + " | ".join(times) + " |", "|" + "---:|" * len(times),
        "| " + " | ".join(f"{v:.1f}" for v in times.values()) + " |", "",
        "## Zero-shot metrics (%)", "", table.to_markdown(), "",
        "I-: image level, P-: pixel level. P-PRO is the MVTec reference PRO (integral to FPR 0.3); "
        "P-PRO(binned) is AnomalyCLIP's 200-threshold variant.", "",
        "## Predictions", "",
        "| image | score | anomalous | heatmap |", "|---|---:|---|---|",
    ]
    for r in pred["results"]:
        rel = Path(r["path"])
        name = f"{rel.parent.parent.parent.name}/{rel.parent.name}/{rel.name}"
        lines.append(f"| {name} | {r['score']:.3f} | {r.get('anomalous', '')} | "
                     f"![](predictions/{r['overlay']}) |")
    for e in pred["errors"]:
        lines.append(f"| {e['path']} | – | error: {e['error']} | |")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
