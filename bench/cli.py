"""``wmoe bench`` (also installed as ``wmoe-bench``): parity and throughput of every available backend."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from wmoe.cli.run import run, standalone
from wmoe.cli.types import existing_file, int_list, list_of, non_negative_int, output_dir, positive_int
from wmoe.export.cli import gate_options, gate_thresholds

from .backend_names import ALL_BACKENDS


def _run(a: argparse.Namespace) -> int:
    from .harness import BenchConfig, run_bench
    auto = a.backends == ["auto"]
    backends = list(ALL_BACKENDS) if auto else a.backends
    # named explicitly, torch.compile runs on the CPU too (with "auto" it is skipped there, with the reason)
    doc = run_bench(BenchConfig(a.checkpoint, out=a.out, backends=backends, batches=a.batch,
                                sizes=a.sizes, warmup=a.warmup, repeats=a.repeats,
                                onnx=a.onnx, engine=a.engine, aoti=a.aoti, parity_data=a.parity_data,
                                pretrained=a.pretrained, allow_compile=not auto, qdq=a.qdq,
                                parity_images=a.parity_images or None,
                                gate=gate_thresholds(a),
                                reference=a.reference, product=a.product))
    for k, v in doc["skipped"].items():
        print(f"skipped {k}: {v}")
    for k, v in doc.get("auroc_parity", {}).items():
        print(f"accuracy gate {k}: " + ("pass" if v["gate_passed"] else "FAIL: " + "; ".join(v["gate_failures"])))
    print(f"wrote {a.out}/bench.json, bench.md, bench.png")
    # a failed accuracy gate fails the command, so a CI job can run it as the gate
    return 1 if any(not v["gate_passed"] for v in doc.get("auroc_parity", {}).values()) else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="parity and throughput of every backend available here")
    p.add_argument("checkpoint", help="a checkpoint from wmoe train (.safetensors)")
    p.add_argument("--out", default="bench_out", type=output_dir, help="folder for bench.json, bench.md, bench.png")
    p.add_argument("--backends", default="auto", type=list_of(ALL_BACKENDS, "backend", extra=["auto"]),
                   help=f"auto or a comma list of {', '.join(ALL_BACKENDS)}")
    p.add_argument("--batch", default="1,8,32", type=int_list, help="batch sizes, comma-separated")
    p.add_argument("--sizes", default=None, type=int_list, help="e.g. 336,518 (default: the checkpoint's size)")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed runs before timing")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed runs per measurement")
    p.add_argument("--onnx", default=None, type=existing_file, help="an exported model (else exported on the fly)")
    p.add_argument("--engine", default=None, type=existing_file, help="a TensorRT engine built on this GPU")
    p.add_argument("--aoti", default=None, type=existing_file, help="an AOTInductor package (wmoe export aoti)")
    p.add_argument("--parity-data", default=None, help="data root (e.g. the demo set): the accuracy gate of every "
                   "backend vs torch-fp32 (AUROC change, score Spearman, map differences)")
    p.add_argument("--parity-images", type=non_negative_int, default=0,
                   help="a seeded subset of its test images; 0: all")
    p.add_argument("--qdq", default=None, type=existing_file,
                   help="a Q/DQ ONNX (wmoe export quantize) for the ort-qdq backend")
    gate_options(p)
    p.add_argument("--pretrained", default=None, type=existing_file,
                   help="local open_clip/OpenAI weights file of the backbone")
    p.add_argument("--reference", default=None, metavar="REF",
                   help="bench the normal-reference mode with this wmoe fit-normal folder (memory size in bench.md)")
    p.add_argument("--product", default=None, help="with --reference: the product (default: its only one)")
    p.set_defaults(func=_run)


def main(argv: Optional[List[str]] = None) -> int:
    import importlib.util
    if importlib.util.find_spec("torch") is None:  # the runtime-only install: one line, even for --help
        print('wmoe-bench: error: the bench runs the PyTorch model beside every backend and needs the model stack '
              '(torch is not installed): pip install "wmoe[bench]"', file=sys.stderr)
        return 2
    return run(standalone(register, "bench", "wmoe-bench"), argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
