"""Camera loop: capture -> batch -> score -> overlay -> display or write, with capture and inference pipelined.

    python examples/camera_loop.py --source 0 --model model.onnx --batch 4 --display
    python examples/camera_loop.py --source video.mp4 --model model.engine --out overlays/
    python examples/camera_loop.py --source images/ --model model.onnx --max-frames 100 --out overlays/

A capture thread fills a bounded queue (frames are dropped, and counted, when inference falls behind, so memory
stays flat); the main thread scores batches and prints running p50/p99 latency and images/s. Needs
opencv-python-headless (or opencv-python for --display) and the wmoe runtime; torch is not imported.
"""
from __future__ import annotations

import argparse
import collections
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np


def frame_source(source: str):
    """Yield BGR frames from a camera index, a video file or a folder of images (sorted)."""
    import cv2

    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))
        if not files:
            raise SystemExit(f"{p}: no images found")
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                print(f"warning: {f}: unreadable image, skipped", file=sys.stderr)
                continue
            yield img
        return
    cap = cv2.VideoCapture(int(source) if source.isdigit() else str(source))
    if not cap.isOpened():
        raise SystemExit(f"cannot open video source {source!r}")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="camera index, video file or image folder")
    ap.add_argument("--model", required=True, help="exported model: .onnx or TensorRT .engine")
    ap.add_argument("--provider", default="cpu", help="ONNX Runtime provider: cpu, cuda, tensorrt")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: run until the source ends)")
    ap.add_argument("--threshold", type=float, default=None, help="mark frames scoring above it")
    ap.add_argument("--out", default=None, help="write overlays here")
    ap.add_argument("--display", action="store_true")
    ap.add_argument("--report-every", type=int, default=50)
    ap.add_argument("--queue", type=int, default=8, help="capture queue length (bounded: old frames dropped)")
    a = ap.parse_args(argv)

    import cv2

    from wmoe.runtime import Runtime

    rt = Runtime.open(a.model, provider=a.provider)
    out_dir = Path(a.out) if a.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    frames_q: "queue.Queue" = queue.Queue(maxsize=a.queue)
    stop = threading.Event()
    dropped = [0]

    def capture() -> None:
        n = 0
        for frame in frame_source(a.source):
            if stop.is_set() or (a.max_frames and n >= a.max_frames):
                break
            try:
                frames_q.put(frame, timeout=1.0)
            except queue.Full:
                dropped[0] += 1
                continue
            n += 1
        frames_q.put(None)  # end of stream

    th = threading.Thread(target=capture, daemon=True)
    th.start()
    lat = collections.deque(maxlen=1000)  # ring buffer: flat memory on long runs
    done, t_start, ended = 0, time.perf_counter(), False
    while not ended:
        batch = []
        while len(batch) < a.batch:
            f = frames_q.get()
            if f is None:
                ended = True
                break
            batch.append(f)
        if not batch:
            break
        t0 = time.perf_counter()
        res = rt.score([f[:, :, ::-1] for f in batch])  # OpenCV BGR -> RGB
        dt = time.perf_counter() - t0
        lat.extend([dt / len(batch)] * len(batch))
        for i, f in enumerate(batch):
            m = res.maps_at(i)
            heat = cv2.applyColorMap(np.clip(m * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
            over = cv2.addWeighted(f, 0.5, heat, 0.5, 0)
            flag = a.threshold is not None and res.scores[i] >= a.threshold
            cv2.putText(over, f"{res.scores[i]:.3f}{' DEFECT' if flag else ''}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX,
                        0.7, (0, 0, 255) if flag else (255, 255, 255), 2)
            if out_dir:
                cv2.imwrite(str(out_dir / f"frame_{done + i:06d}.png"), over)
            if a.display:
                cv2.imshow("wmoe", over)
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    stop.set()
                    ended = True
        done += len(batch)
        if done % a.report_every < len(batch) or ended:
            ms = np.array(lat) * 1e3
            print(f"frames {done}: p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms per image, "
                  f"{done / (time.perf_counter() - t_start):.1f} images/s, dropped {dropped[0]}", flush=True)
    stop.set()
    rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
