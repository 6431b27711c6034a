"""The ``wmoe`` command line: data, train, eval, predict, demo, app (and export / bench when installed).

Every option is validated while parsing (one line naming the option, exit status 2, before any work). Errors about
the user's files (bad data, checkpoints, images) print one line and exit with status 2; ``--debug`` (before or
after the subcommand) shows the traceback instead. The conventions live in :mod:`wmoe.cli.run` and the validators
in :mod:`wmoe.cli.types`, shared with ``wmoe-export`` and ``wmoe-bench``.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .. import __version__
from .run import Parser, finish, run
from .types import (device, existing_file, finite_float, non_negative_float, non_negative_int, one_of, output_dir,
                    output_file, patch_size_of, positive_float, positive_int, unit_float)
from ..errors import UsageError
from ..reference.fusion import DEFAULT_EXPERTS_WEIGHT, DEFAULT_FUSION_WEIGHT
from ..runtime.registry import provider_help
from ..runtime.runtime import RUNTIME_PROVIDERS


def _formats() -> List[str]:
    from ..data.meta import list_formats
    return list_formats()


def _classes(s: Optional[str]) -> Optional[List[str]]:
    return [c for c in s.split(",") if c] if s else None


def _cmd_data_meta(a: argparse.Namespace) -> int:
    from ..data import write_meta
    path = write_meta(a.root, a.format, out=a.out)
    print(f"wrote {path}")
    return 0


def _cmd_data_demo(a: argparse.Namespace) -> int:
    from ..data import make_demo_dataset
    root = make_demo_dataset(a.out, seed=a.seed, image_size=a.size)
    print(f"wrote the demo data set to {root} (meta.json included)")
    return 0


def _model_cfg(a: argparse.Namespace):
    from ..model.config import ModelConfig
    moe = {"moe_balance": a.moe_balance, "moe_repulsion": a.moe_repulsion}  # AnomalyMoE's ESB / EIR weights
    if a.tiny:
        for opt, val in (("--backbone", a.backbone), ("--pretrained", a.pretrained)):
            if val:
                raise UsageError(f"--tiny and {opt} conflict: --tiny trains the tiny random-init backbone; "
                                 f"drop --tiny to use {opt} {val}")
    backbone = a.backbone or ModelConfig.backbone
    patch = None if a.tiny else patch_size_of(backbone)  # the tiny backbone checks its own when it is built
    if a.image_size and patch and a.image_size % patch:
        raise UsageError(f"--image-size {a.image_size} is not a multiple of {backbone}'s patch size {patch} "
                         f"(e.g. {patch * max(1, round(a.image_size / patch))})")
    if a.tiny:
        return ModelConfig.tiny(image_size=a.image_size or 336, **moe)
    kw = {"image_size": a.image_size, **moe} if a.image_size else moe
    if a.backbone:
        kw["backbone"] = a.backbone
    return ModelConfig(**kw)


def _cmd_train(a: argparse.Namespace) -> int:
    from ..training.train import TrainConfig, train
    cfg = TrainConfig(a.data, out_dir=a.out, meta=a.meta, classes=_classes(a.classes), epochs=a.epochs,
                      batch_size=a.batch_size, lr=a.lr, seed=a.seed, num_workers=a.workers, device=a.device,
                      max_steps=a.max_steps, resume=a.resume, overwrite=a.overwrite,
                      amp=False if a.no_amp else None, run_config=getattr(a, "_resolved", None))
    path = train(_model_cfg(a), cfg, pretrained=a.pretrained)
    print(f"checkpoint: {path}")
    return 0


def _cmd_eval(a: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate
    if a.write_threshold and a.reference:  # never silently not written: reference scores are in other units
        raise UsageError("--write-threshold and --reference conflict: the normal-reference mode's scores are in other "
                         "units than the checkpoint's decision; calibrate the reference-mode ONNX with wmoe calibrate")
    table = evaluate(a.checkpoint, a.data, meta=a.meta, classes=_classes(a.classes), batch_size=a.batch_size,
                     out_dir=a.out, pro=not a.no_pro, sigma=a.sigma, pretrained=a.pretrained, device=a.device,
                     store_threshold=a.write_threshold, reference=a.reference,
                     fusion_weight=a.fusion_weight)
    print(table.to_markdown())
    print(f"wrote {a.out}/metrics.md, .csv, .json and scores.csv (per image)")
    return 0


def _open_unit_float(s: str) -> float:
    v = finite_float(s)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {s}")
    return v


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from ..evaluation.calibrate import calibrate
    from ..evaluation.calibration import CalibrationConfig, summary_lines
    cfg = CalibrationConfig(method=a.method, false_reject_rate=a.false_reject_rate, defect_recall=a.defect_recall,
                            pixel_rate=a.pixel_rate, pixel=not a.no_pixel, per_class=not a.no_per_class)
    decision, written = calibrate(a.model, a.data, cfg, split=a.split, classes=_classes(a.classes),
                                  classes_from_folders=a.classes_from_folders, write=not a.dry_run, out=a.out,
                                  scores_csv=a.scores_csv, batch_size=a.batch_size, provider=a.provider,
                                  allow_cpu_fallback=a.allow_cpu_fallback, device=a.device, pretrained=a.pretrained)
    for line in summary_lines(decision):
        print(line)
    if a.scores_csv:
        print(f"wrote {a.scores_csv}")
    print(f"wrote the decision to {written}" if written else "dry run: the stored decision is unchanged")
    return 0


def _cmd_fit_normal(a: argparse.Namespace) -> int:
    from ..reference import ReferenceConfig, fit_normal, memory_table
    cfg = ReferenceConfig(neighbourhood=a.neighbourhood, max_memory=a.max_memory, fusion_weight=a.fusion_weight,
                          experts=a.experts, experts_weight=a.experts_weight)
    ref = fit_normal(a.checkpoint, a.good_dir, a.out, cfg, classes=_classes(a.classes), k=a.k,
                     batch_size=a.batch_size, device=a.device, pretrained=a.pretrained)
    print(memory_table(ref))
    experts = f", experts weight {cfg.experts_weight}" if cfg.experts else ""
    print(f"wrote {a.out}/reference.json ({len(ref.classes)} product(s), fusion weight {cfg.fusion_weight}{experts})")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    from ..contract import verdict_label
    from ..predict import predict
    doc = predict(a.checkpoint, a.images, a.out, threshold=a.threshold, pretrained=a.pretrained, device=a.device,
                  batch_size=a.batch_size, overlays=not a.no_overlays, pixel_threshold=a.pixel_threshold,
                  class_name=a.class_name)
    for r in doc["results"]:
        verdict = f"  {verdict_label(r['verdict'])}" if "anomalous" in r else ""
        print(f"{r['score']:.4f}{verdict}  {r['path']}")
    for e in doc["errors"]:
        print(f"error: {e['error']}", file=sys.stderr)  # already printable (predict escapes file names)
    print(f"wrote {a.out}/scores.csv, scores.json")
    return 1 if doc["errors"] else 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo
    res = run_demo(DemoConfig(out=a.out, pretrained=a.pretrained, epochs=a.epochs, lr=a.lr, seed=a.seed,
                              device=a.device, max_steps=a.max_steps))
    import shlex
    from pathlib import Path
    prog = sys.argv[0] if Path(sys.argv[0]).name == "wmoe" else "wmoe"  # make demo runs .venv/bin/wmoe
    app = [prog, "app", res["checkpoint"], "--demo", res["data"]] + (["--pretrained", a.pretrained] if a.pretrained
                                                                      else [])
    print(f"see it in a browser: {shlex.join(app)}   (then open http://127.0.0.1:8765/)")
    return 0


def _cmd_app(a: argparse.Namespace) -> int:
    from ..app.demo_set import DemoSet
    from ..app.scoring import open_scorer
    from ..app.server import serve
    from ..app.service import AppConfig, AppService
    demo = DemoSet(a.demo) if a.demo else None  # checked before the model loads: a typo fails fast
    scorer = open_scorer(a.model, provider=a.provider, threads=a.threads, pretrained=a.pretrained, device=a.device)
    cfg = AppConfig(max_upload_bytes=int(a.max_upload_mb * 1e6))
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"wmoe app: warning: serving on {a.host}: anyone who reaches it can use the model (no login)",
              file=sys.stderr)
    return serve(AppService(scorer, demo, cfg), a.host, a.port, log_requests=a.log,
                 announce=lambda line: print(line, flush=True))


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="wmoe", description="WMoE-CLIP zero-shot anomaly detection")
    p.add_argument("--version", action="version", version=f"wmoe {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="data set tools").add_subparsers(dest="data_command", required=True)
    m = d.add_parser("meta", help="write ROOT/meta.json for a data set layout")
    m.add_argument("root", help="the data set's root folder")
    m.add_argument("--format", required=True, type=one_of(_formats, "format"),
                   help="mvtec, visa, folder, btad, ... (see docs/data.md)")
    m.add_argument("--out", default=None, type=output_file, help="where to write meta.json (default: ROOT/meta.json)")
    m.set_defaults(func=_cmd_data_meta)
    dd = d.add_parser("demo", help="write the embedded demo data set")
    dd.add_argument("out", type=output_dir, help="folder to write the data set into")
    dd.add_argument("--seed", type=int, default=0, help="random seed of the generated images")
    dd.add_argument("--size", type=positive_int, default=256, help="image side in pixels")
    dd.set_defaults(func=_cmd_data_demo)

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--pretrained", default=None, type=existing_file,
                        help="local open_clip/OpenAI weights file of the backbone")
        sp.add_argument("--device", default=None, type=device, help="cuda, cuda:1, cpu (default: cuda if available)")

    def data_args(sp: argparse.ArgumentParser) -> None:  # which part of DATA a command reads
        sp.add_argument("--meta", default=None, type=existing_file,
                        help="the data set's meta.json (default: DATA/meta.json)")
        sp.add_argument("--classes", default=None, help="comma-separated subset of the classes (default: all)")

    t = sub.add_parser("train", help="train on an auxiliary data set (paper defaults)")
    t.add_argument("data", help="data root with meta.json")
    t.add_argument("--out", default="runs/wmoe", type=output_dir,
                   help="the run folder: checkpoints, expert usage, the resolved config.yaml")
    data_args(t)
    t.add_argument("--epochs", type=positive_int, default=20, help="passes over the training split")
    t.add_argument("--batch-size", type=positive_int, default=32, help="images per step")
    t.add_argument("--lr", type=positive_float, default=2e-4, help="Adam learning rate")
    t.add_argument("--seed", type=int, default=111, help="random seed: initialization and data order")
    t.add_argument("--workers", type=non_negative_int, default=0,
                   help="data loader worker processes; 0: load in the main process")
    t.add_argument("--max-steps", type=positive_int, default=None, help="stop after N steps (default: all epochs)")
    t.add_argument("--resume", action="store_true", help="continue the run in OUT from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in OUT (refused otherwise)")
    t.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA too (mixed precision otherwise)")
    t.add_argument("--tiny", action="store_true", help="the tiny random-init backbone (tests, demos)")
    t.add_argument("--backbone", default=None, help="open_clip model name (default: ViT-L-14-336-quickgelu)")
    t.add_argument("--image-size", type=positive_int, default=None,
                   help="a multiple of the patch size: 336 or 518 (default: 518; 336 with --tiny)")
    t.add_argument("--moe-balance", type=non_negative_float, default=0.0, metavar="W",
                   help="weight of SA-MoE expert selection balancing (ESB; 0: off, the paper)")
    t.add_argument("--moe-repulsion", type=non_negative_float, default=0.0, metavar="W",
                   help="weight of SA-MoE expert information repulsion (EIR; 0: off, the paper)")
    model_args(t)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="zero-shot evaluation: per-class metrics table")
    e.add_argument("checkpoint", help="a checkpoint from wmoe train (.safetensors)")
    e.add_argument("data", help="data root with meta.json (its test split)")
    e.add_argument("--out", default="eval_out", type=output_dir,
                   help="folder for metrics.md, .csv, .json and scores.csv (per image)")
    data_args(e)
    e.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    e.add_argument("--sigma", type=non_negative_float, default=4.0, help="Gaussian smoothing of the maps")
    e.add_argument("--no-pro", action="store_true", help="skip the PRO metrics")
    e.add_argument("--write-threshold", action="store_true",
                   help="replace the stored decision (CKPT.threshold.json) by this set's F1-max threshold; without "
                        "it evaluation only reports (wmoe calibrate sets the decision)")
    e.add_argument("--no-store-threshold", action="store_true", help=argparse.SUPPRESS)  # the old default's opt-out
    e.add_argument("--reference", default=None, metavar="REF",
                   help="evaluate the normal-reference mode with this wmoe fit-normal folder (zero-shot without it)")
    e.add_argument("--fusion-weight", type=unit_float, default=None, metavar="W",
                   help="with --reference: weight of the reference map in the fused map (default: the reference's)")
    model_args(e)
    e.set_defaults(func=_cmd_eval)

    c = sub.add_parser("calibrate", help="set the decision (thresholds) from good images, store it with the model",
                       description="Score images with MODEL (a checkpoint, or an exported ONNX / engine: the "
                       "torch-free runtime) and set its image threshold at a target false-reject rate on good "
                       "images (finite-sample quantile; see docs/calibration.md), its pixel threshold, and with "
                       "labelled images the F1-max and defect-recall operating points; per class when the images "
                       "have classes. Stored where the model keeps its decision (CKPT.threshold.json, the ONNX "
                       "metadata, the engine sidecar).")
    c.add_argument("model", type=existing_file, help="checkpoint (.safetensors), model.onnx or model.engine")
    c.add_argument("data", help="folder of good images, or a data root / meta.json (labels and classes from it)")
    c.add_argument("--method", default="false-reject-rate",
                   type=one_of(["false-reject-rate", "f1-max", "defect-recall"], "method"),
                   help="which threshold becomes the decision (f1-max, defect-recall: labelled images)")
    c.add_argument("--false-reject-rate", type=_open_unit_float, default=0.01, metavar="RATE",
                   help="target fraction of good parts called anomalous; needs >= 1/RATE - 1 good images")
    c.add_argument("--defect-recall", type=_open_unit_float, default=0.95, metavar="R",
                   help="target fraction of defective parts caught (labelled images)")
    c.add_argument("--pixel-rate", type=_open_unit_float, default=None, metavar="RATE",
                   help="target fraction of good parts showing any defect pixel (default: --false-reject-rate)")
    c.add_argument("--no-pixel", action="store_true", help="leave the pixel threshold out")
    c.add_argument("--no-per-class", action="store_true", help="one threshold for all classes")
    c.add_argument("--split", default="all", type=one_of(["all", "train", "test"], "split"),
                   help="which split of a meta.json")
    c.add_argument("--classes", default=None, help="comma-separated subset of the classes")
    c.add_argument("--classes-from-folders", action="store_true",
                   help="a folder of good images: its first-level sub-folders name the classes")
    c.add_argument("--out", default=None, type=output_file,
                   help="write the decision here instead (a JSON for a checkpoint, a copy of an ONNX)")
    c.add_argument("--dry-run", action="store_true", help="print the decision, store nothing")
    c.add_argument("--scores-csv", default=None, type=output_file, help="per-image scores as CSV")
    c.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    c.add_argument("--provider", default="cpu", type=one_of(RUNTIME_PROVIDERS, "provider"),
                   help=f"for an exported model: {provider_help()}")
    c.add_argument("--allow-cpu-fallback", action="store_true",
                   help="run on the CPU when --provider cannot be had (default: an error)")
    model_args(c)
    c.set_defaults(func=_cmd_calibrate)

    fn = sub.add_parser("fit-normal", help="build a normal reference (memory of good patches) per product")
    fn.add_argument("checkpoint", type=existing_file, help="a checkpoint from wmoe train (.safetensors)")
    fn.add_argument("good_dir", help="good images: a folder of images, a folder of product folders, or a data root "
                                     "with meta.json (its train split)")
    fn.add_argument("--out", required=True, type=output_dir, help="the reference folder (reference.json and memories)")
    fn.add_argument("--classes", default=None, help="comma-separated products (default: all found)")
    fn.add_argument("--k", type=positive_int, default=None, help="use the first K good images per product (default: all)")
    fn.add_argument("--max-memory", type=positive_int, default=4096,
                    help="memory rows per product; a greedy coreset above it")
    fn.add_argument("--neighbourhood", type=positive_int, default=3, help="local averaging window (odd)")
    fn.add_argument("--fusion-weight", type=unit_float, default=DEFAULT_FUSION_WEIGHT, metavar="W",
                    help="weight of the reference map in the fused map (measured)")
    fn.add_argument("--experts", action="store_true",
                    help="also train the three-level reconstruction experts (patch, component, global; ESB/EIR) "
                         "on the good images and mix their map into the reference map")
    fn.add_argument("--experts-weight", type=unit_float, default=DEFAULT_EXPERTS_WEIGHT, metavar="V",
                    help="with --experts: their share of the reference map")
    fn.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    model_args(fn)
    fn.set_defaults(func=_cmd_fit_normal)

    pr = sub.add_parser("predict", help="score images; CSV/JSON and heatmap overlays")
    pr.add_argument("checkpoint", help="a checkpoint from wmoe train (.safetensors)")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--out", default="predictions", type=output_dir,
                    help="folder for scores.csv, scores.json and the overlays")
    pr.add_argument("--threshold", type=finite_float, default=None,
                    help="decision threshold on the score (default: the one stored by wmoe eval)")
    pr.add_argument("--pixel-threshold", type=finite_float, default=None,
                    help="draw the predicted defect contour where the map >= this (default: the stored one)")
    pr.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                    help="the product class whose stored thresholds judge the images (a per-class decision)")
    pr.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    pr.add_argument("--no-overlays", action="store_true", help="write scores only, no overlay pictures")
    model_args(pr)
    pr.set_defaults(func=_cmd_predict)

    de = sub.add_parser("demo", help="the end-to-end demo: data, training, evaluation, predictions, report")
    de.add_argument("--out", default="demo_out", type=output_dir,
                    help="folder for the data, the run, evaluation, predictions and report.md")
    de.add_argument("--epochs", type=positive_int, default=60, help="training passes over the demo data")
    de.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    de.add_argument("--seed", type=int, default=0, help="random seed: data, initialization and data order")
    de.add_argument("--max-steps", type=positive_int, default=None,
                    help="stop training after N steps (default: all epochs)")
    model_args(de)
    de.set_defaults(func=_cmd_demo)

    ap = sub.add_parser("app", help="a local web page: drop images, see overlay, verdict, defect area, latency")
    ap.add_argument("model", type=existing_file,
                    help="a checkpoint (torch) or an exported .onnx / .engine (torch-free: pip install \"wmoe[app]\")")
    ap.add_argument("--demo", default=None, metavar="DIR",
                    help="a data root with meta.json (wmoe data demo DIR) whose test images the page offers")
    ap.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1: only this machine)")
    ap.add_argument("--port", type=non_negative_int, default=8765, help="0 picks a free port")
    ap.add_argument("--provider", default="cpu", type=one_of(RUNTIME_PROVIDERS, "provider"),
                    help=f"for an .onnx model: {provider_help()}")
    ap.add_argument("--threads", type=non_negative_int, default=0, help="ONNX Runtime threads; 0: as many as it picks")
    ap.add_argument("--max-upload-mb", type=positive_float, default=32.0, help="largest file accepted (MB)")
    ap.add_argument("--log", action="store_true", help="print one line per request")
    model_args(ap)
    ap.set_defaults(func=_cmd_app)

    for mod in ("wmoe.export.cli", "wmoe.bench.cli"):
        try:
            module = __import__(mod, fromlist=["register"])
        except ImportError:
            continue
        module.register(sub)
    return finish(p)


def main(argv: Optional[List[str]] = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
