"""ONNX Runtime backend of the runtime (numpy in, numpy out; no torch, no onnx)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Sequence

import numpy as np

from ..contract import ModelMeta, read_onnx_contract
from .session import DEFAULT_TRT_BATCH, make_session


def session_runner(session: Any) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
    """The one "run the session, return a dict" step of an ``onnxruntime.InferenceSession``: model input ->
    ``{output name: array}`` (the backend, the quantize gate and the bench all call it)."""
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    return lambda x: dict(zip(names, session.run(None, {name: x})))


class OnnxBackend:
    """ONNX Runtime on ``provider`` (``cpu``, ``cuda``, ``tensorrt``: :func:`wmoe.runtime.session.make_session`,
    with ``optimization`` its graph optimization level)."""

    def __init__(self, path: Path, provider: str = "cpu", threads: int = 0, trt_cache_dir=None,
                 trt_batch: Sequence[int] = DEFAULT_TRT_BATCH, allow_cpu_fallback: bool = False,
                 optimization: str = "all") -> None:
        self.meta: ModelMeta = read_onnx_contract(path)  # refused when its graph contradicts its metadata
        self.session = make_session(path, provider=provider, threads=threads, trt_cache_dir=trt_cache_dir,
                                    trt_batch=trt_batch, allow_cpu_fallback=allow_cpu_fallback,
                                    optimization=optimization)
        self._run = session_runner(self.session)
        import onnxruntime as ort
        self.description = f"onnxruntime {ort.__version__} {self.session.get_providers()[0]}"

    def run(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        return self._run(x)

    def close(self) -> None:
        self.session = None
