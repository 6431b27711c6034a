"""Normal-reference mode against zero-shot on the demo data: the fusion weight and the k = 1/4/16/full table.

    python -m wmoe.bench.reference --run data0:run0/last.safetensors --run data1:... --out bench/results/reference_cpu

Each ``--run DATA:CKPT`` is one seed: a demo set (``wmoe data demo``, with enough ``train/good`` images for the
largest k) and a checkpoint trained zero-shot on its auxiliary categories (``wmoe train --classes brick,grass,coins``).
Per seed:

1. **fusion weight** (never on the test categories): references of the *auxiliary* categories from k good images,
   their test split scored for every weight of the grid; the chosen weight maximizes the mean over seeds and
   categories of (pixel AUROC + image AUROC) / 2.
2. **held-out table**: references of the held-out categories from the first k good images (k = 1, 4, 16 and all,
   coreset above ``--max-memory`` rows), their test split scored zero-shot (w = 0), reference only (w = 1) and fused
   (the weight in the code, :data:`wmoe.reference.fusion.DEFAULT_FUSION_WEIGHT`).

With ``--experts`` every reference also trains the three-level reconstruction experts and the held-out table scores
the memory alone, memory + experts and the experts alone side by side (``--no-weight`` skips step 1 and keeps the
code's weight).

Scoring: :func:`wmoe.reference.compare.score_test_split` (the scores of :class:`wmoe.reference.ReferenceModel`, the
metrics of ``wmoe eval``).
Writes ``OUT.json`` and ``OUT.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from wmoe.atomic import atomic_write_text
from wmoe.model.checkpoint import load_model
from wmoe.data import DEMO_TEST_CLASSES, DEMO_TRAIN_CLASSES
from wmoe.reference import ReferenceConfig, find_good_images, fit_class
from wmoe.reference.compare import score_test_split
from wmoe.reference.fusion import DEFAULT_EXPERTS_WEIGHT, DEFAULT_FUSION_WEIGHT

GRID = [round(0.1 * i, 1) for i in range(11)]
#: The experts' shares of the reference map scored with --experts: the memory alone, the default mix, the experts alone.
EXPERTS_V = [0.0, DEFAULT_EXPERTS_WEIGHT, 1.0]


def run(runs: List[str], ks: Sequence[int], max_memory: int, weight_k: int, out: Path, experts: bool = False,
        weight: bool = True, threads: int = 2) -> Dict[str, Any]:
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))
    cfg = ReferenceConfig(max_memory=max_memory, experts=experts)
    load0 = os.getloadavg()
    t0 = time.time()
    doc: Dict[str, Any] = {"runs": [], "ks": list(ks), "weight_k": weight_k, "grid": GRID if weight else [],
                           "default_weight": DEFAULT_FUSION_WEIGHT, "max_memory": max_memory,
                           "experts": experts, "experts_weights": EXPERTS_V if experts else []}
    for spec in runs:
        data, ckpt = spec.split(":", 1)
        root = Path(data)
        model = load_model(ckpt).eval()
        entry: Dict[str, Any] = {"data": data, "checkpoint": ckpt, "aux": {}, "heldout": {}, "memory": {},
                                 "loadavg": [os.getloadavg()]}
        # 1. the weight, on the auxiliary categories
        for cls in (DEMO_TRAIN_CLASSES if weight else []):
            paths = find_good_images(root, [cls], weight_k)[cls]
            ref = fit_class(model, cls, paths, cfg)
            entry["aux"][cls] = score_test_split(model, root, cls, {"k": ref}, cfg, GRID)["k"]
            print(f"{data} aux {cls} done ({time.time() - t0:.0f} s)", flush=True)
        # 2. the held-out table
        for cls in DEMO_TEST_CLASSES:
            allp = find_good_images(root, [cls])[cls]
            refs = {}
            for k in ks:
                if k > len(allp):
                    continue
                refs[str(k)] = fit_class(model, cls, allp[:k], cfg)
            refs["full"] = fit_class(model, cls, allp, cfg)
            entry["memory"][cls] = {key: r.summary() for key, r in refs.items()}
            entry["heldout"][cls] = score_test_split(model, root, cls, refs, cfg, [0.0, 1.0, DEFAULT_FUSION_WEIGHT],
                                                     experts_weights=EXPERTS_V if experts else ())
            print(f"{data} held-out {cls} done ({time.time() - t0:.0f} s)", flush=True)
        entry["loadavg"].append(os.getloadavg())
        doc["runs"].append(entry)
    doc["seconds"] = round(time.time() - t0, 1)
    doc["loadavg_before"], doc["loadavg_after"] = load0, os.getloadavg()
    doc["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    doc["command"] = "python -m wmoe.bench.reference " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return finish(doc, out)


def _get(d: Dict, w: float) -> Any:
    """``d[w]`` whether the keys are floats (in memory) or strings (read back from JSON)."""
    return d[w] if w in d else d[str(float(w))]


def finish(doc: Dict[str, Any], out: Path) -> Dict[str, Any]:
    """The weight (best mean of (P + I) / 2 over seeds and auxiliary categories), then OUT.json and OUT.md."""
    if doc["grid"]:
        per_w = {w: float(np.mean([(_get(r["aux"][c], w)["pixel_auroc"] + _get(r["aux"][c], w)["image_auroc"]) / 2
                                   for r in doc["runs"] for c in r["aux"]])) for w in GRID}
        doc["weight_curve"] = per_w
        doc["best_weight"] = max(GRID, key=lambda w: (round(per_w[w], 6), -abs(w - 0.5)))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(doc, indent=1, default=str) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(doc))
    return doc


def merge(paths: Sequence[str], out: Path) -> Dict[str, Any]:
    """One table from the seeds run separately (``--merge a.json b.json``): their runs side by side."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    doc = dict(docs[0])
    doc["runs"] = [r for d in docs for r in d["runs"]]
    doc["seconds"] = round(sum(d["seconds"] for d in docs), 1)
    doc["loadavg_before"] = [d["loadavg_before"] for d in docs]
    doc["loadavg_after"] = [d["loadavg_after"] for d in docs]
    doc["command"] = " ; ".join(d["command"] for d in docs)
    return finish(doc, out)


def _mean(vals: List[float]) -> str:
    a = np.asarray(vals) * 100
    return f"{a.mean():.1f} ± {a.std():.1f}" if len(a) > 1 else f"{a.mean():.1f}"


def table(doc: Dict[str, Any]) -> List[str]:
    """The held-out table: per k, zero-shot / reference / fused, mean over classes, then mean ± std over seeds."""
    w = doc["default_weight"]
    keys = [str(k) for k in doc["ks"]] + ["full"]
    lines = ["| good images k | memory rows | zero-shot I-AUROC | reference I-AUROC | fused I-AUROC | "
             "zero-shot P-AUROC | reference P-AUROC | fused P-AUROC |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key in keys:
        cells = {}
        for name, wt in (("zs", 0.0), ("ref", 1.0), ("fused", w)):
            for metric in ("image_auroc", "pixel_auroc"):
                per_seed = [np.mean([_get(r["heldout"][c][key], wt)[metric]
                                     for c in r["heldout"]]) for r in doc["runs"] if all(
                                         key in r["heldout"][c] for c in r["heldout"])]
                cells[(name, metric)] = _mean(per_seed)
        rows = sorted({r["memory"][c][key]["memory_rows"] for r in doc["runs"] for c in r["memory"]
                       if key in r["memory"][c]})
        k_label = key if key != "full" else f"full ({doc['runs'][0]['memory'][DEMO_TEST_CLASSES[0]]['full']['k']})"
        lines.append(f"| {k_label} | {'/'.join(map(str, rows))} | " + " | ".join(
            cells[(n, m)] for m in ("image_auroc", "pixel_auroc") for n in ("zs", "ref", "fused")) + " |")
    return lines


def experts_table(doc: Dict[str, Any]) -> List[str]:
    """Memory alone vs memory + experts vs experts alone vs zero-shot, per k: the reference map alone (w = 1) and
    fused with the zero-shot map (w = the default); mean over classes, then mean ± std over seeds, with each seed's
    load average before and after its run."""
    w = doc["default_weight"]
    keys = [str(k) for k in doc["ks"]] + ["full"]
    vs = doc["experts_weights"]
    names = {0.0: "memory", 1.0: "experts"}
    cols = [("zero-shot", None, 0.0)] + [(f"{names.get(v, f'memory+experts (v={v})')}", v, wt)
                                         for wt in (1.0, w) for v in vs]
    lines = []
    for metric, label in (("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC")):
        head = ["k"] + [f"{n}{'' if v is None else (' alone' if wt == 1.0 else f', fused w={w}')}"
                        for n, v, wt in cols]
        lines += [f"{label} %:", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * len(cols)]
        for key in keys:
            cells = []
            for n, v, wt in cols:
                rkey = key if v is None else f"{key} v={float(v)}"
                per_seed = [np.mean([_get(r["heldout"][c][rkey], wt)[metric] for c in r["heldout"]])
                            for r in doc["runs"] if all(rkey in r["heldout"][c] for c in r["heldout"])]
                cells.append(_mean(per_seed))
            k_label = key if key != "full" else f"full ({doc['runs'][0]['memory'][DEMO_TEST_CLASSES[0]]['full']['k']})"
            lines.append(f"| {k_label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Load average (1, 5, 15 min) before and after each seed's run: " + "; ".join(
        f"{Path(r['data']).name}: {tuple(round(x, 1) for x in r['loadavg'][0])} -> "
        f"{tuple(round(x, 1) for x in r['loadavg'][-1])}" for r in doc["runs"] if "loadavg" in r), ""]
    return lines


def markdown(doc: Dict[str, Any]) -> str:
    w = doc["default_weight"]
    if doc.get("experts"):
        return "\n".join([
            "# Normal-reference mode: memory vs three-level experts vs zero-shot (demo data, tiny random backbone, "
            "CPU)", "", f"`{doc['command']}`", "",
            f"{len(doc['runs'])} seed(s) (demo data and zero-shot training seed), held-out categories "
            f"{', '.join(DEMO_TEST_CLASSES)}; AUROC in %, mean over the categories, then mean ± std over seeds. "
            f"One reference per k with memory and experts; scored with the experts' share v of the reference map "
            f"(R4) = 0 (memory), {DEFAULT_EXPERTS_WEIGHT} (memory+experts, the default) and 1 (experts); alone "
            f"(w = 1) and fused with the zero-shot map (w = {w}).", "", *experts_table(doc),
            f"{doc['machine']}; {doc['seconds']} s; load average before {doc['loadavg_before']}, after "
            f"{doc['loadavg_after']} (other engineers' jobs shared the 2 cores).", ""])
    lines = ["# Normal-reference mode vs zero-shot (demo data, tiny random backbone, CPU)", "",
             f"`{doc['command']}`", "",
             f"{len(doc['runs'])} seed(s) (demo data and zero-shot training seed), held-out categories "
             f"{', '.join(DEMO_TEST_CLASSES)}; AUROC in %, mean over the categories, then mean ± std over seeds. "
             f"Fused: weight w = {w} (`DEFAULT_FUSION_WEIGHT`). Zero-shot = w 0 (the same ranking as s_hat), "
             f"reference = w 1.", "", *table(doc), "",
             f"## Fusion weight (measured on the auxiliary categories {', '.join(DEMO_TRAIN_CLASSES)}, k = "
             f"{doc['weight_k']}, not on the test categories)", "",
             "| w | " + " | ".join(str(g) for g in doc["grid"]) + " |", "|---|" + "---:|" * len(doc["grid"]),
             "| (P+I)/2 AUROC % | " + " | ".join(f"{doc['weight_curve'][g] * 100:.1f}" for g in doc["grid"]) + " |",
             "", f"Best weight: {doc['best_weight']} (the code's default: {w}).", "",
             f"{doc['machine']}; {doc['seconds']} s; load average before {doc['loadavg_before']}, after "
             f"{doc['loadavg_after']} (other engineers' jobs shared the 2 cores). The tiny random backbone says the "
             "mode works end to end, not how good it is with CLIP weights.", ""]
    return "\n".join(lines)


@torch.no_grad()
def latency(ckpt: str, ref_dirs: Sequence[str], product: str, repeats: int = 20) -> List[str]:
    """Per-image latency (batch 1, torch fp32, this CPU) of the zero-shot model and of the reference mode with each
    reference in ``ref_dirs``, interleaved in one run so that the ratios are comparable under a shared load."""
    from wmoe.reference import NormalReference, ReferenceModel
    base = load_model(ckpt).eval()
    models = {"zero-shot": base}
    for d in ref_dirs:
        ref = NormalReference.load(d)
        c = ref.get(product)
        models[f"reference k={c.n_images} ({c.bank.shape[0]} rows, {c.memory_bytes / 1024:.0f} KiB)"] = \
            ReferenceModel(base, c, ref.config).eval()
    x = torch.randn(1, 3, base.image_size, base.image_size)
    times: Dict[str, List[float]] = {k: [] for k in models}
    for _ in range(2):
        for m in models.values():
            m(x)
    for _ in range(repeats):
        for k, m in models.items():
            t = time.perf_counter()
            m(x)
            times[k].append(time.perf_counter() - t)
    z = float(np.median(times["zero-shot"]))
    lines = ["| model | p50 ms / image | ratio to zero-shot |", "|---|---:|---:|"]
    for k, v in times.items():
        lines.append(f"| {k} | {1e3 * float(np.median(v)):.1f} | {float(np.median(v)) / z:.2f} |")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wmoe.bench.reference", description=__doc__.split("\n")[0])
    p.add_argument("--run", action="append", default=[], metavar="DATA:CKPT", help="one seed (repeat)")
    p.add_argument("--latency", nargs="+", metavar="ARG", help="CKPT PRODUCT REF...: per-image latency table")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON", help="combine seeds run separately")
    p.add_argument("--k", default="1,4,16", help="good-image counts besides the full set")
    p.add_argument("--weight-k", type=int, default=4)
    p.add_argument("--max-memory", type=int, default=4096)
    p.add_argument("--experts", action="store_true",
                   help="fit the three-level experts too and score memory / memory+experts / experts side by side")
    p.add_argument("--no-weight", action="store_true",
                   help="skip the fusion-weight grid on the auxiliary categories (use the code's weight)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (1 is faster for the tiny model on a CPU other jobs share)")
    p.add_argument("--out", default="bench/results/reference_cpu")
    a = p.parse_args(argv)
    if a.latency:
        ckpt, product, *dirs = a.latency
        load0 = os.getloadavg()
        lines = latency(ckpt, dirs, product)
        print("\n".join(lines) + f"\n\nload average before {load0}, after {os.getloadavg()}")
        return 0
    if not a.run and not a.merge:
        p.error("give --run DATA:CKPT (one per seed) or --merge JSON...")
    doc = (merge(a.merge, Path(a.out)) if a.merge else
           run(a.run, [int(k) for k in a.k.split(",")], a.max_memory, a.weight_k, Path(a.out), a.experts,
               not a.no_weight, a.threads))
    print(markdown(doc))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
