"""The embeddable runtime: open an exported model, score frames. numpy in, numpy out; torch is never imported."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .frames import CLIP_MEAN, CLIP_STD, FrameError, check_frames, preprocess_frames, resize_map


@dataclass
class Result:
    scores: np.ndarray       # (N,) image scores s_hat
    text_scores: np.ndarray  # (N,) s_txt
    maps: np.ndarray         # (N, S, S) anomaly maps at the model's input size
    frame_sizes: list

    def maps_at(self, i: int, hw: Optional["tuple[int, int]"] = None) -> np.ndarray:
        """Map ``i`` resized to ``hw`` (default: that frame's own size)."""
        return resize_map(self.maps[i], hw or self.frame_sizes[i])


class Runtime:
    """``Runtime.open("model.onnx" | "model.engine")`` then ``rt.score(frames)``."""

    def __init__(self, backend) -> None:
        self.backend = backend

    @classmethod
    def open(cls, path: Union[str, Path], provider: str = "cpu", threads: int = 0, **kw) -> "Runtime":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file")
        if path.suffix == ".onnx":
            from .onnx_backend import OnnxBackend
            return cls(OnnxBackend(path, provider=provider, threads=threads))
        if path.suffix in (".engine", ".plan"):
            from .trt_backend import TrtBackend
            return cls(TrtBackend(path, **kw))
        raise ValueError(f"{path}: unknown model type (expected .onnx, .engine or .plan)")

    @property
    def input_size(self) -> int:
        return self.backend.image_size

    def preprocess(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        return preprocess_frames(frames, self.input_size, self.backend.mean or CLIP_MEAN,
                                 self.backend.std or CLIP_STD)

    def score(self, frames: Union[np.ndarray, Sequence[np.ndarray]]) -> Result:
        """Score RGB uint8 frames (OpenCV gives BGR: convert with ``frame[..., ::-1]``)."""
        fr = check_frames(frames)
        sizes = [f.shape[:2] for f in fr]
        if self.backend.input_kind == "frames":
            want = self.backend.frame_size
            for i, f in enumerate(fr):
                if want and tuple(f.shape[:2]) != tuple(want):
                    raise FrameError(f"frame {i}: this model takes {want[0]}x{want[1]} frames (in-graph "
                                     f"preprocessing), got {f.shape[0]}x{f.shape[1]}")
            x = np.ascontiguousarray(np.stack(fr))
        else:
            x = self.preprocess(fr)
        return self.score_preprocessed(x, sizes)

    def score_preprocessed(self, x: np.ndarray, frame_sizes: Optional[list] = None) -> Result:
        """Score an already preprocessed batch (the model's input tensor)."""
        out = self.backend.run(x)
        n = out["scores"].shape[0]
        return Result(out["scores"].astype(np.float32), out["text_scores"].astype(np.float32),
                      out["maps"].astype(np.float32), frame_sizes or [out["maps"].shape[1:]] * n)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
