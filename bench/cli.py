"""``wmoe bench`` (also installed as ``wmoe-bench``): parity and throughput of every available backend."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .backends import ALL_BACKENDS


def _ints(s: str) -> List[int]:
    return [int(v) for v in s.split(",") if v]


def _run(a: argparse.Namespace) -> int:
    from .harness import BenchConfig, run_bench
    backends = list(ALL_BACKENDS) if a.backends == "auto" else [b for b in a.backends.split(",") if b]
    unknown = [b for b in backends if b not in ALL_BACKENDS]
    if unknown:
        print(f"wmoe bench: unknown backends {unknown}; choose from {', '.join(ALL_BACKENDS)}", file=sys.stderr)
        return 2
    # named explicitly, torch.compile runs on the CPU too (with "auto" it is skipped there, with the reason)
    doc = run_bench(BenchConfig(a.checkpoint, out=a.out, backends=backends, batches=_ints(a.batch),
                                sizes=_ints(a.sizes) if a.sizes else None, warmup=a.warmup, repeats=a.repeats,
                                onnx=a.onnx, engine=a.engine, aoti=a.aoti, parity_data=a.parity_data,
                                pretrained=a.pretrained, allow_compile=a.backends != "auto"))
    for k, v in doc["skipped"].items():
        print(f"skipped {k}: {v}")
    print(f"wrote {a.out}/bench.json, bench.md, bench.png")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="parity and throughput of every backend available here")
    p.add_argument("checkpoint")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--backends", default="auto", help=f"auto or a comma list of {', '.join(ALL_BACKENDS)}")
    p.add_argument("--batch", default="1,8,32")
    p.add_argument("--sizes", default=None, help="e.g. 336,518 (default: the checkpoint's size)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--onnx", default=None, help="an exported model (else exported on the fly)")
    p.add_argument("--engine", default=None, help="a TensorRT engine built on this GPU")
    p.add_argument("--aoti", default=None, help="an AOTInductor package (wmoe export aoti)")
    p.add_argument("--parity-data", default=None, help="data root (e.g. the demo set) for the AUROC change")
    p.add_argument("--pretrained", default=None)
    p.set_defaults(func=_run)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="wmoe-bench")
    register(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(["bench"] + list(sys.argv[1:] if argv is None else argv))
    from wmoe.checkpoint import CheckpointError
    try:
        return int(a.func(a) or 0)
    except CheckpointError as e:
        print(f"wmoe bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
