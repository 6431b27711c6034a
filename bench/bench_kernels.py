"""Kernel benchmark (GPU): the fused stages against eager PyTorch and torch.compile, with their bytes/FLOPs floors.

    python -m wmoe.bench.bench_kernels --out bench/results/kernels_<gpu>   # on a CUDA machine
    python -m wmoe.bench.bench_kernels --dry-run                          # floors only (any machine)

One entry per fused stage, named like the stage's spec, kernel file and test (``wcma_frequency``,
``wcma_attention``, ``moe_experts``: ``kernels/<stage>_triton.py``, ``tests/test_kernels_<stage>.py``);
``--stages`` picks some. Rows are ``<stage>/<impl>``.

WCMA frequency stage: eager = pytorch_wavelets' DWT + the nn ops of Eq. 5-6 (``wcma_frequency_ref`` on the
sub-bands), compiled = ``torch.compile`` of the reference, fused = the Triton kernels. Whole WCMA (Eq. 5-7):
eager = the above + Eq. 7 as written (K/V projections of every position), compiled = ``torch.compile`` of that,
unfused = the frequency kernel + eager Eq. 7, fused = ``wcma_attention_triton`` (one pass, ``F_p`` never written,
Eq. 7 folded; its floor counts the folded algorithm's FLOPs). MoE: eager = the loop over
experts (``moe_experts_ref``), dense = all experts with a masked combine, compiled dense, fused = the Triton path.
Timings: ``triton.testing.do_bench`` (median, p20, p80) and ``do_bench_cudagraph``; achieved GB/s and TFLOP/s
beside the floors (bytes that must be read/written once, FLOPs of the GEMMs).

``kernels.json`` is rewritten (atomically) after every measurement, so a crash keeps what was measured; a
measurement that raises is recorded with its error and the run goes on. An implementation that synchronizes with
the host (``torch.cuda.set_sync_debug_mode("error")`` finds it, e.g. the expert loop's ``nonzero``) is not put in
a CUDA graph: its ``cudagraph_ms`` is null with the reason.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Dict, List, Sequence

C, D, NE, TOPK, T = 768, 192, 8, 2, 2
STAGES = ("wcma_frequency", "wcma_attention", "moe_experts")


def wcma_floor(B: int, grid: int, itemsize: int = 2) -> Dict[str, float]:
    h = (grid + 1) // 2
    bytes_ = B * grid * grid * C * itemsize + B * h * h * C * itemsize + (2 * C * D + C * C) * itemsize
    flops = 2 * B * h * h * C * D * 2 + 2 * B * C * C
    return {"bytes": bytes_, "flops": flops}


def wcma_attn_floor(B: int, grid: int, itemsize: int = 2) -> Dict[str, float]:
    """Read the grid and the weights once; FLOPs of the folded algorithm (frequency GEMMs, two-query attention,
    the query fold and W_v on T rows, the global GEMV)."""
    h = (grid + 1) // 2
    bytes_ = B * grid * grid * C * itemsize + (2 * C * D + 4 * C * C) * itemsize + 2 * B * T * C * itemsize
    flops = 2 * B * h * h * C * D * 2 + 2 * 2 * B * h * h * C * T + 3 * 2 * B * T * C * C + 2 * B * C * C
    return {"bytes": bytes_, "flops": flops}


def moe_floor(B: int, itemsize: int = 2) -> Dict[str, float]:
    used = min(NE, B * TOPK)  # experts that can receive tokens
    bytes_ = used * 2 * C * C * itemsize + 2 * B * C * itemsize
    flops = 2 * B * TOPK * C * C * 2
    return {"bytes": bytes_, "flops": flops}


class Recorder:
    """Measurements, written to ``path`` (JSON, atomically) after each one."""

    def __init__(self, path: Path, device: str) -> None:
        self.path, self.device = Path(path), device
        self.records: List[dict] = []

    def add(self, record: dict) -> None:
        from wmoe.atomic import atomic_write_text
        self.records.append(record)
        atomic_write_text(self.path, json.dumps({"device": self.device, "records": self.records}, indent=2) + "\n")
        print(record, flush=True)

    def measure(self, key: dict, fn: Callable[[], dict]) -> None:
        try:
            self.add({**key, **fn()})
        except Exception as e:  # noqa: BLE001 - record it and go on with the next measurement
            self.add({**key, "error": f"{type(e).__name__}: {e}"})


def syncs_with_host(fn: Callable[[], object]) -> bool:
    """Whether one call of ``fn`` synchronizes the CUDA stream with the host (such code cannot be captured)."""
    import torch
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return False
    except RuntimeError as e:
        if "synchroniz" in str(e).lower():
            return True
        raise
    finally:
        torch.cuda.set_sync_debug_mode(0)


def run(batches: List[int], grids: List[int], out: Path, stages: Sequence[str] = STAGES) -> List[dict]:
    import torch
    import triton.testing as tt
    from pytorch_wavelets import DWTForward

    from wmoe.kernels.moe_experts_triton import moe_experts_triton
    from wmoe.kernels.moe_ref import moe_experts_dense_ref, moe_experts_ref
    from wmoe.kernels.wcma_attention_triton import wcma_attention_triton
    from wmoe.kernels.wcma_frequency_triton import wcma_frequency_triton
    from wmoe.kernels.wcma_ref import wcma_cross_attention_ref

    dev, dt = "cuda", torch.float16
    out.mkdir(parents=True, exist_ok=True)
    dwt = DWTForward(J=1, wave="haar", mode="zero").to(dev, dt)
    w = [torch.randn(C, C, device=dev, dtype=dt) * 0.03, torch.zeros(C, device=dev, dtype=dt),
         torch.randn(D, C, device=dev, dtype=dt) * 0.03, torch.zeros(D, device=dev, dtype=dt),
         torch.randn(C, D, device=dev, dtype=dt) * 0.07, torch.zeros(C, device=dev, dtype=dt)]

    def eager_wcma(x):
        import torch.nn.functional as F
        xc = x.permute(0, 3, 1, 2)
        ll, (yh,) = dwt(xc)  # yh: (B, C, 3, h, w) = LH, HL, HH
        f_l, f_h = ll, yh.sum(dim=2)
        s = (f_l + f_h).permute(0, 2, 3, 1)
        g = F.linear(F.relu(s.mean(dim=(1, 2))), w[0], w[1])
        loc = F.linear(F.relu(F.linear(s, w[2], w[3])), w[4], w[5])
        return f_h.permute(0, 2, 3, 1) * torch.sigmoid(loc + g[:, None, None]) + f_l.permute(0, 2, 3, 1)

    compiled_wcma = torch.compile(eager_wcma)
    aw = [torch.randn(C, C, device=dev, dtype=dt) * 0.03 for _ in range(3)]

    def eager_attn(f_t, x):
        return wcma_cross_attention_ref(f_t, eager_wcma(x), *aw)

    compiled_attn = torch.compile(eager_attn)
    mw = [torch.randn(NE, C, device=dev) * 0.05, torch.zeros(NE, device=dev),
          torch.randn(NE, C, C, device=dev, dtype=dt) * 0.03, torch.zeros(NE, C, device=dev, dtype=dt),
          torch.randn(NE, C, C, device=dev, dtype=dt) * 0.03, torch.zeros(NE, C, device=dev, dtype=dt)]
    compiled_dense = torch.compile(lambda x: moe_experts_dense_ref(x, *mw, TOPK))
    rec = Recorder(out / "kernels.json", torch.cuda.get_device_name())

    def bench(name, fn, floor, **key):
        def measure() -> dict:
            ms, p20, p80 = tt.do_bench(fn, quantiles=[0.5, 0.2, 0.8])
            r = {"median_ms": ms, "p20_ms": p20, "p80_ms": p80, "GB_s": floor["bytes"] / ms / 1e6,
                 "TFLOP_s": floor["flops"] / ms / 1e9, **floor}
            if syncs_with_host(fn):
                r.update(cudagraph_ms=None, cudagraph_skipped="synchronizes with the host: cannot be captured")
            else:
                r["cudagraph_ms"] = tt.do_bench_cudagraph(fn)
            return r
        rec.measure({"impl": name, **key}, measure)

    for grid in grids:
        for B in batches:
            x = torch.randn(B, grid, grid, C, device=dev, dtype=dt)
            if "wcma_frequency" in stages:
                fl = wcma_floor(B, grid)
                key = dict(stage="wcma_frequency", batch=B, grid=grid)
                bench("wcma_frequency/eager", lambda: eager_wcma(x), fl, **key)
                bench("wcma_frequency/compile", lambda: compiled_wcma(x), fl, **key)
                bench("wcma_frequency/triton", lambda: wcma_frequency_triton(x, *w), fl, **key)
            if "wcma_attention" in stages:
                f_t = torch.randn(B, T, C, device=dev, dtype=dt)
                fa = wcma_attn_floor(B, grid)
                key = dict(stage="wcma_attention", batch=B, grid=grid)
                bench("wcma_attention/eager", lambda: eager_attn(f_t, x), fa, **key)
                bench("wcma_attention/compile", lambda: compiled_attn(f_t, x), fa, **key)
                bench("wcma_attention/unfused",
                      lambda: wcma_cross_attention_ref(f_t, wcma_frequency_triton(x, *w), *aw), fa, **key)
                bench("wcma_attention/triton", lambda: wcma_attention_triton(f_t, x, *w, *aw), fa, **key)
    for B in batches if "moe_experts" in stages else []:
        x = torch.randn(B, C, device=dev, dtype=dt)
        fl = moe_floor(B)
        key = dict(stage="moe_experts", batch=B)
        bench("moe_experts/eager-loop", lambda: moe_experts_ref(x, *mw, TOPK), fl, **key)
        bench("moe_experts/dense", lambda: moe_experts_dense_ref(x, *mw, TOPK), fl, **key)
        bench("moe_experts/dense-compile", lambda: compiled_dense(x), fl, **key)
        bench("moe_experts/triton", lambda: moe_experts_triton(x, *mw, TOPK), fl, **key)
    return rec.records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,32,64,128,256")
    ap.add_argument("--grids", default="24,37")
    ap.add_argument("--out", default="bench_out/kernels")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated entries (default: all)")
    ap.add_argument("--dry-run", action="store_true", help="print the bytes/FLOPs floors only")
    a = ap.parse_args(argv)
    stages = a.stages.split(",")
    unknown = set(stages) - set(STAGES)
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)} (known: {', '.join(STAGES)})")
    batches = [int(v) for v in a.batches.split(",")]
    grids = [int(v) for v in a.grids.split(",")]
    if a.dry_run:
        print("Floors only: computed from bytes and FLOPs, not measured -- no GPU has run this bench yet.\n")
        print("| stage | batch | grid | MB floor | GFLOP | H100 floor µs (3.35 TB/s, 990 TFLOP/s fp16) |")
        print("|---|---:|---:|---:|---:|---:|")
        for g in grids:
            for B in batches:
                for name, floor in (("wcma_frequency", wcma_floor), ("wcma_attention", wcma_attn_floor)):
                    if name in stages:
                        f = floor(B, g)
                        us = max(f["bytes"] / 3.35e12, f["flops"] / 990e12) * 1e6
                        print(f"| {name} | {B} | {g} | {f['bytes'] / 1e6:.1f} | {f['flops'] / 1e9:.2f} | {us:.1f} |")
        for B in batches if "moe_experts" in stages else []:
            f = moe_floor(B)
            us = max(f["bytes"] / 3.35e12, f["flops"] / 990e12) * 1e6
            print(f"| moe_experts | {B} | – | {f['bytes'] / 1e6:.1f} | {f['flops'] / 1e9:.2f} | {us:.1f} |")
        return 0
    import torch
    if not torch.cuda.is_available():
        print("bench_kernels needs a CUDA GPU (use --dry-run for the floors)")
        return 2
    run(batches, grids, Path(a.out), stages)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
