"""Frame sources of the camera loop: image folders and files, video files, live cameras and streams (no torch).

A source is *live* when frames keep coming whether or not they are scored (a camera index, ``/dev/video*``, a
stream URL): only a live source may drop frames when inference falls behind. A folder, an image file or a video file
is read as fast as it is scored, so it never drops: the loop blocks on it.

A frame that cannot be decoded is *skipped*, not the end of the source: a damaged image in a folder, a damaged frame
in the middle of a video (OpenCV's ``read()`` fails once on it and goes on with the next frame). A skipped frame is a
:class:`Frame` with ``rgb=None``, named on stderr through ``warn`` and counted by the loop.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import numpy as np

from ..contract import is_image_name
from ..errors import WMoEError

#: URL schemes that are live streams (OpenCV/FFmpeg opens them like a video file, but frames come on their own clock).
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp")

#: Consecutive failed reads after which a video or camera is considered ended (a damaged frame fails one read).
MAX_FAILED_READS = 25


class SourceError(WMoEError, ValueError):
    """The frame source cannot be opened (missing path, empty folder, camera/video that does not open)."""


@dataclass
class Frame:
    index: int                    # position in the source (damaged frames keep their place: indices never shift)
    name: str                     # file name, or "frame_<index>"
    rgb: Optional[np.ndarray]     # uint8 HxWx3 RGB; None: damaged, skipped (named through ``warn``)
    time: float = 0.0             # wall-clock time (time.time()) when the frame was read
    t_read: float = 0.0           # time.perf_counter() when it was read: the latency clock


def is_live(source: str) -> bool:
    """A camera index, a ``/dev/video*`` device or a stream URL: frames arrive on their own clock."""
    s = str(source)
    if s.isdigit() or s.startswith("/dev/video"):
        return True
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", s)
    return bool(m) and m.group(1).lower() in LIVE_SCHEMES


class Source:
    """Iterable of :class:`Frame` with what the loop must know: ``name`` (for result lines) and ``live``."""

    def __init__(self, name: str, live: bool, frames: Iterator[Frame]) -> None:
        self.name, self.live, self._frames = name, live, frames

    def __iter__(self) -> Iterator[Frame]:
        return self._frames


def _cv2():
    try:
        import cv2  # type: ignore
    except ImportError:
        from ..errors import MissingDependencyError
        raise MissingDependencyError("opencv-python-headless", "camera", "video files and cameras") from None
    return cv2


def open_source(source: str, warn: Callable[[str], None]) -> Source:
    """Frames from an image folder (sorted), an image file, a video file, a camera index or a stream URL; a
    :class:`SourceError` right away when the source cannot be opened (so a bad path never hangs the loop)."""
    source = str(source)
    p = Path(source)
    live = is_live(source)
    if not live and p.is_dir():
        # a dangling or self-looping symlink with an image name is kept: the loader warns and it counts as skipped
        # (is_file() alone would drop it without a word)
        files = sorted(f for f in p.iterdir() if is_image_name(f) and (f.is_file() or f.is_symlink()))
        if not files:
            raise SourceError(f"{p}: no image files found (looked for {', '.join(sorted({'.png', '.jpg', '.bmp'}))} "
                              f"and the other image suffixes)")
        return Source(source, False, _folder(files, warn))
    if not live and not p.exists():
        raise SourceError(f"{source}: no such file, folder or camera index")
    if p.is_file() and is_image_name(p):
        return Source(source, False, _folder([p], warn))
    cv2 = _cv2()
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise SourceError(f"cannot open video source {source!r} (not a video OpenCV can read, or no such camera)")
    return Source(source, live, _video(cap, source, live, warn))


def _folder(files: List[Path], warn: Callable[[str], None]) -> Iterator[Frame]:
    from ..image_io import DataError, load_image
    for i, f in enumerate(files):
        t, t_read = time.time(), time.perf_counter()
        try:
            rgb = load_image(f)
        except DataError as e:
            warn(f"{e} (skipped)")
            yield Frame(i, f.name, None, t, t_read)
            continue
        yield Frame(i, f.name, rgb, t, t_read)


def _video(cap, source: str, live: bool, warn: Callable[[str], None]) -> Iterator[Frame]:
    """Frames of an opened ``cv2.VideoCapture``. A failed read is a damaged frame when a good one follows (it is
    yielded as skipped); :data:`MAX_FAILED_READS` failures in a row end the source. A file whose header announced
    more frames than could be read says so (the missing tail counts as skipped)."""
    cv2 = _cv2()
    announced = 0 if live else int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT), 0))
    try:
        i, failed = 0, 0
        while True:
            t, t_read = time.time(), time.perf_counter()
            ok, bgr = cap.read()
            if not ok or bgr is None:
                failed += 1
                if failed >= MAX_FAILED_READS:
                    break
                if live:
                    time.sleep(0.02)  # a camera between frames / reconnecting: do not spin
                continue
            for k in range(failed):  # the failed reads before this good frame were damaged frames
                warn(f"{source}: frame {i + k} cannot be decoded (skipped)")
                yield Frame(i + k, f"frame_{i + k:06d}", None, t, t_read)
            i += failed
            failed = 0
            yield Frame(i, f"frame_{i:06d}", np.ascontiguousarray(bgr[:, :, ::-1]), t, t_read)
            i += 1
        if announced > i:  # damaged frames at the very end: accounted, not silently missing
            warn(f"{source}: its header announces {announced} frames, {announced - i} after frame {i - 1} cannot be "
                 f"read (skipped)")
            for k in range(i, announced):
                yield Frame(k, f"frame_{k:06d}", None, time.time(), time.perf_counter())
        elif live and failed >= MAX_FAILED_READS:
            warn(f"{source}: {failed} reads failed in a row: the camera or stream is gone, ending")
    finally:
        cap.release()
