"""Camera loop: capture -> bounded queue -> batch -> score -> verdict (+ overlays), capture and inference pipelined.

    python -m wmoe.runtime.camera --source images/ --model model.onnx --out overlays/
    wmoe-camera --source 0 --model model.engine --batch 4 --drop oldest --display
    wmoe-camera --source line3.mp4 --model model.onnx --max-frames 1000

The model file carries its threshold (``wmoe eval`` -> ``wmoe export``), so verdicts need no flags. A capture
thread fills a bounded queue; when inference falls behind, the drop policy decides: ``oldest`` (default: keep the
freshest frames, discard the oldest queued one), ``newest`` (discard the incoming frame) or ``block`` (the capture
waits: nothing is dropped, a live camera's driver may drop instead). Drops are counted and reported. Image folders
are decoded with wmoe's one image loader (same pixels as ``wmoe predict``; EXIF orientation ignored, truncated
files refused and counted); video files and camera indices need OpenCV (``pip install "wmoe[camera]"``).
Imports no torch.
"""
from __future__ import annotations

import argparse
import collections
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from ..contract import VERDICT_ANOMALOUS, VERDICT_UNDECIDED, is_image_name
from ..errors import WMoEError

DROP_POLICIES = ("oldest", "newest", "block")


class SourceError(WMoEError, ValueError):
    """The frame source cannot be opened (missing path, empty folder, camera/video that does not open)."""


@dataclass
class Frame:
    index: int          # position in the source
    name: str           # file name, or "frame_<index>"
    rgb: np.ndarray     # uint8 HxWx3 RGB


@dataclass
class LoopStats:
    read: int = 0          # frames read from the source
    dropped: int = 0       # frames discarded by the drop policy
    unreadable: int = 0    # files that could not be decoded (skipped, named on stderr)
    scored: int = 0
    anomalous: int = 0
    undecided: int = 0     # no threshold, or a non-finite output (a fault: never "normal")
    latencies: "collections.deque" = field(default_factory=lambda: collections.deque(maxlen=1000))
    t_start: float = field(default_factory=time.perf_counter)

    def line(self, policy: str) -> str:
        ms = np.asarray(self.latencies, dtype=np.float64) * 1e3
        p50 = f"{np.percentile(ms, 50):.1f}" if ms.size else "-"
        p99 = f"{np.percentile(ms, 99):.1f}" if ms.size else "-"
        rate = self.scored / max(time.perf_counter() - self.t_start, 1e-9)
        return (f"frames {self.scored}: p50 {p50} ms, p99 {p99} ms per image, {rate:.1f} images/s, "
                f"anomalous {self.anomalous}, undecided {self.undecided}, dropped {self.dropped} (policy {policy}), "
                f"unreadable {self.unreadable}")


def _cv2():
    try:
        import cv2  # type: ignore
    except ImportError:
        from ..errors import MissingDependencyError
        raise MissingDependencyError("opencv-python-headless", "camera", "video files and cameras") from None
    return cv2


def open_source(source: str, warn: Callable[[str], None]) -> Iterator[Frame]:
    """Frames from an image folder (sorted), a video file or a camera index; a :class:`SourceError` right away when
    the source cannot be opened (so a bad path never hangs the loop)."""
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if is_image_name(f) and f.is_file())
        if not files:
            raise SourceError(f"{p}: no image files found (looked for {', '.join(sorted({'.png', '.jpg', '.bmp'}))} "
                              f"and the other image suffixes)")
        return _folder(files, warn)
    if not source.isdigit() and not p.exists():
        raise SourceError(f"{source}: no such file, folder or camera index")
    if p.is_file() and is_image_name(p):
        return _folder([p], warn)
    cv2 = _cv2()
    cap = cv2.VideoCapture(int(source) if source.isdigit() else str(source))
    if not cap.isOpened():
        raise SourceError(f"cannot open video source {source!r} (not a video OpenCV can read, or no such camera)")
    return _video(cap)


def _folder(files: List[Path], warn: Callable[[str], None]) -> Iterator[Frame]:
    from ..image_io import DataError, load_image
    for i, f in enumerate(files):
        try:
            rgb = load_image(f)
        except DataError as e:
            warn(str(e))
            yield Frame(i, f.name, None)  # type: ignore[arg-type]  # counted as unreadable
            continue
        yield Frame(i, f.name, rgb)


def _video(cap) -> Iterator[Frame]:
    try:
        i = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield Frame(i, f"frame_{i:06d}", np.ascontiguousarray(bgr[:, :, ::-1]))
            i += 1
    finally:
        cap.release()


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def run_loop(frames: Iterator[Frame], score: Callable[[List[np.ndarray]], object], *, batch: int = 4,
             queue_size: int = 8, drop: str = "oldest", max_frames: int = 0,
             on_result: Optional[Callable[[Frame, object, int], None]] = None,
             report: Optional[Callable[[LoopStats], None]] = None, report_every: int = 50,
             stop: Optional[threading.Event] = None) -> LoopStats:
    """Pipelined loop: a capture thread feeds a bounded queue under ``drop``; batches are scored here.

    ``score(list of RGB frames)`` returns a :class:`wmoe.runtime.Result`; ``on_result(frame, result, i)`` sees
    each scored frame. A failure in the capture thread is re-raised here (the loop never hangs).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if queue_size < 1:
        raise ValueError(f"queue size must be >= 1 (a bounded queue), got {queue_size}")
    if drop not in DROP_POLICIES:
        raise ValueError(f"drop policy must be one of {DROP_POLICIES}, got {drop!r}")
    stop = stop or threading.Event()
    q: "queue.Queue" = queue.Queue(maxsize=queue_size)
    stats = LoopStats()

    def put(item) -> None:
        if drop == "block" or item is _END or isinstance(item, _Failure):
            while not stop.is_set():  # wait for room (the consumer runs until it sees the end marker)
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            return
        try:
            q.put_nowait(item)
        except queue.Full:
            if drop == "newest":
                stats.dropped += 1
                return
            try:  # drop the oldest queued frame to make room (only this thread puts, so room is then free)
                q.get_nowait()
                stats.dropped += 1
            except queue.Empty:
                pass
            q.put_nowait(item)

    def capture() -> None:
        try:
            for fr in frames:
                if stop.is_set() or (max_frames and stats.read >= max_frames):
                    break
                stats.read += 1
                if fr.rgb is None:
                    stats.unreadable += 1
                    continue
                put(fr)
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, never swallowed
            put(_Failure(e))

    th = threading.Thread(target=capture, name="wmoe-capture", daemon=True)
    th.start()
    ended = False
    try:
        while not ended:
            chunk: List[Frame] = []
            while len(chunk) < batch:
                try:  # poll: a stop set by the caller ends capture without an end marker
                    item = q.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():  # the capture thread may be stuck in a camera read: do not wait on it
                        ended = True
                        break
                    continue
                if isinstance(item, _Failure):
                    raise item.exc
                if item is _END:
                    ended = True
                    break
                chunk.append(item)
            if not chunk:
                break
            t0 = time.perf_counter()
            res = score([f.rgb for f in chunk])
            dt = time.perf_counter() - t0
            stats.latencies.extend([dt / len(chunk)] * len(chunk))
            for i, fr in enumerate(chunk):
                v = res.verdicts[i]
                stats.anomalous += v == VERDICT_ANOMALOUS
                stats.undecided += v == VERDICT_UNDECIDED
                if on_result is not None:
                    on_result(fr, res, i)
            before = stats.scored
            stats.scored += len(chunk)
            if report is not None and report_every and stats.scored // report_every > before // report_every \
                    and not ended:
                report(stats)
            if stop.is_set():
                break
    finally:
        stop.set()
        th.join(timeout=5)
    return stats


def _positive(name: str, minimum: int = 1):
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {v!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {n}")
        return n
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="wmoe-camera", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="image folder, image file, video file or camera index")
    ap.add_argument("--model", required=True, help="exported model: .onnx or TensorRT .engine (with its .json)")
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"],
                    help="ONNX Runtime provider (default: %(default)s)")
    ap.add_argument("--batch", type=_positive("--batch"), default=4, help="frames per inference (default: %(default)s)")
    ap.add_argument("--queue", type=_positive("--queue"), default=8,
                    help="capture queue length, bounded (default: %(default)s)")
    ap.add_argument("--drop", choices=DROP_POLICIES, default="oldest",
                    help="when the queue is full: drop the oldest queued frame, drop the newest, or block the "
                         "capture (default: %(default)s)")
    ap.add_argument("--max-frames", type=_positive("--max-frames", 0), default=0,
                    help="stop after N frames read (0: until the source ends)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="override the image threshold stored in the model")
    ap.add_argument("--pixel-threshold", type=float, default=None,
                    help="override the defect-mask threshold stored in the model")
    ap.add_argument("--overlays", "--out", dest="overlays", default=None, metavar="DIR",
                    help="write one overlay per frame here: the picture of wmoe predict (image | fixed-scale heatmap "
                         "with colour bar and the defect contour at the pixel threshold, banner with verdict, score "
                         "and threshold); --out is the older name")
    ap.add_argument("--display", action="store_true", help="show overlays in a window (needs opencv-python)")
    ap.add_argument("--report-every", type=_positive("--report-every", 0), default=50,
                    help="print a progress line every N scored frames (0: only the final report)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    from .runtime import Runtime

    def warn(msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    try:
        frames = open_source(a.source, warn)
        rt = Runtime.open(a.model, provider=a.provider, threshold=a.threshold, pixel_threshold=a.pixel_threshold)
    except (WMoEError, FileNotFoundError, ValueError) as e:
        print(f"wmoe-camera: error: {e}", file=sys.stderr)
        return 2
    thr = rt.decision.threshold
    print(f"model {a.model}: input {rt.meta.input} {rt.input_size}px, "
          f"threshold {thr if thr is not None else 'none (verdicts undecided: run wmoe eval, re-export)'}",
          flush=True)
    out_dir = Path(a.overlays) if a.overlays else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def on_result(fr: Frame, res, i: int) -> None:
        v = res.verdicts[i]
        if res.faults[i]:
            warn(f"{fr.name}: {res.faults[i]}")
        if out_dir is None and not a.display:
            return
        from ..overlay import overlay_panel
        over = overlay_panel(fr.rgb, res.maps_at(i), float(res.scores[i]), res.decision.threshold,
                             pixel_threshold=res.decision.pixel_threshold, verdict=v, label=fr.name)
        if out_dir is not None:
            from PIL import Image

            from ..atomic import atomic_path
            with atomic_path(out_dir / f"{Path(fr.name).stem}_{v}.png") as tmp:
                Image.fromarray(over).save(tmp, format="PNG")
        if a.display:
            cv2 = _cv2()
            try:
                cv2.imshow("wmoe", np.ascontiguousarray(over[:, :, ::-1]))
            except cv2.error:  # opencv-python-headless (the camera extra) has no GUI
                raise SourceError("--display needs OpenCV with a GUI: pip install opencv-python (the headless build "
                                  "that wmoe[camera] installs cannot open windows); or write overlays with --out")
            if cv2.waitKey(1) & 0xFF == ord("q"):
                stop.set()

    policy = a.drop
    try:
        stats = run_loop(frames, rt.score, batch=a.batch, queue_size=a.queue, drop=policy, max_frames=a.max_frames,
                         on_result=on_result, report=lambda s: print(s.line(policy), flush=True),
                         report_every=a.report_every, stop=stop)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except WMoEError as e:
        print(f"wmoe-camera: error: {e}", file=sys.stderr)
        return 2
    finally:
        rt.close()
    print("final: " + stats.line(policy), flush=True)
    return 1 if stats.undecided and thr is not None else 0


if __name__ == "__main__":
    sys.exit(main())
