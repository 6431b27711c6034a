"""The camera loop: capture -> bounded queue -> batch -> score -> one result per frame; capture and inference
pipelined (no torch).

Two ways in:

- :func:`stream` — the Python API: ``for r in stream("line3/", rt): plc.send(r.verdict)`` yields one
  :class:`~wmoe.runtime.results.FrameResult` per scored frame, in source order; ``.stats`` accounts for every frame
  read. Breaking out of the ``for`` stops the capture thread.
- :func:`run_loop` — the same loop over any iterable of :class:`~wmoe.runtime.sources.Frame` and any ``score``
  callable, with a callback ``on_result(frame, result, i)``; ``wmoe-camera`` is built on it.

Drop policy: a file source (folder, image, video file) is read as fast as it is scored, so it blocks and never
drops. Only a live source (camera, stream) may drop when inference falls behind: ``oldest`` (its default: keep the
freshest frames), ``newest`` (discard the incoming frame), or ``block`` (the capture waits; the camera driver may drop
instead). Every frame read is accounted: ``read = scored + skipped + dropped (+ left unscored at a stop)``.
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from ..contract import VERDICT_ANOMALOUS, VERDICT_UNDECIDED
from .results import FrameResult, finite_or_none, iso_time
from .sources import Frame, Source, SourceError, open_source

DROP_POLICIES = ("oldest", "newest", "block")


@dataclass
class LoopStats:
    read: int = 0          # frames read from the source (damaged ones included)
    dropped: int = 0       # frames discarded by the drop policy (live sources only)
    skipped: int = 0       # damaged frames / files that could not be decoded (named on stderr)
    scored: int = 0
    left: int = 0          # read but not scored because the loop was stopped (Ctrl-C, a caller's stop, an error)
    anomalous: int = 0
    undecided: int = 0     # no threshold, or a non-finite output (a fault: never "normal")
    latencies: "collections.deque" = field(default_factory=lambda: collections.deque(maxlen=1000))
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def unreadable(self) -> int:  # the name before damaged video frames were counted too
        return self.skipped

    @property
    def accounted(self) -> bool:
        return self.read == self.scored + self.skipped + self.dropped + self.left

    def balance(self) -> str:
        s = f"read {self.read} = scored {self.scored} + skipped {self.skipped} + dropped {self.dropped}"
        return s + (f" + left unscored at stop {self.left}" if self.left else "")

    def line(self, policy: str) -> str:
        ms = np.asarray(self.latencies, dtype=np.float64) * 1e3
        p50 = f"{np.percentile(ms, 50):.1f}" if ms.size else "-"
        p99 = f"{np.percentile(ms, 99):.1f}" if ms.size else "-"
        rate = self.scored / max(time.perf_counter() - self.t_start, 1e-9)
        return (f"frames {self.scored}: p50 {p50} ms, p99 {p99} ms per image, {rate:.1f} images/s, "
                f"anomalous {self.anomalous}, undecided {self.undecided}, dropped {self.dropped} (policy {policy}), "
                f"skipped {self.skipped}; {self.balance()}")


def resolve_drop(source: Source, drop: Optional[str]) -> str:
    """The drop policy for ``source``: a file source always blocks (asking it to drop is refused: nothing would be
    gained but lost frames); a live one takes ``drop`` (default ``oldest``)."""
    if drop is not None and drop not in DROP_POLICIES:
        raise ValueError(f"drop policy must be one of {DROP_POLICIES}, got {drop!r}")
    if source.live:
        return drop or "oldest"
    if drop in ("oldest", "newest"):
        raise SourceError(f"{source.name}: a folder, image or video file is read as fast as it is scored and never "
                          f"drops frames; --drop {drop} applies to live sources (camera index, stream URL) only")
    return "block"


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def iter_scored(frames: Iterable[Frame], score: Callable[[List[np.ndarray]], object], stats: LoopStats, *,
                batch: int = 4, queue_size: int = 8, drop: str = "block", max_frames: int = 0,
                stop: Optional[threading.Event] = None) -> Iterator[Tuple[Frame, object, int, float]]:
    """The loop itself: yields ``(frame, result, i, seconds_per_image)`` per scored frame, in source order.

    A capture thread feeds a bounded queue under ``drop``; batches are scored in the caller's thread by
    ``score(list of RGB frames)`` (a :class:`wmoe.runtime.Result`). A failure in the capture thread is re-raised
    here (the loop never hangs); closing the generator stops the capture thread.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if queue_size < 1:
        raise ValueError(f"queue size must be >= 1 (a bounded queue), got {queue_size}")
    if drop not in DROP_POLICIES:
        raise ValueError(f"drop policy must be one of {DROP_POLICIES}, got {drop!r}")
    stop = stop or threading.Event()
    q: "queue.Queue" = queue.Queue(maxsize=queue_size)

    def put(item) -> None:
        if drop == "block" or item is _END or isinstance(item, _Failure):
            while not stop.is_set():  # wait for room (the consumer runs until it sees the end marker)
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            if isinstance(item, Frame):
                stats.left += 1  # read, never queued: the loop was stopped
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
                    stats.skipped += 1
                    continue
                put(fr)
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, never swallowed
            put(_Failure(e))

    th = threading.Thread(target=capture, name="wmoe-capture", daemon=True)
    th.start()
    ended = False
    chunk: List[Frame] = []
    try:
        while not ended:
            chunk = []
            while len(chunk) < batch:
                try:  # poll: a stop set by the caller ends capture without an end marker
                    item = q.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():  # the capture thread may be stuck in a camera read: do not wait on it
                        ended = True
                        break
                    continue
                if isinstance(item, _Failure):
                    stats.left += len(chunk)
                    chunk = []
                    raise item.exc
                if item is _END:
                    ended = True
                    break
                chunk.append(item)
            if not chunk:
                break
            t0 = time.perf_counter()
            res = score([f.rgb for f in chunk])
            per_image = (time.perf_counter() - t0) / len(chunk)
            stats.latencies.extend([per_image] * len(chunk))
            for i, fr in enumerate(list(chunk)):
                v = res.verdicts[i]
                stats.anomalous += v == VERDICT_ANOMALOUS
                stats.undecided += v == VERDICT_UNDECIDED
                stats.scored += 1
                chunk.pop(0)  # what is left in chunk when the consumer stops here was never handed out
                yield fr, res, i, per_image
            if stop.is_set():
                break
    finally:
        stop.set()
        th.join(timeout=5)
        stats.left += len(chunk)
        while True:  # frames still queued when the loop stopped: read, not scored, counted
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            stats.left += isinstance(item, Frame)


def run_loop(frames: Iterable[Frame], score: Callable[[List[np.ndarray]], object], *, batch: int = 4,
             queue_size: int = 8, drop: str = "block", max_frames: int = 0,
             on_result: Optional[Callable[[Frame, object, int], None]] = None,
             report: Optional[Callable[[LoopStats], None]] = None, report_every: int = 50,
             stop: Optional[threading.Event] = None, stats: Optional[LoopStats] = None) -> LoopStats:
    """Run the loop to the end of ``frames`` (or ``stop``); ``on_result(frame, result, i)`` sees each scored frame
    (``result`` is the batch's :class:`wmoe.runtime.Result`, ``i`` the frame's index in it); ``report(stats)``
    every ``report_every`` scored frames. ``drop`` applies as given (see :func:`resolve_drop` for sources)."""
    stats = stats if stats is not None else LoopStats()
    for fr, res, i, _ in iter_scored(frames, score, stats, batch=batch, queue_size=queue_size, drop=drop,
                                     max_frames=max_frames, stop=stop):
        if on_result is not None:
            on_result(fr, res, i)
        if report is not None and report_every and stats.scored % report_every == 0:
            report(stats)
    return stats


def frame_result(source: str, fr: Frame, res, i: int, t_done: Optional[float] = None) -> FrameResult:
    """The :class:`FrameResult` of frame ``fr``, image ``i`` of the batch result ``res``."""
    class_name = res.class_name
    mask = res.decision.mask(res.maps[i], class_name)  # at the class's pixel threshold, on the SxS map
    t_done = time.perf_counter() if t_done is None else t_done
    return FrameResult(source=source, frame=fr.index, name=fr.name, time=iso_time(fr.time or time.time()),
                       score=finite_or_none(res.scores[i]), verdict=res.verdicts[i], class_name=class_name,
                       threshold=res.threshold, defect_area=None if mask is None else round(float(mask.mean()), 6),
                       latency_ms=round((t_done - fr.t_read) * 1e3, 3) if fr.t_read else 0.0,
                       fault=res.faults[i] if i < len(res.faults) else "")


class ResultStream:
    """Iterable of :class:`FrameResult` (see :func:`stream`); ``stats`` and ``policy`` describe the run."""

    def __init__(self, source: Source, runtime, *, batch: int, queue_size: int, policy: str, max_frames: int,
                 stop: Optional[threading.Event], class_name: Optional[str]) -> None:
        self.source, self.runtime, self.policy = source, runtime, policy
        self.stats = LoopStats()
        self._kw = dict(batch=batch, queue_size=queue_size, drop=policy, max_frames=max_frames, stop=stop)
        self._class = class_name
        self._started = False

    def _score(self, frames: List[np.ndarray]):
        return self.runtime.score(frames, class_name=self._class)

    def __iter__(self) -> Iterator[FrameResult]:
        if self._started:
            raise RuntimeError("a result stream is read once: call stream() again for another pass")
        self._started = True
        for fr, res, i, _ in iter_scored(self.source, self._score, self.stats, **self._kw):
            yield frame_result(self.source.name, fr, res, i)


def stream(source, runtime, *, batch: int = 4, queue_size: int = 8, drop: Optional[str] = None,
           max_frames: int = 0, stop: Optional[threading.Event] = None, class_name: Optional[str] = None,
           warn: Optional[Callable[[str], None]] = None) -> ResultStream:
    """Score ``source`` (a folder, image or video file, camera index or stream URL — or a
    :class:`~wmoe.runtime.sources.Source`) with ``runtime`` (:class:`wmoe.runtime.Runtime`); iterate the returned
    stream for one :class:`FrameResult` per scored frame, in source order::

        from wmoe.runtime import Runtime, stream
        with Runtime.open("model.onnx") as rt:
            results = stream("line3/", rt)
            for r in results:
                if r.verdict != "normal":
                    reject(r.name, r.score)
            print(results.stats.balance())   # read 24 = scored 24 + skipped 0 + dropped 0

    ``drop``: the policy of a live source (default ``oldest``); file sources always block. ``class_name``: the
    product whose per-class thresholds judge the frames. ``warn(message)`` hears about damaged frames (default:
    stderr). Breaking out of the loop stops the capture thread.
    """
    if class_name is not None:
        runtime.decision.check_class(class_name)  # a typo is refused before the first frame, not mid-run
    if not isinstance(source, Source):
        if warn is None:
            import sys

            def warn(msg: str) -> None:
                print(f"warning: {msg}", file=sys.stderr, flush=True)
        source = open_source(str(source), warn)
    return ResultStream(source, runtime, batch=batch, queue_size=queue_size, policy=resolve_drop(source, drop),
                        max_frames=max_frames, stop=stop, class_name=class_name)
