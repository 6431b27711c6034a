"""The demo's report.md: settings, timings, the metrics table, SA-MoE expert utilization and the prediction heatmaps."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from . import __version__
from .atomic import atomic_write_text
from .metrics import MetricsTable


def write_report(out: Path, table: MetricsTable, pred: Dict[str, Any], times: Dict[str, float], model_cfg: Any,
                 demo_cfg: Any, train_usage: Optional[List[Dict[str, Any]]] = None,
                 extra_sections: Optional[List[str]] = None) -> Path:
    """``out/report.md``; ``train_usage`` = the per-epoch records of ``expert_usage.json`` (drawn with the
    evaluation's utilization into ``out/expert_usage.png``)."""
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
        *_usage_section(out, table, model_cfg, train_usage or []),
        *(extra_sections or []),
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


def _usage_section(out: Path, table: MetricsTable, model_cfg: Any, train_usage: List[Dict[str, Any]]) -> List[str]:
    from .expert_health import usage_markdown
    from .usage_plot import draw_usage_grid

    usage = table.extra.get("expert_usage")
    if not usage:
        return []
    rows = [(f"ep {e['epoch']}", e) for e in train_usage] + [("eval", usage["all"])]
    draw_usage_grid(rows, out / "expert_usage.png")
    lines = [usage_markdown(usage["all"], usage.get("per_class")).rstrip("\n"), "",
             f"ESB weight {model_cfg.moe_balance}, EIR weight {model_cfg.moe_repulsion} (0 = off, the paper). "
             "Selection per training epoch and on the held-out evaluation:", "", "![](expert_usage.png)", ""]
    if train_usage:
        lines += ["| epoch | evenness | effective experts | experts' output cos-sim | unused |", "|---:|---:|---:|---:|---|"]
        lines += [f"| {e['epoch']} | {e['usage_evenness']:.3f} | {e['effective_experts']:.2f} | "
                  f"{e['output_similarity']:+.3f} | {e['unused_experts'] or '–'} |" for e in train_usage]
        lines.append("")
    return lines
