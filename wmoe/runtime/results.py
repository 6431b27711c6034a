"""One result per scored frame, and the files it goes to: JSON Lines or CSV, one line per frame (no torch).

:class:`FrameResult` is what leaves the loop for every frame — to ``--results out.jsonl|out.csv``, to MQTT
(:mod:`wmoe.runtime.mqtt`), to a Python caller (:func:`wmoe.runtime.loop.stream`). Fields:

=============  =====================================================================================================
``source``     the source as given (folder, video file, camera index, stream URL)
``frame``      the frame's index in the source (damaged frames keep their index: numbers never shift)
``name``       the file name, or ``frame_<index>``
``time``       when the frame was read, UTC, ISO 8601 with microseconds
``score``      the image score (null when the model's output was not finite)
``verdict``    ``anomalous`` / ``normal`` / ``undecided`` (no threshold, or a fault: never ``normal``)
``class``      the product class whose thresholds judged the frame (null: the global threshold)
``threshold``  the image threshold the verdict was taken at (null: none known)
``defect_area`` share of the image at or above the pixel threshold, in [0, 1], on the model's SxS map (the squash
               resize scales areas alike, so it is the frame's share); null without a pixel threshold
``latency_ms`` from the frame being read to its verdict (queueing + preprocessing + inference)
``fault``      empty, or what is wrong (non-finite output)
=============  =====================================================================================================

Durability: a result file is an append stream. Each line is handed to the operating system in one unbuffered
``write`` before the next frame's result (a crash of the process loses nothing already scored, at most the line being written
when it died); ``fsync`` runs every ``fsync_every`` lines and at close (a power cut loses at most that many lines;
``fsync_every=1`` for every line, at the cost of a disk sync per frame). The file is never rewritten: an existing
file is refused unless ``append=True``, so the results of an earlier run are never lost. A CSV gets its header only
when it starts empty.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Dict, Optional, Union

from ..errors import WMoEError, write_failure

#: The columns of a result line, in order (the CSV header; the JSON keys).
FIELDS = ("source", "frame", "name", "time", "score", "verdict", "class", "threshold", "defect_area", "latency_ms",
          "fault")
RESULT_SUFFIXES = (".jsonl", ".csv")


class ResultsError(WMoEError, ValueError):
    """The results file cannot be opened (bad suffix, exists, unwritable)."""


@dataclass
class FrameResult:
    source: str
    frame: int
    name: str
    time: str
    score: Optional[float]
    verdict: str
    class_name: Optional[str]
    threshold: Optional[float]
    defect_area: Optional[float]
    latency_ms: float
    fault: str = ""

    def to_dict(self) -> Dict[str, Any]:
        """The result as a JSON-ready dict with the keys of :data:`FIELDS` (``class_name`` is ``class``)."""
        d = asdict(self)
        d["class"] = d.pop("class_name")
        return {k: d[k] for k in FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False)


def iso_time(t: float) -> str:
    """``time.time()`` -> ``2026-12-06T02:40:01.123456Z``."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def finite_or_none(v: float, digits: int = 6) -> Optional[float]:
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def check_results_path(path: Union[str, Path]) -> Path:
    """``path`` as a results file name: a suffix of :data:`RESULT_SUFFIXES`, not a folder (``wmoe-camera
    --results`` checks it while parsing; :class:`ResultFile` again when it opens)."""
    path = Path(path)
    if path.is_dir():
        raise ResultsError(f"{path}: is a folder, not a results file")
    suffix = path.suffix.lower()
    if suffix not in RESULT_SUFFIXES:
        raise ResultsError(f"{path}: results go to a {' or '.join(RESULT_SUFFIXES)} file "
                           f"(got {suffix or 'no suffix'!r})")
    return path


class ResultFile:
    """Append one line per result to ``path`` (``.jsonl`` or ``.csv``); see the module doc for durability."""

    def __init__(self, path: Union[str, Path], append: bool = False, fsync_every: int = 50) -> None:
        self.path = check_results_path(path)
        if self.path.exists() and not append:
            raise ResultsError(f"{self.path}: exists (results are never overwritten): remove it, choose another "
                               f"name, or append with --results-append")
        if not self.path.parent.is_dir():
            raise ResultsError(f"{self.path}: folder {self.path.parent} does not exist")
        self.csv = self.path.suffix.lower() == ".csv"
        self.fsync_every = max(int(fsync_every), 0)
        self.lines = 0
        try:  # unbuffered: each line is one write() to the OS, so nothing waits in this process's memory
            self._f: IO[bytes] = open(self.path, "ab", buffering=0)
        except OSError as e:
            raise ResultsError(f"{self.path}: cannot be written ({e.strerror or e})") from None
        if self.csv and self._f.tell() == 0:
            self._write(",".join(FIELDS) + "\n")

    def _write(self, line: str) -> None:
        data = line.encode("utf-8")
        start = self._f.tell()
        try:
            n = self._f.write(data)
            if n != len(data):  # a short write: the disk filled up in the middle of the line
                raise OSError(28, f"only {n} of {len(data)} bytes of a line written (disk full?)")
            if self.fsync_every and (self.lines + 1) % self.fsync_every == 0:
                os.fsync(self._f.fileno())
        except OSError as e:
            try:  # no torn last line for a reader tailing the file: cut back to the end of the last whole line
                os.ftruncate(self._f.fileno(), start)
            except OSError:
                pass
            why = write_failure(e) or (e.strerror or str(e))  # ENOSPC and EFBIG: one message
            raise ResultsError(f"cannot write {self.path}: {why}; the {self.lines} lines written before are "
                               "kept") from None

    def write(self, r: FrameResult) -> None:
        if self.csv:
            buf = io.StringIO()
            d = r.to_dict()
            csv.writer(buf, lineterminator="\n").writerow(["" if d[k] is None else d[k] for k in FIELDS])
            line = buf.getvalue()
        else:
            line = r.to_json() + "\n"
        self._write(line)
        self.lines += 1

    def close(self) -> None:
        if self._f.closed:
            return
        try:
            os.fsync(self._f.fileno())
        except OSError:
            pass  # nothing is buffered here; a sync that fails (a full disk) must not hide the error that ended the run
        finally:
            self._f.close()

    def __enter__(self) -> "ResultFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
