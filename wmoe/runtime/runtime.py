"""The embeddable runtime: open an exported model, score frames, get a verdict. numpy in, numpy out; no torch.

The model file carries its contract (:class:`wmoe.contract.ModelMeta`): input kind and size, preprocessing, and
the decision (image threshold, optional pixel threshold) — so ``Runtime.open(path).score(frames)`` returns
verdicts and defect masks with no flags. A non-finite score or map is a fault: that image's verdict is
``undecided`` (never ``normal``) and :attr:`Result.faults` names it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..contract import INPUT_FRAMES, OUTPUT_NAMES, ContractError, Decision, ModelMeta
from .frames import FrameError, check_frames, frames_to_size, preprocess_frames, resize_map
from .registry import open_backend, providers

#: every ``provider=`` of :meth:`Runtime.open` for an ONNX model (from :data:`wmoe.runtime.registry.BACKENDS`:
#: ONNX Runtime's execution providers, then ``openvino``). The CLIs take their choices from here.
RUNTIME_PROVIDERS: Tuple[str, ...] = providers(".onnx")


@dataclass
class Result:
    scores: np.ndarray       # (N,) image scores s_hat
    text_scores: np.ndarray  # (N,) s_txt
    maps: np.ndarray         # (N, S, S) anomaly maps at the model's input size
    frame_sizes: list
    decision: Decision = field(default_factory=Decision)
    verdicts: List[str] = field(default_factory=list)  # per image: anomalous / normal / undecided
    faults: List[str] = field(default_factory=list)    # per image: "" or what is wrong (non-finite output)
    class_name: Optional[str] = None                   # the product class whose thresholds judged these images

    def maps_at(self, i: int, hw: Optional["tuple[int, int]"] = None) -> np.ndarray:
        """Map ``i`` resized to ``hw`` (default: that frame's own size)."""
        return resize_map(self.maps[i], hw or self.frame_sizes[i])

    def mask_at(self, i: int, hw: Optional["tuple[int, int]"] = None) -> Optional[np.ndarray]:
        """Boolean defect mask of image ``i`` at ``hw`` (default: its frame size); None without a pixel threshold."""
        return self.decision.mask(self.maps_at(i, hw), self.class_name)

    @property
    def threshold(self) -> Optional[float]:
        """The image threshold these verdicts were taken at."""
        return self.decision.threshold_for(self.class_name)


class Runtime:
    """``Runtime.open("model.onnx" | "model.engine")`` then ``rt.score(frames)``. ``provider="openvino"`` runs an
    ONNX with OpenVINO on the CPU (``precision="auto"|"f32"|"bf16"|"int8"``, ``batch=``; docs/runtime.md).

    ``threshold`` / ``pixel_threshold`` override the decision stored in the model file (for every class).
    ``class_name``: the product this runtime judges by default, when the decision has per-class thresholds
    (``wmoe calibrate`` on a set with classes); ``score(frames, class_name=...)`` picks another per call.
    ``allow_cpu_fallback``: a ``provider`` that cannot be had runs on the CPU with a warning instead of an error.
    """

    def __init__(self, backend, threshold: Optional[float] = None, pixel_threshold: Optional[float] = None,
                 class_name: Optional[str] = None) -> None:
        self.backend = backend
        self.decision = self.meta.decision.with_overrides(threshold, pixel_threshold)
        self.decision.check_class(class_name)
        self.class_name = class_name

    @classmethod
    def open(cls, path: Union[str, Path], provider: str = "cpu", threads: int = 0,
             threshold: Optional[float] = None, pixel_threshold: Optional[float] = None,
             class_name: Optional[str] = None, allow_cpu_fallback: bool = False, **kw) -> "Runtime":
        """Open the model file at ``path`` with the backend :mod:`wmoe.runtime.registry` names for its suffix and
        ``provider`` (``kw``: that backend's own options); a training checkpoint (``.safetensors``) runs in PyTorch
        (:mod:`wmoe.torch_backend`, imported only then; ``provider`` ``cpu`` or ``cuda``)."""
        path = Path(path)
        if not path.is_file():
            raise ContractError(f"{path}: no such model file")
        backend = open_backend(path, provider, threads, allow_cpu_fallback, **kw)
        return cls(backend, threshold, pixel_threshold, class_name)

    @property
    def meta(self) -> ModelMeta:
        return self.backend.meta

    @property
    def input_size(self) -> int:
        return self.meta.image_size

    def preprocess(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return preprocess_frames(frames, self.meta.preprocess)

    def score(self, frames: Union[np.ndarray, Sequence[np.ndarray]], class_name: Optional[str] = None) -> Result:
        """Score RGB uint8 frames (OpenCV gives BGR: convert with ``frame[..., ::-1]``), judged by the thresholds
        of ``class_name`` (default: the runtime's)."""
        cls_name = self._class(class_name)
        fr = check_frames(frames)
        sizes = [tuple(f.shape[:2]) for f in fr]
        if self.meta.input == INPUT_FRAMES:
            want = tuple(self.meta.frame_size)
            if want == (self.input_size, self.input_size):  # model-sized frame input: other sizes resized here
                fr = frames_to_size(fr, self.meta.preprocess)
            for i, f in enumerate(fr):
                if tuple(f.shape[:2]) != want:
                    raise FrameError(f"frame {i}: this model takes {want[0]}x{want[1]} frames (in-graph "
                                     f"preprocessing), got {f.shape[0]}x{f.shape[1]}")
            x = np.ascontiguousarray(np.stack(fr))
            return self._run(x, sizes, cls_name)
        return self._run(self.preprocess(fr), sizes, cls_name)

    def _class(self, class_name: Optional[str]) -> Optional[str]:
        if class_name is None:
            return self.class_name
        self.decision.check_class(class_name)
        return class_name

    def score_preprocessed(self, x: np.ndarray, frame_sizes: Optional[list] = None,
                           class_name: Optional[str] = None) -> Result:
        """Score an already preprocessed batch (the model's input tensor: numpy, or what the backend takes — the
        torch backend takes a torch tensor already on its device); non-finite numpy input is refused."""
        if not isinstance(x, np.ndarray) and type(x).__module__.split(".")[0] != "torch":
            x = np.asarray(x)
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = sorted({int(i) for i in np.nonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0]})
            raise FrameError(f"input batch holds NaN or infinite values (images {bad})")
        return self._run(x, frame_sizes, self._class(class_name))

    def _run(self, x: np.ndarray, frame_sizes: Optional[list], class_name: Optional[str] = None) -> Result:
        out = self.backend.run(x)
        scores, maps, text_scores = (out[name].astype(np.float32) for name in OUTPUT_NAMES)
        n = scores.shape[0]
        verdicts, faults = self.decision.judge(scores, maps, text_scores, class_name)
        return Result(scores, text_scores, maps,
                      frame_sizes or [tuple(maps.shape[1:])] * n, self.decision, verdicts, faults, class_name)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
