"""Runtime preprocessing of a camera frame: the numpy twin of the contract's resize vs the previous runtime's
Pillow per-channel float bicubic (the "before" of issue 11), same frame, same process, median of N runs.

    python -m wmoe.bench.bench_preprocess --size 336 --frame 1080x1920 --runs 15
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from wmoe.contract import PreprocessSpec
from wmoe.runtime.frames import preprocess_frames


def pillow_bicubic_baseline(frame: np.ndarray, size: int) -> np.ndarray:
    """What the runtime did before: Pillow bicubic on each float channel (antialiased when shrinking)."""
    from PIL import Image
    x = frame.astype(np.float32) / 255.0
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(x[:, :, c]), mode="F")
                                .resize((size, size), Image.Resampling.BICUBIC)) for c in range(3)], axis=2)


def measure(fn: Callable[[], object], runs: int) -> Dict[str, float]:
    fn()  # warm-up (tap tables are cached per frame size)
    ts: List[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * float(np.median(ts)), "min_ms": 1e3 * min(ts)}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=336)
    ap.add_argument("--frame", default="1080x1920", help="HxW")
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args(argv)
    h, w = (int(v) for v in a.frame.lower().split("x"))
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    spec = PreprocessSpec(a.size)
    for name, fn in (("before: Pillow float bicubic per channel", lambda: pillow_bicubic_baseline(frame, a.size)),
                     ("after: numpy bilinear-box twin (+ normalize)", lambda: preprocess_frames([frame], spec))):
        r = measure(fn, a.runs)
        print(f"{name}: median {r['median_ms']:.1f} ms, min {r['min_ms']:.1f} ms ({h}x{w} -> {a.size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
