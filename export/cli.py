"""``wmoe export onnx|trt|aoti|triton|reference`` (also installed as ``wmoe-export``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from wmoe.cli.run import run, standalone
from wmoe.contract import (FLAVORS, HIGH_PRECISIONS, INPUT_FRAMES, INPUT_IMAGES, INPUT_KINDS, PRECISIONS,
                           QUANTIZED_PRECISIONS)
from wmoe.errors import UsageError
from wmoe.cli.types import (checked, device, existing_file, finite_float, frame_size, int_list, non_negative_int,
                            one_of, output_dir, output_file, positive_float, positive_int, unit_float)


if TYPE_CHECKING:
    from .gate import GateThresholds


def _batch_ranges(s: str):
    from .trt_build import parse_batch
    return parse_batch(s)


def _onnx(a: argparse.Namespace) -> int:
    from .onnx_export import export_onnx
    frame = a.frame_size
    if frame and a.input == INPUT_IMAGES:
        raise UsageError("--frame-size needs --input frames (the default)")
    path, meta = export_onnx(a.checkpoint, a.out, precision=a.precision, preprocess=a.input == INPUT_FRAMES,
                             frame_size=frame, opset=a.opset, exporter=a.exporter, pretrained=a.pretrained,
                             flavor=a.flavor, threshold=a.threshold, pixel_threshold=a.pixel_threshold,
                             reference=a.reference, product=a.product, fusion_weight=a.fusion_weight, with_meta=True)
    d = meta.decision
    thr = f"threshold {d.threshold:.6g}" if d.threshold is not None else "no threshold (run wmoe eval or pass --threshold)"
    print(f"wrote {path} ({a.flavor}, {a.precision}, exporter {a.exporter}, {thr})")
    return 0


def _trt(a: argparse.Namespace) -> int:
    from .trt_build import build_engine
    path = build_engine(a.onnx, a.out, precision=a.precision, batch=a.batch, workspace_gb=a.workspace_gb,
                        kernels=a.kernels, checkpoint=a.checkpoint)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def _aoti(a: argparse.Namespace) -> int:
    from .aoti import export_aoti
    path = export_aoti(a.checkpoint, a.out, device=a.device, precision=a.precision, max_batch=a.max_batch,
                       pretrained=a.pretrained)
    print(f"wrote {path} (AOTInductor package; load with torch._inductor.aoti_load_package)")
    return 0


def _triton_defaults():
    from .triton_repo import TritonOptions  # torch-free, like this module
    return TritonOptions()


def _triton(a: argparse.Namespace) -> int:
    from .triton_repo import TritonOptions, write_repository
    given = {"name": a.name, "max_batch_size": a.max_batch, "max_queue_delay_us": a.queue_delay_us,
             "instance_count": a.instances, "device": a.device, "threads": a.threads, "version": a.version,
             "pretrained": a.pretrained, "container_tag": a.container_tag, "threshold": a.threshold,
             "pixel_threshold": a.pixel_threshold,
             "backends": tuple(a.backend) if a.backend else None, "frame_size": a.frame_size,
             "preferred_batch_sizes": tuple(a.preferred_batch) if a.preferred_batch else None}
    opts = TritonOptions(overwrite=a.overwrite, warmup=not a.no_warmup,
                         **{k: v for k, v in given.items() if v is not None})
    out = write_repository(a.source, a.out, opts)
    models = ", ".join(sorted(p.parent.name for p in out.glob("*/config.pbtxt")))
    print(f"wrote Triton model repository {out} (models: {models}); serve it as {out / 'README.md'} says")
    return 0


def gate_options(p: argparse.ArgumentParser) -> None:
    """The accuracy gate's options: one group, for every command that gates (wmoe export quantize, cpu-precision,
    wmoe bench); the defaults are :class:`~wmoe.export.gate.GateThresholds`'s, in the units users read."""
    from .gate import GateThresholds
    d = GateThresholds()
    g = p.add_argument_group("accuracy gate (the candidate against the fp32 model)")
    g.add_argument("--max-auroc-drop", type=finite_float, default=round(d.max_image_auroc_drop * 100, 6),
                   metavar="POINTS", help="largest image AUROC drop allowed, in AUROC points")
    g.add_argument("--min-spearman", type=finite_float, default=d.min_spearman,
                   help="smallest Spearman correlation of the image scores")
    g.add_argument("--min-verdict-agreement", type=finite_float, default=round(d.min_verdict_agreement * 100, 6),
                   metavar="PERCENT", help="smallest share of images judged alike at the model's stored threshold")


def gate_thresholds(a: argparse.Namespace) -> "GateThresholds":
    """The :func:`gate_options` of ``a`` as the gate's thresholds (fractions)."""
    from .gate import GateThresholds
    return GateThresholds(a.max_auroc_drop / 100.0, a.min_spearman, a.min_verdict_agreement / 100.0)


def _quantize(a: argparse.Namespace) -> int:
    from .quantize import QuantizeConfig, quantize_onnx, report_path
    # one group per --keep: the group names themselves hold commas ("head (maps, scores)")
    given = [g.strip() for g in (a.keep or ["auto"])]
    special = [g for g in given if g in ("auto", "none")]
    if special and len(given) > 1:
        raise UsageError(f"--keep {special[0]} cannot be combined with other --keep values")
    if any(not g for g in given):
        raise UsageError("--keep: empty layer group name")
    keep = special[0] if special else given
    cfg = QuantizeConfig(precision=a.precision, max_images=a.max_images, holdout=a.holdout, method=a.method,
                         high_precision=a.high_precision, keep=keep, calibrate_per_node=a.calibrate_per_node,
                         gate_images=a.gate_images or None, seed=a.seed, target=a.target,
                         sensitivity_images=a.sensitivity_images, select_budget_s=a.select_budget)
    r = quantize_onnx(a.onnx, a.calib, a.out, cfg, gate_data=a.gate_data, allow_gate_failure=a.allow_gate_failure,
                      thresholds=gate_thresholds(a), recalibrate=a.recalibrate)
    print(f"wrote {a.out} ({r.precision}, {r.quantized_nodes} quantized layers; kept in {r.high_precision}: "
          f"{', '.join(r.kept_groups) or 'none'}) and {report_path(a.out)}")
    print(f"engine: wmoe export trt {a.out} --out {Path(a.out).with_suffix('.engine')} --precision {r.precision}")
    return 0


def _cpu_precision(a: argparse.Namespace) -> int:
    from .cpu_precision import choose_cpu_precision
    choose_cpu_precision(a.onnx, qdq=a.qdq, gate_data=a.gate_data, calib=a.calib, gate_images=a.gate_images or None,
                         thresholds=gate_thresholds(a), batch=a.batch,
                         repeats=a.repeats, seed=a.seed, write=not a.dry_run)
    return 0


def _reference(a: argparse.Namespace) -> int:
    from .parity import save_reference
    ins, outs = save_reference(a.onnx, a.out_dir, batch=a.batch, seed=a.seed)
    print(f"wrote {ins} and {outs}; on the device: polygraphy run MODEL.engine --trt --load-inputs {ins.name} "
          f"--load-outputs {outs.name} --atol 1e-3 --rtol 1e-3")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export to ONNX / TensorRT")
    sub = p.add_subparsers(dest="export_command", required=True)
    o = sub.add_parser("onnx", help="checkpoint -> ONNX (scores, maps, text_scores)")
    o.add_argument("checkpoint", type=existing_file, help="a checkpoint from wmoe train (.safetensors)")
    o.add_argument("--out", required=True, type=output_file, help="the ONNX file to write")
    o.add_argument("--precision", type=one_of(HIGH_PRECISIONS[::-1], "precision"), default="fp32",
                   help=f"{' or '.join(HIGH_PRECISIONS[::-1])} weights and activations")
    o.add_argument("--flavor", type=one_of(list(FLAVORS), "flavor"), default=FLAVORS[0],
                   help="portable: standard ONNX ops everywhere; plugin: the Triton kernels as TensorRT plugins")
    o.add_argument("--input", type=one_of(sorted(INPUT_KINDS), "input"), default=INPUT_FRAMES,
                   help="frames: uint8 (N,H,W,3) RGB with resize + normalization in the graph, so a runtime only "
                        "stacks frames; images: normalized float (N,3,S,S)")
    o.add_argument("--frame-size", default=None, type=frame_size,
                   help="HxW of the camera frames for --input frames (default: the model's SxS; the runtime "
                        "resizes other frames to it)")
    o.add_argument("--opset", type=positive_int, default=18, help="ONNX opset version")
    o.add_argument("--exporter", type=one_of(["dynamo"], "exporter"), default="dynamo",
                   help="torch.onnx dynamo exporter (the TorchScript one gives a wrong graph for this model)")
    o.add_argument("--pretrained", default=None, type=existing_file,
                   help="local open_clip/OpenAI weights file of the backbone")
    o.add_argument("--threshold", type=finite_float, default=None,
                   help="image threshold stored in the model (default: CHECKPOINT.threshold.json from wmoe eval)")
    o.add_argument("--pixel-threshold", type=finite_float, default=None,
                   help="map threshold for the defect mask stored in the model (default: none)")
    o.add_argument("--reference", default=None, metavar="REF",
                   help="normal-reference mode: a wmoe fit-normal folder; its product's memory goes into the graph")
    o.add_argument("--product", default=None, help="with --reference: which product (default: its only one)")
    o.add_argument("--fusion-weight", type=unit_float, default=None, metavar="W",
                   help="with --reference: weight of the reference map (default: the reference's)")
    o.set_defaults(func=_onnx)
    t = sub.add_parser("trt", help="ONNX -> TensorRT engine (+ JSON sidecar)")
    t.add_argument("onnx", type=existing_file, help="an ONNX from wmoe export onnx (or quantize)")
    t.add_argument("--out", required=True, type=output_file, help="the engine file to write (+ its .json sidecar)")
    t.add_argument("--precision", type=one_of(PRECISIONS, "precision"),
                   default="fp16", help="int8/fp8: a Q/DQ ONNX from wmoe export quantize (fp8 needs compute "
                   "capability >= 8.9)")
    t.add_argument("--batch", default="1:8:32", type=checked(_batch_ranges, "batch", keep_text=True),
                   help="MIN:OPT:MAX, several comma-separated")
    t.add_argument("--workspace-gb", type=positive_float, default=4.0, help="builder workspace limit in GiB")
    t.add_argument("--kernels", default=None, help="plugin flavor: AOT kernel dir (python -m wmoe.kernels.aot); "
                   "(default: compiled for this GPU)")
    t.add_argument("--checkpoint", default=None, help="plugin flavor on TensorRT < 10.9: re-export the portable "
                   "flavor from this checkpoint and build that")
    t.set_defaults(func=_trt)
    ao = sub.add_parser("aoti", help="checkpoint -> AOTInductor .pt2 package (Triton kernels inside on CUDA)")
    ao.add_argument("checkpoint", type=existing_file, help="a checkpoint from wmoe train (.safetensors)")
    ao.add_argument("--out", required=True, type=output_file, help="the .pt2 package to write")
    ao.add_argument("--device", default=None, type=device, help="cuda or cpu (default: cuda if available)")
    ao.add_argument("--precision", type=one_of(HIGH_PRECISIONS[::-1], "precision"), default="fp32",
                    help="dtype of the compiled model")
    ao.add_argument("--max-batch", type=positive_int, default=64, help="largest batch the package accepts")
    ao.add_argument("--pretrained", default=None, type=existing_file,
                    help="local open_clip/OpenAI weights file of the backbone")
    ao.set_defaults(func=_aoti)
    tr = sub.add_parser("triton", help="checkpoint / ONNX / engine -> Triton Inference Server model repository "
                        "(defaults: wmoe.export.triton_repo.TritonOptions)")
    tr.add_argument("source", help="a checkpoint, an ONNX with uint8 frame input, or an engine (+ its .json)")
    tr.add_argument("--out", required=True, type=output_dir, help="the model repository folder (created, or a version is added)")
    d = _triton_defaults()
    tr.add_argument("--name", default=d.name, help="model name (the Python-backend model is NAME_python)")
    tr.add_argument("--backend", action="append", choices=["onnxruntime", "tensorrt", "python"],
                    help="repeatable (default: onnxruntime for an ONNX or a checkpoint, tensorrt for an engine)")
    tr.add_argument("--max-batch", type=positive_int, default=d.max_batch_size,
                    help="max_batch_size: frames per batch the server forms")
    tr.add_argument("--preferred-batch", type=int_list, help="comma-separated preferred batch sizes, e.g. 4,8")
    tr.add_argument("--queue-delay-us", type=non_negative_int, default=d.max_queue_delay_us,
                    help="max time a request waits for a batch, in microseconds")
    tr.add_argument("--instances", type=positive_int, default=d.instance_count, help="model instances per device")
    tr.add_argument("--device", choices=["gpu", "cpu"], default=d.device, help="instance_group kind")
    tr.add_argument("--threads", type=positive_int, help="python backend: ONNX Runtime threads per instance")
    tr.add_argument("--version", type=positive_int, default=d.version, help="version folder to write")
    tr.add_argument("--overwrite", action="store_true", help="replace that version folder if it exists")
    tr.add_argument("--no-warmup", action="store_true", help="no model_warmup (zero frames at batch 1 and max at load)")
    tr.add_argument("--frame-size", type=frame_size, help="checkpoint source: camera frame HxW (default: the model's SxS)")
    tr.add_argument("--pretrained", type=existing_file, help="checkpoint source: backbone weights file")
    tr.add_argument("--threshold", type=finite_float, help="checkpoint source: image threshold to store (default: the "
                    "decision stored beside the checkpoint)")
    tr.add_argument("--pixel-threshold", type=finite_float, help="checkpoint source: pixel threshold for defect masks")
    tr.add_argument("--container-tag", default=d.container_tag, help="NGC tritonserver release named in the README")
    tr.set_defaults(func=_triton)
    q = sub.add_parser("quantize", help="fp32 ONNX -> Q/DQ ONNX (int8 / fp8) calibrated on your normal images, "
                       "with an accuracy gate")
    q.add_argument("onnx", type=existing_file, help="a portable fp32 export (wmoe export onnx)")
    q.add_argument("--calib", required=True, help="a folder of normal images, or a meta.json (its good images)")
    q.add_argument("--out", required=True, type=output_file, help="e.g. model.qdq.onnx (report: model.qdq.quant.json)")
    q.add_argument("--precision", type=one_of(QUANTIZED_PRECISIONS, "precision"), default="int8",
                   help="int8: Jetson Orin / Ampere and later; fp8: Hopper / Ada")
    q.add_argument("--max-images", type=positive_int, default=256, help="normal images drawn from --calib")
    q.add_argument("--holdout", type=non_negative_int, default=16, help="of those, kept out of calibration to "
                   "measure which layers stay in high precision (at most half the images). --keep auto and a "
                   "gate without --gate-data need at least 11 for --min-spearman 0.99: over fewer "
                   "images one swap of two near-tied scores fails the Spearman alone (over 2 it is always +-1)")
    q.add_argument("--method", default=None, type=one_of(["entropy", "max", "minmax", "percentile", "distribution"],
                                                         "calibration method"),
                   help="calibration: entropy, max, minmax, percentile, distribution (default: entropy for int8, "
                        "max for fp8)")
    q.add_argument("--high-precision", type=one_of(HIGH_PRECISIONS, "precision"), default="fp16",
                   help="dtype of the layers left unquantized (fp16 for TensorRT; fp32 to run on a CPU)")
    q.add_argument("--keep", action="append", default=None, metavar="GROUP",
                   help="auto (measured), none, or a layer group to keep in high precision, repeated for several: "
                   "--keep 'head (maps, scores)' --keep 'image blocks 0-3' (names as in the report; an unknown name "
                   "lists them) (default: auto)")
    q.add_argument("--target", type=finite_float, default=None, help="held-out score Spearman, score Pearson and map "
                   "Pearson the quantized model must keep; higher keeps more layers (default: halfway between "
                   "--min-spearman and 1, i.e. 0.995)")
    q.add_argument("--sensitivity-images", type=non_negative_int, default=0, help="--keep auto: held-out images "
                   "each group's sensitivity is measured on (at least 4; 0: all). The held-out target is always "
                   "checked on all of them")
    q.add_argument("--select-budget", type=positive_float, default=None, metavar="SECONDS",
                   help="--keep auto: seconds the layer selection may take; after its first run it measures "
                   "sensitivities on fewer held-out images (at least 4) to fit, and says so (default: no limit)")
    q.add_argument("--gate-data", default=None, help="labeled data root (meta.json) for the accuracy gate; "
                   "without it the gate checks held-out normal images only (no AUROC)")
    q.add_argument("--gate-images", type=non_negative_int, default=200,
                   help="labeled images the gate runs on; 0: all")
    gate_options(q)
    q.add_argument("--recalibrate", default=None, metavar="DATA",
                   help="recalibrate the quantized model's decision the way the fp32 one was set (good images or a "
                        "data root, as wmoe calibrate takes); without it the fp32 threshold is kept, marked as "
                        "inherited, and verdict agreement at it is gated")
    q.add_argument("--allow-gate-failure", action="store_true", help="write the file even when the gate fails "
                   "(with a loud warning; the report records the failure)")
    q.add_argument("--calibrate-per-node", action="store_true", help="Model Optimizer's node-by-node calibration "
                   "(less memory, much slower)")
    q.add_argument("--seed", type=non_negative_int, default=0, help="random seed: image draw and holdout")
    q.set_defaults(func=_quantize)
    cp = sub.add_parser("cpu-precision", help="measure f32 / bf16 / int8 under OpenVINO on your images with the "
                        "accuracy gate and store the fastest that passes in the model (what the CPU runtime then runs)")
    cp.add_argument("onnx", type=existing_file, help="the portable fp32 export (wmoe export onnx)")
    cp.add_argument("--qdq", type=existing_file, default=None, help="its int8 Q/DQ model (wmoe export quantize "
                    "--high-precision fp32), kept beside it: the int8 candidate")
    cp.add_argument("--gate-data", default=None, help="labeled data root (meta.json): image AUROC change, score "
                    "Spearman and verdicts at the stored threshold")
    cp.add_argument("--calib", default=None, help="or a folder of normal images (Spearman and verdicts only)")
    cp.add_argument("--gate-images", type=non_negative_int, default=200, help="images the gate runs on; 0: all")
    cp.add_argument("--batch", type=positive_int, default=1, help="the batch the line runs (timed)")
    cp.add_argument("--repeats", type=positive_int, default=5, help="timed runs per precision (median)")
    gate_options(cp)
    cp.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the image draw")
    cp.add_argument("--dry-run", action="store_true", help="measure and print, store nothing")
    cp.set_defaults(func=_cpu_precision)
    r = sub.add_parser("reference", help="portable ONNX -> reference inputs/outputs (Polygraphy JSON) for "
                       "checking an engine on a device without ONNX Runtime GPU")
    r.add_argument("onnx", help="the portable ONNX the engine was built from")
    r.add_argument("--out-dir", required=True, type=output_dir, help="folder for the inputs and outputs JSON")
    r.add_argument("--batch", type=positive_int, default=1, help="frames per reference input")
    r.add_argument("--seed", type=non_negative_int, default=0, help="random seed of the inputs")
    r.set_defaults(func=_reference)


def main(argv: Optional[List[str]] = None) -> int:
    return run(standalone(register, "export", "wmoe-export"), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
