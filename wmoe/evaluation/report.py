"""The demo's report.md: settings, timings, the metrics table, SA-MoE expert utilization and the prediction heatmaps."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .. import __version__
from ..atomic import atomic_write_text
from .metrics import MetricsTable


def write_report(out: Path, table: MetricsTable, pred: Dict[str, Any], times: Dict[str, float], model_cfg: Any,
                 demo_cfg: Any, train_usage: Optional[List[Dict[str, Any]]] = None,
                 extra_sections: Optional[List[str]] = None, decision: Any = None,
                 holdout: Optional[Dict[str, Any]] = None, learning: Optional[Dict[str, MetricsTable]] = None
                 ) -> Path:
    """``out/report.md``; ``train_usage`` = the per-epoch records of ``expert_usage.json`` (drawn with the
    evaluation's utilization into ``out/expert_usage.png``); ``decision`` (calibrated on good images),
    ``holdout`` (the false-reject rate it gives on held-out good images) and ``learning`` (trained vs untrained
    head) give the decision and learning sections, with ``decision.png`` (ROC, PR, score histograms)."""
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
        f"- F1-max threshold on the evaluated set (reported, not used: the decision comes from good parts): "
        f"{table.extra.get('threshold')}", "",
        "## Timings (s)", "",
        "| " + " | ".join(times) + " |", "|" + "---:|" * len(times),
        "| " + " | ".join(f"{v:.1f}" for v in times.values()) + " |", "",
        *_decision_section(out, table, decision, holdout, demo_cfg),
        "## Zero-shot metrics (%)", "", table.to_markdown(), "",
        "I-: image level, P-: pixel level. P-PRO is the MVTec reference PRO (integral to FPR 0.3); "
        "P-PRO(binned) is AnomalyCLIP's 200-threshold variant."
        + (" With the tiny random-init backbone these zero-shot rows are at chance level (~50): the backbone has "
           "learned no visual features to transfer; see the next section for what the head learns."
           if not demo_cfg.pretrained else ""), "",
        *_learning_section(learning, demo_cfg),
        *_usage_section(out, table, model_cfg, train_usage or []),
        *(extra_sections or []),
        "## Predictions", "",
        "Each class judged at its own calibrated threshold.", "",
        "| image | score | threshold | anomalous | heatmap |", "|---|---:|---:|---|---|",
    ]
    for r in pred["results"]:
        rel = Path(r["path"])
        name = f"{rel.parent.parent.parent.name}/{rel.parent.name}/{rel.name}"
        thr = r.get("threshold")
        lines.append(f"| {name} | {r['score']:.3f} | {'' if thr is None else f'{thr:.3f}'} | "
                     f"{r.get('anomalous', '')} | ![](predictions/{r['overlay']}) |")
    for e in pred["errors"]:
        lines.append(f"| {e['path']} | – | error: {e['error']} | |")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _usage_section(out: Path, table: MetricsTable, model_cfg: Any, train_usage: List[Dict[str, Any]]) -> List[str]:
    from ..model.expert_health import usage_markdown
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


def _pct(k: int, n: int) -> str:
    return f"{k} of {n} ({100 * k / n:.1f}%)" if n else "–"


def _decision_section(out: Path, table: MetricsTable, decision: Any, holdout: Optional[Dict[str, Any]],
                      demo_cfg: Any) -> List[str]:
    """The decision a quality engineer signs off: how it was set, the false-reject rate it gives on good parts it
    never saw, the confusion counts on the evaluated set, ROC / PR / histograms with the thresholds drawn."""
    if decision is None:
        return []
    from .decision_plot import draw_decision_plots, rows_from_scores_csv
    rec = decision.record
    lines = ["## The decision (calibrated on good parts)", "",
             f"`wmoe calibrate` on {rec.n_good} good images ({', '.join(sorted(rec.per_class)) or 'one class'}), "
             f"target false-reject rate {100 * rec.target:g}% — the rule: {rec.quantile_rule}.", "",
             "| class | good images | threshold | pixel threshold | k of n | expected FRR | FRR bound (90%) | "
             "held-out good rejected |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    per = dict(rec.per_class) or {"all": {"threshold": decision.threshold, "n_good": rec.n_good,
                                          "pixel_threshold": decision.pixel_threshold,
                                          "operating_points": rec.operating_points}}
    for c, e in per.items():
        p = e["operating_points"].get("false-reject-rate", {})
        h = (holdout or {}).get("per_class", {}).get(c, {})
        pix = e.get("pixel_threshold")
        lines.append(f"| {c} | {e['n_good']} | {e['threshold']:.4f} | {'' if pix is None else f'{pix:.4f}'} | "
                     f"{p.get('k', '')} of {p.get('n', '')} | {100 * p.get('expected_rate', float('nan')):.1f}% | "
                     f"{100 * p.get('rate_upper_bound', float('nan')):.1f}% | "
                     f"{_pct(h.get('rejected', 0), h.get('n', 0)) if h else '–'} |")
    if holdout:
        lines += ["", f"**False-reject rate on {holdout['n']} held-out good images** (never used to calibrate): "
                      f"{_pct(holdout['rejected'], holdout['n'])} rejected, target {100 * rec.target:g}%.", ""]
    d = table.extra.get("decision")
    if d:
        c = d["confusion"]
        lines += [f"On the zero-shot evaluation set at these thresholds: **TP {c['tp']}, FP {c['fp']}, TN {c['tn']}, "
                  f"FN {c['fn']}**" + (f", undecided {c['undecided']}" if c.get("undecided") else "")
                  + f" — defects caught {_pct(c['tp'], c['tp'] + c['fn'])}, good parts rejected "
                  f"{_pct(c['fp'], c['fp'] + c['tn'])}. Per-image scores and verdicts: `eval/scores.csv`.", ""]
    scores = out / "eval" / "scores.csv"
    if scores.is_file():
        draw_decision_plots(rows_from_scores_csv(scores, decision.class_thresholds, decision.threshold),
                            out / "decision.png")
        lines += ["Per class: ROC and precision-recall curves with the operating point of the threshold (blue "
                  "circle), and the score histograms of good (green) and defective (red) images with the threshold "
                  "(blue line):", "", "![](decision.png)", ""]
    return lines


def _learning_section(learning: Optional[Dict[str, MetricsTable]], demo_cfg: Any) -> List[str]:
    """Does the pipeline learn? Trained head beside the untrained one on fresh images of the training
    categories, next to the zero-shot rows."""
    if not learning:
        return []

    def m(key: str, col: str) -> str:
        t = learning.get(key)
        v = getattr(t.mean(), col) if t is not None else float("nan")
        return "–" if v != v else f"{100 * v:.1f}"
    chance = " (chance level: random backbone)" if not demo_cfg.pretrained else ""
    return ["## Does the pipeline learn?", "",
            f"Fresh images of the training categories (the demo generator with seed {demo_cfg.seed + 1}, never "
            f"trained on), the trained head beside the same model before training; then the unseen categories.", "",
            "| images | I-AUROC trained | I-AUROC untrained | P-AUROC trained | P-AUROC untrained |",
            "|---|---:|---:|---:|---:|",
            f"| training categories, fresh images | {m('fresh_trained', 'image_auroc')} | "
            f"{m('fresh_untrained', 'image_auroc')} | {m('fresh_trained', 'pixel_auroc')} | "
            f"{m('fresh_untrained', 'pixel_auroc')} |",
            f"| zero-shot categories{chance} | {m('zero_shot_trained', 'image_auroc')} | "
            f"{m('zero_shot_untrained', 'image_auroc')} | {m('zero_shot_trained', 'pixel_auroc')} | "
            f"{m('zero_shot_untrained', 'pixel_auroc')} |", ""]
