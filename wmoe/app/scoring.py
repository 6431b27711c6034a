"""The app's one door to a model: score one RGB image, get its score and its anomaly map at the overlay's size.

Two kinds of model, chosen by the file:

- an exported model (``.onnx``, ``.engine``/``.plan``) runs through the torch-free :class:`wmoe.runtime.Runtime`
  (``pip install "wmoe[app]"`` is enough: no torch);
- anything else is a training checkpoint, scored by the torch :class:`wmoe.detector.Detector` exactly as
  ``wmoe predict`` scores it (same call, same ``max_map_side``), so the page shows predict's score and picture.

Both carry their :class:`~wmoe.contract.Decision` (the checkpoint's ``CKPT.threshold.json``, the ONNX metadata or
the engine sidecar). Scoring is serialized by a lock: one model, one request at a time (the page is a demo, not a
server farm), which also bounds the memory a burst of uploads can take.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..contract import Decision, decision_carrier
from ..errors import NonFiniteError
from ..overlay import fit_size
from ..runtime.registry import suffixes

#: exported-model suffixes that go through the torch-free runtime (wmoe.runtime.Runtime.open): the registry's
RUNTIME_SUFFIXES = suffixes(exported_only=True)


def _finite(res, i: int) -> None:
    """The app shows no verdict for a faulty output (the runtime's NaN policy marked it undecided): it says why."""
    if res.faults[i]:
        raise NonFiniteError(f"the model gave no verdict for this image: {res.faults[i]}")


@dataclass
class Scored:
    """One image's result: ``score`` (s_hat), ``text_score`` (s_txt), ``amap`` the anomaly map (float32) at
    ``fit_size(H, W, max_side)``, and how long the model took (ms)."""

    score: float
    text_score: float
    amap: np.ndarray
    model_ms: float


class Scorer:
    """A model the app scores with. ``kind``: ``checkpoint``, ``onnx`` or ``engine``; ``decision``: the stored one."""

    kind: str = ""
    decision: Decision
    path: Path

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def score(self, image: np.ndarray, max_side: int) -> Scored:
        """Score RGB uint8 HxWx3 ``image``; a non-finite score or map raises :class:`NonFiniteError`."""
        with self._lock:
            t = time.perf_counter()
            score, text_score, amap = self._score(image, int(max_side))
            ms = (time.perf_counter() - t) * 1e3
        return Scored(float(score), float(text_score), np.asarray(amap, np.float32), ms)

    def _score(self, image: np.ndarray, max_side: int) -> "tuple[float, float, np.ndarray]":
        """(score, text score, map at ``fit_size(H, W, max_side)``) of one image."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.path.name} ({self.kind})"

    def close(self) -> None:
        pass


class RuntimeScorer(Scorer):
    """An exported model through :class:`wmoe.runtime.Runtime` (numpy + onnxruntime or TensorRT; no torch)."""

    def __init__(self, path: Path, provider: str = "cpu", threads: int = 0) -> None:
        super().__init__()
        from ..runtime import Runtime
        self.path = path
        self.runtime = Runtime.open(path, provider=provider, threads=threads)
        self.kind = decision_carrier(path)  # "onnx" or "engine"
        self.decision = self.runtime.decision
        self.provider = provider

    def _score(self, image, max_side):
        res = self.runtime.score([image])
        _finite(res, 0)
        return res.scores[0], res.text_scores[0], res.maps_at(0, fit_size(image.shape[0], image.shape[1], max_side))

    def describe(self) -> str:
        return f"{self.path.name} (exported {self.kind}, wmoe.runtime, {self.provider})"

    def close(self) -> None:
        self.runtime.close()


class CheckpointScorer(Scorer):
    """A training checkpoint through the torch :class:`wmoe.detector.Detector`, as ``wmoe predict`` runs it."""

    def __init__(self, path: Path, pretrained: Optional[str] = None, device: Optional[str] = None) -> None:
        super().__init__()
        from ..detector import Detector  # torch: only for checkpoints
        self.path = path
        # the decision stored beside it (CKPT.threshold.json, refused when calibrated on another checkpoint; a
        # checkpoint from before threshold files kept its threshold inside): the Detector's runtime reads it
        self.detector = Detector.from_checkpoint(path, pretrained=pretrained, device=device, batch_size=1)
        self.decision = self.detector.decision
        self.kind = "checkpoint"

    def _score(self, image, max_side):
        # wmoe predict's call (det(images, max_map_side=overlay_size)): the map comes back at fit_size(H, W, max_side)
        res = self.detector([image], max_map_side=max_side)
        _finite(res, 0)
        return res.scores[0], res.text_scores[0], res.maps[0]

    def describe(self) -> str:
        return f"{self.path.name} (checkpoint, torch Detector on {self.detector.device})"


def open_scorer(model: Union[str, Path], provider: str = "cpu", threads: int = 0, pretrained: Optional[str] = None,
                device: Optional[str] = None) -> Scorer:
    """The scorer for ``model``: an exported ``.onnx``/``.engine``/``.plan`` through the runtime (``provider``,
    ``threads``), anything else as a checkpoint through the Detector (``pretrained``, ``device``)."""
    path = Path(model)
    if path.suffix.lower() in RUNTIME_SUFFIXES:
        return RuntimeScorer(path, provider=provider, threads=threads)
    return CheckpointScorer(path, pretrained=pretrained, device=device)
