"""Which CPU session settings the runtime ships, measured: ONNX Runtime's graph optimization level and intra-op
threads, and OpenVINO's latency vs throughput hint, on one exported model, side by side in one run.

``python -m wmoe.bench.ort_settings model.onnx --batch 1,4 --rounds 5 --out settings.json``

The default's session lives through the run; every other setting gets its own session, warmed up (``--warmup``
untimed runs), then timed ``--rounds`` times in alternation with the default (A B A B ..., so a load change on a
shared machine hits both alike), and released before the next (a full-size model's sessions are GBs each).
The table gives the median seconds per image, its speed relative to the default timed beside it (``ort all, default
threads``: ONNX Runtime's own defaults, what :func:`wmoe.runtime.session.make_session` creates) and the largest
|difference| of the maps from that default on the same input (every setting must compute the same model). No torch:
it reads the model's contract for its input (uint8 frames or float images) and runs what the runtime runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from wmoe.contract import INPUT_FRAMES, ModelMeta, read_onnx_contract
from wmoe.runtime.registry import open_backend
from wmoe.runtime.session import GRAPH_OPTIMIZATION

DEFAULT = "ort all, default threads"


@dataclass
class Setting:
    name: str
    engine: str  # "ort" | "openvino"
    optimization: str = "all"
    threads: int = 0  # 0: the library's default
    hint: Optional[str] = None  # OpenVINO: LATENCY | THROUGHPUT


@dataclass
class Row:
    setting: str
    batch: int
    s_per_image: float
    vs_default: float
    maps_max_abs_diff: float
    times_s: List[float] = field(default_factory=list)


def settings(cores: int, openvino: bool) -> List[Setting]:
    """The runtime's default first, then each alternative one change away from it."""
    out = [Setting(DEFAULT, "ort")]
    out += [Setting(f"ort {lvl}, default threads", "ort", lvl) for lvl in ("extended", "basic")]
    out += [Setting(f"ort all, {t} thread{'s' if t > 1 else ''}", "ort", "all", t) for t in sorted({1, cores})]
    if openvino:
        out += [Setting(f"openvino f32, {h.lower()} hint", "openvino", hint=h) for h in ("LATENCY", "THROUGHPUT")]
    return out


def _runner(model: Path, s: Setting, batch: int) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
    if s.engine == "ort":  # the runtime's backends, opened through its registry
        return open_backend(model, "cpu", s.threads, optimization=s.optimization).run
    return open_backend(model, "openvino", s.threads, precision="f32", batch=batch, hint=s.hint).run


def feed(meta: ModelMeta, batch: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded input of the model's contract: uint8 frames (N,H,W,3) or normalized float images (N,3,S,S)."""
    if meta.input == INPUT_FRAMES:
        h, w = meta.frame_size
        return rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    s = meta.image_size
    return rng.standard_normal((batch, 3, s, s)).astype(np.float32)


def measure(model: Path, batches: Sequence[int] = (1, 4), rounds: int = 5, warmup: int = 1,
            openvino: Optional[bool] = None, progress: bool = True) -> Dict[str, object]:
    model = Path(model)
    meta = read_onnx_contract(model)
    if openvino is None:
        try:
            import openvino  # noqa: F401
            openvino = True
        except ImportError:
            openvino = False
    cores = os.cpu_count() or 1
    chosen = settings(cores, openvino)
    rng = np.random.default_rng(0)
    xs = {b: feed(meta, b, rng) for b in batches}
    load_before = os.getloadavg()
    # The default's session lives through the run; each other setting is built, measured in alternation with the
    # default (A B A B ...), and released before the next: a full-size model's sessions are GBs each, and the
    # ratio of each setting to the default comes from runs next to each other in time.
    default = _runner(model, chosen[0], batches[0])  # an ONNX Runtime session serves every batch size
    ref = {b: default(xs[b])["maps"] for b in batches}
    rows = []
    for k, s in enumerate(chosen):
        shared = None  # an ONNX Runtime setting: one session for all batch sizes (OpenVINO's hint is per batch)
        for b in batches:
            if k == 0:
                fn = default
            elif s.engine == "ort":
                shared = shared or _runner(model, s, b)
                fn = shared
            else:
                fn = _runner(model, s, b)
            out = None
            for _ in range(max(1, warmup)):
                out = fn(xs[b])
            diff = float(np.abs(out["maps"] - ref[b]).max())
            mine, base = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                default(xs[b])
                base.append(time.perf_counter() - t0)
                if k:
                    t0 = time.perf_counter()
                    fn(xs[b])
                    mine.append(time.perf_counter() - t0)
            mine = mine or base
            rows.append(Row(s.name, b, statistics.median(mine) / b,
                            statistics.median(base) / statistics.median(mine), diff, mine))
            del fn
            if progress:
                print(f"{s.name}, batch {b}: {statistics.median(mine) / b:.4g} s/image", flush=True)
    return {"model": str(model), "input": meta.input, "image_size": meta.image_size, "rounds": rounds,
            "warmup": warmup, "cpu_count": cores, "load_before": load_before, "load_after": os.getloadavg(),
            "settings": [asdict(s) for s in chosen], "rows": [asdict(r) for r in rows]}


def to_markdown(doc: Dict[str, object]) -> str:
    lines = [f"Model `{doc['model']}` ({doc['input']}), {doc['rounds']} interleaved rounds after {doc['warmup']} "
             f"warm-up, {doc['cpu_count']} CPUs; load average before {tuple(round(v, 1) for v in doc['load_before'])}"
             f", after {tuple(round(v, 1) for v in doc['load_after'])}.", "",
             "| setting | batch | s / image (median) | speed vs the shipped default | maps max \\|Δ\\| vs default |",
             "|---|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        lines.append(f"| {r['setting']} | {r['batch']} | {r['s_per_image']:.4g} | {r['vs_default']:.2f}× | "
                     f"{r['maps_max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    from wmoe.cli.types import existing_file, int_list, non_negative_int, positive_int
    p = argparse.ArgumentParser(prog="python -m wmoe.bench.ort_settings", description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=existing_file, help="an exported wmoe ONNX (portable flavor)")
    p.add_argument("--batch", type=int_list, default=[1, 4], help="batch sizes, comma-separated (default 1,4)")
    p.add_argument("--rounds", type=positive_int, default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs per setting (default 1)")
    p.add_argument("--no-openvino", action="store_true", help="leave OpenVINO out even where it is installed")
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON (and .md beside it)")
    a = p.parse_args(argv)
    doc = measure(a.model, a.batch, a.rounds, a.warmup, openvino=False if a.no_openvino else None)
    md = to_markdown(doc)
    print(md)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(doc, indent=1))
        a.out.with_suffix(".md").write_text(md)
    return 0


__all__ = ["DEFAULT", "GRAPH_OPTIMIZATION", "Setting", "measure", "settings", "to_markdown"]

if __name__ == "__main__":
    raise SystemExit(main())
