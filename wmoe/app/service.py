"""What the page can ask, without HTTP: score an upload or a demo image, re-decide at other thresholds, info, stats.

Scoring keeps each result (score, the anomaly map and the image at the overlay's size) in a bounded cache, so
moving a threshold re-decides and redraws from the cache — the model never runs again (:meth:`AppService.decide`,
counted apart from scoring in :meth:`AppService.stats`). Decisions go through the contract's
:class:`~wmoe.contract.Decision` (verdict, defect mask) and pictures through :func:`wmoe.overlay.overlay_panel`,
the one overlay of ``wmoe predict`` and the camera loop.

Every problem with an upload is a :class:`~wmoe.errors.WMoEError` whose one-line message names the file; the server
shows it on the page.
"""
from __future__ import annotations

import io
import itertools
import math
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import PurePath
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from .. import __version__
from ..contract import Decision
from ..errors import UsageError, printable
from ..image_io import MAX_IMAGE_PIXELS, DataError, ReducedDecodeWarning, load_image_bytes
from ..overlay import _resize_rgb, fit_size, overlay_panel
from .demo_set import DemoSet
from .scoring import Scorer


@dataclass
class AppConfig:
    overlay_size: int = 512                 # px per panel: wmoe predict's default, so the pictures are the same
    max_upload_bytes: int = 32_000_000
    cache_entries: int = 48                 # scored images kept for re-deciding (~2 MB each at 512 px)


@dataclass
class Entry:
    """One scored image as the cache keeps it (image and map at the overlay's size, never the full frame)."""

    id: str
    name: str
    image: np.ndarray
    amap: np.ndarray
    score: float
    text_score: float
    size: "tuple[int, int]"   # the original H, W
    decode_ms: float
    model_ms: float
    cls: str = ""             # the demo image's class ("" for uploads)
    notes: List[str] = field(default_factory=list)


class UnknownResultError(DataError):
    """A result id that is not (or no longer) in the cache."""


def _as_threshold(v: Any, what: str) -> Optional[float]:
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number, got {printable(str(v))[:40]!r}") from None
    if not math.isfinite(f):
        raise UsageError(f"{what} must be finite, got {v!r}")
    return f


class AppService:
    """The app's state: one :class:`Scorer`, an optional :class:`DemoSet`, the result cache and request counts."""

    def __init__(self, scorer: Scorer, demo: Optional[DemoSet] = None, cfg: Optional[AppConfig] = None) -> None:
        self.scorer, self.demo, self.cfg = scorer, demo, cfg or AppConfig()
        self._cache: "OrderedDict[str, Entry]" = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._counts = {"scored": 0, "decided": 0, "rendered": 0, "rejected": 0, "failed": 0}

    # --- counters ---------------------------------------------------------------------------------------------

    def count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def stats(self) -> Dict[str, int]:
        """Requests so far: ``scored`` (model runs), ``decided`` (re-decisions from the cache), ``rendered``
        (overlay pictures drawn from the cache), ``rejected`` (bad uploads or requests), ``failed`` (internal
        errors), and how many results the cache holds."""
        with self._lock:
            return {**self._counts, "cached": len(self._cache)}

    # --- what the page shows first ----------------------------------------------------------------------------

    def class_thresholds(self) -> Dict[str, Dict[str, Optional[float]]]:
        """Per-class (per-product) thresholds of the stored decision (``wmoe calibrate`` on a set with classes):
        ``{class: {threshold, pixel_threshold}}``, each the class's own or the global one."""
        d = self.scorer.decision
        return {c: {"threshold": d.threshold_for(c), "pixel_threshold": d.pixel_threshold_for(c)} for c in d.classes}

    def decision_for(self, cls: str = "", threshold: Any = None, pixel_threshold: Any = None) -> Decision:
        """The decision an image is judged by: the stored one for class ``cls`` (its per-class thresholds; "" the
        global ones), with the page's threshold / pixel threshold in place of the stored ones when given. Returned
        with that class's numbers as its global ones, so one :class:`Decision` describes it."""
        base = self.scorer.decision
        if cls and cls not in base.classes:
            raise UsageError(f"class {printable(cls)[:80]!r} has no threshold of its own in this model "
                             f"(known: {', '.join(base.classes) or 'none'})")
        d = base.with_overrides(_as_threshold(threshold, "threshold"),
                                _as_threshold(pixel_threshold, "pixel threshold"))
        c = cls or None
        return Decision(threshold=d.threshold_for(c), pixel_threshold=d.pixel_threshold_for(c), score=d.score,
                        calibration=d.calibration)

    def info(self) -> Dict[str, Any]:
        d = self.scorer.decision
        return {"model": self.scorer.describe(), "kind": self.scorer.kind, "version": __version__,
                "threshold": d.threshold, "pixel_threshold": d.pixel_threshold, "score_meaning": d.score,
                "classes": self.class_thresholds(), "demo": self.demo is not None,
                "overlay_size": self.cfg.overlay_size, "max_upload_bytes": self.cfg.max_upload_bytes,
                "max_image_pixels": MAX_IMAGE_PIXELS}

    def demo_images(self) -> List[Dict[str, str]]:
        return self.demo.to_json() if self.demo is not None else []

    # --- scoring ----------------------------------------------------------------------------------------------

    def score_upload(self, data: bytes, name: str) -> Entry:
        """Decode and score the bytes of an image file called ``name``; one-line errors name it."""
        name = printable(name or "upload")[:200]
        if len(data) > self.cfg.max_upload_bytes:
            raise DataError(f"{name}: {len(data) / 1e6:.1f} MB is above the upload limit of "
                            f"{self.cfg.max_upload_bytes / 1e6:.1f} MB (wmoe app --max-upload-mb)")
        t = time.perf_counter()
        notes: List[str] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReducedDecodeWarning)
            image = load_image_bytes(data, name)  # load_image's policy: empty, not an image, truncated, too large
        notes += [str(w.message) for w in caught if issubclass(w.category, ReducedDecodeWarning)]
        notes += _format_notes(data, name)
        decode_ms = (time.perf_counter() - t) * 1e3
        return self._score(image, name, decode_ms, notes)

    def score_demo(self, rel: str) -> Entry:
        if self.demo is None:
            raise UsageError("this app was started without a demo set (wmoe app MODEL --demo DIR)")
        path, im = self.demo.resolve(rel)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise DataError(f"{rel}: cannot be read ({e.strerror})") from None
        entry = self.score_upload(data, im.path)
        entry.cls = im.cls
        return entry

    def _score(self, image: np.ndarray, name: str, decode_ms: float, notes: List[str]) -> Entry:
        size = self.cfg.overlay_size
        scored = self.scorer.score(image, size)
        self.count("scored")
        small = _resize_rgb(image, fit_size(image.shape[0], image.shape[1], size))  # what overlay_panel draws
        entry = Entry(f"r{next(self._ids)}", name, small, scored.amap, scored.score, scored.text_score,
                      (int(image.shape[0]), int(image.shape[1])), decode_ms, scored.model_ms, notes=notes)
        with self._lock:
            self._cache[entry.id] = entry
            while len(self._cache) > self.cfg.cache_entries:
                self._cache.popitem(last=False)
        return entry

    def get(self, rid: str) -> Entry:
        with self._lock:
            entry = self._cache.get(rid)
            if entry is not None:
                self._cache.move_to_end(rid)
        if entry is None:
            raise UnknownResultError(f"result {printable(rid)[:40]!r} is no longer kept (the app keeps the last "
                                     f"{self.cfg.cache_entries}): score the image again")
        return entry

    # --- deciding (no model run) ------------------------------------------------------------------------------

    def view(self, entry: Entry, decision: Decision) -> Dict[str, Any]:
        """What the page shows of one result under ``decision`` (verdict, defect area, timings, notes)."""
        verdict = decision.verdicts(np.array([entry.score]))[0]
        mask = decision.mask(entry.amap)
        return {"id": entry.id, "name": entry.name, "cls": entry.cls, "score": entry.score,
                "text_score": entry.text_score, "threshold": decision.threshold,
                "pixel_threshold": decision.pixel_threshold, "verdict": verdict,
                "defect_area": None if mask is None else float(mask.mean()),
                "height": entry.size[0], "width": entry.size[1], "decode_ms": round(entry.decode_ms, 1),
                "model_ms": round(entry.model_ms, 1), "notes": entry.notes}

    def overlay_png(self, entry: Entry, decision: Decision, cls: str = "") -> bytes:
        """``wmoe predict``'s overlay picture of ``entry`` under ``decision`` (of class ``cls``), as PNG bytes."""
        verdict = decision.verdicts(np.array([entry.score]))[0]
        # predict's call, label included (the file's name), so the page shows predict's picture
        panel = overlay_panel(entry.image, entry.amap, entry.score, decision.threshold,
                              max_side=self.cfg.overlay_size, pixel_threshold=decision.pixel_threshold,
                              verdict=verdict, label=PurePath(entry.name).name + (f"  class {cls}" if cls else ""))
        self.count("rendered")
        buf = io.BytesIO()
        Image.fromarray(panel).save(buf, "PNG", compress_level=1)  # speed over size: it travels over loopback
        return buf.getvalue()

    def decide(self, ids: Sequence[str], cls: str = "", threshold: Any = None, pixel_threshold: Any = None
               ) -> Dict[str, Any]:
        """Re-decide cached results at other thresholds: ``{"decision": ..., "results": [view, ...]}``; results no
        longer cached are listed under ``missing``."""
        decision = self.decision_for(cls, threshold, pixel_threshold)
        self.count("decided")
        results, missing = [], []
        for rid in list(ids)[:500]:
            try:
                results.append(self.view(self.get(str(rid)), decision))
            except UnknownResultError:
                missing.append(str(rid))
        return {"threshold": decision.threshold, "pixel_threshold": decision.pixel_threshold, "cls": cls,
                "results": results, "missing": missing}


def _format_notes(data: bytes, name: str) -> List[str]:
    """What the page should say about how the file was read (its header only; the pixels are decoded already)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode, fmt, transparent = im.mode, im.format, "transparency" in im.info
    except Exception:  # noqa: BLE001 - decoding already succeeded; a note is optional
        return []
    if mode.startswith("I;16") or mode == "I":
        return [f"{name}: 16-bit {fmt} image, scaled to 8 bits (x/257) as wmoe predict reads it"]
    if mode == "F":
        return [f"{name}: floating-point {fmt} image, scaled to 8 bits as wmoe predict reads it"]
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and transparent):
        return [f"{name}: transparency dropped (pixels used as stored)"]
    return []
