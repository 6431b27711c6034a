"""SA-MoE's AnomalyMoE options off and on, in one run: expert usage and held-out metrics on the demo data.

    python -m wmoe.bench.moe_options --out bench/results/moe_options_cpu --epochs 6

Builds the demo data set once, then for each seed trains the tiny model four times from the same start — paper
(both off), ESB only, EIR only, both — on the demo's auxiliary categories and evaluates each zero-shot on the
held-out ones. Records, per run: the last training epoch's utilization (usage evenness H / ln N, effective
experts, experts' output cosine similarity, unused experts), the same on the held-out evaluation, the mean
image/pixel metrics and the training time. Writes ``OUT.json`` and ``OUT.md`` (with the command line).
The tiny random-init backbone says whether the options change routing, not how good WMoE-CLIP is.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

from wmoe.atomic import atomic_write_text
from wmoe.model.config import ModelConfig
from wmoe.data import DEMO_TEST_CLASSES, DEMO_TRAIN_CLASSES, make_demo_dataset
from wmoe.evaluation.evaluate import evaluate
from wmoe.model.expert_health import USAGE_FILE
from wmoe.training.train import TrainConfig, train

METRICS = [("image_auroc", "I-AUROC"), ("image_ap", "I-AP"), ("pixel_auroc", "P-AUROC"), ("pixel_pro", "P-PRO")]


def _usage(s: Dict[str, Any]) -> Dict[str, Any]:
    return {k: s[k] for k in ("usage_evenness", "usage_entropy", "effective_experts", "output_similarity",
                              "unused_experts", "selection_frequency")}


def run(a: argparse.Namespace) -> Dict[str, Any]:
    work = Path(a.work or tempfile.mkdtemp(prefix="wmoe_moe_options_"))
    root = make_demo_dataset(work / "data", seed=0, image_size=a.data_size)
    variants = [("off (paper)", 0.0, 0.0), ("ESB", a.balance, 0.0), ("EIR", 0.0, a.repulsion),
                ("ESB+EIR", a.balance, a.repulsion)]
    runs: List[Dict[str, Any]] = []
    for seed in a.seeds:
        for name, b, r in variants:
            out = work / f"seed{seed}_{name.split()[0].replace('+', '_')}"
            cfg = ModelConfig.tiny(image_size=a.image_size, moe_balance=b, moe_repulsion=r)
            t0 = time.perf_counter()
            ckpt = train(cfg, TrainConfig(str(root), out_dir=str(out), classes=list(DEMO_TRAIN_CLASSES),
                                          epochs=a.epochs, batch_size=a.batch_size, seed=seed, progress=False,
                                          overwrite=True))
            t_train = time.perf_counter() - t0
            table = evaluate(ckpt, root, classes=list(DEMO_TEST_CLASSES), out_dir=out / "eval", progress=False,
                             store_threshold=False)
            epochs = json.loads((out / USAGE_FILE).read_text())["epochs"]
            mean = json.loads(table.to_json())["mean"]
            rec = {"variant": name, "seed": seed, "moe_balance": b, "moe_repulsion": r,
                   "train_seconds": round(t_train, 1), "train_last_epoch": _usage(epochs[-1]),
                   "train_evenness_per_epoch": [e["usage_evenness"] for e in epochs],
                   "eval": _usage(table.extra["expert_usage"]["all"]),
                   "metrics": {k: mean[k] for k, _ in METRICS}}
            runs.append(rec)
            print(f"{name:12s} seed {seed}: train evenness {rec['train_last_epoch']['usage_evenness']:.3f}, "
                  f"eval evenness {rec['eval']['usage_evenness']:.3f}, "
                  + ", ".join(f"{h} {100 * (mean[k] or float('nan')):.1f}" for k, h in METRICS), flush=True)
    return {"command": "python -m wmoe.bench.moe_options " + " ".join(shlex.quote(x) for x in a.argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
            "settings": {"epochs": a.epochs, "batch_size": a.batch_size, "image_size": a.image_size,
                         "data_size": a.data_size, "seeds": a.seeds, "train_classes": list(DEMO_TRAIN_CLASSES),
                         "test_classes": list(DEMO_TEST_CLASSES)},
            "runs": runs}


def to_markdown(doc: Dict[str, Any]) -> str:
    s = doc["settings"]
    lines = ["# SA-MoE options off/on: expert usage and held-out metrics (tiny model, demo data)", "",
             f"Command: `{doc['command']}`", "", f"Machine: {doc['machine']}", "",
             f"Training on {', '.join(s['train_classes'])} (test split), {s['epochs']} epochs, batch "
             f"{s['batch_size']}, input {s['image_size']}; zero-shot evaluation on {', '.join(s['test_classes'])}. "
             "Evenness = usage entropy / ln N (1 = all 8 experts chosen equally often); eff. = exp(entropy), the "
             "number of equally used experts it corresponds to; cos = mean cosine similarity between the experts' "
             "outputs. Metrics in %, mean over the held-out classes.", "",
             "| variant | seed | ESB w | EIR w | train evenness | train eff. | train cos | eval evenness | eval eff. "
             "| eval cos | eval unused | " + " | ".join(h for _, h in METRICS) + " | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|" + "---:|" * len(METRICS) + "---:|"]
    for r in doc["runs"]:
        t, e = r["train_last_epoch"], r["eval"]
        cells = ["–" if r["metrics"][k] is None else f"{100 * r['metrics'][k]:.1f}" for k, _ in METRICS]
        lines.append(f"| {r['variant']} | {r['seed']} | {r['moe_balance']:g} | {r['moe_repulsion']:g} | "
                     f"{t['usage_evenness']:.3f} | {t['effective_experts']:.2f} | {t['output_similarity']:+.3f} | "
                     f"{e['usage_evenness']:.3f} | {e['effective_experts']:.2f} | {e['output_similarity']:+.3f} | "
                     f"{e['unused_experts'] or '–'} | " + " | ".join(cells) + f" | {r['train_seconds']:.0f} |")
    lines += ["", "Evenness per training epoch:", "", "| variant | seed | " + " | ".join(
        f"ep {i + 1}" for i in range(s["epochs"])) + " |", "|---|---:|" + "---:|" * s["epochs"]]
    for r in doc["runs"]:
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(
            f"{v:.3f}" for v in r["train_evenness_per_epoch"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--data-size", type=int, default=256)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--balance", type=float, default=0.1, help="ESB weight of the 'on' runs")
    ap.add_argument("--repulsion", type=float, default=0.1, help="EIR weight of the 'on' runs")
    ap.add_argument("--work", default=None, help="data and checkpoints (default: a new temporary folder)")
    a = ap.parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    doc = run(a)
    out = Path(a.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), to_markdown(doc))
    print(to_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
