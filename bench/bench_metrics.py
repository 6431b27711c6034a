"""Time the evaluation metrics on an MVTec-sized test set: ``python -m wmoe.bench.bench_metrics --n 1725 --size 518``.

Synthetic maps (noise + raised blobs) and blob masks on ~half the images, split into 15 classes like MVTec AD;
per class: σ=4 smoothing, pixel AUROC/AP, PRO (MVTec) and PRO (binned), as ``wmoe eval`` runs them.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from wmoe.evaluation.metrics import pixel_metrics, smooth_maps


def make_class(rng: np.random.Generator, n: int, size: int):
    masks = np.zeros((n, size, size), bool)
    maps = rng.random((n, size, size), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n // 2):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            r = rng.integers(size // 40, size // 8)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            masks[i] |= blob
            maps[i][blob] += 0.5
    return masks, maps.astype(np.float16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1725)
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--classes", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="classes in parallel (needs memory for all maps)")
    ap.add_argument("--out", default=None, help="write the timing table (markdown) here")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    per = np.array_split(np.arange(a.n), a.classes)
    t = {"smoothing": 0.0, "auroc+ap+pro+pro_binned": 0.0}
    classes = [make_class(rng, len(idx), a.size) for idx in per] if a.threads > 1 else None

    def one(masks, maps):
        t0 = time.perf_counter()
        sm = smooth_maps(maps.astype(np.float32), sigma=4)
        t1 = time.perf_counter()
        pixel_metrics(masks, sm)
        return t1 - t0, time.perf_counter() - t1

    wall = time.perf_counter()
    if classes is None:
        for idx in per:
            masks, maps = make_class(rng, len(idx), a.size)
            ts, tm = one(masks, maps)
            t["smoothing"] += ts
            t["auroc+ap+pro+pro_binned"] += tm
            del masks, maps
    else:  # classes in parallel threads (numpy and scipy release the GIL), as a multi-core evaluation could
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(a.threads) as pool:
            for ts, tm in pool.map(lambda c: one(*c), classes):
                t["smoothing"] += ts
                t["auroc+ap+pro+pro_binned"] += tm
    t["wall clock"] = time.perf_counter() - wall
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    import os
    lines = [f"# Metric timings: {a.n} maps of {a.size}x{a.size} in {a.classes} classes", "",
             f"{cpu}, {os.cpu_count()} cores, numpy {np.__version__}, {platform.python_version()}", "",
             f"threads: {a.threads} (per-step times are summed over classes; wall clock is the elapsed time)", "",
             "| step | seconds |", "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in t.items() if k != "wall clock"] + [
             f"| **total (wall clock)** | {t['wall clock']:.1f} |"]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
