"""ONNX Runtime backend of the runtime (numpy in, numpy out; no torch, no onnx)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from ..contract import ModelMeta
from ..onnx_meta import read_onnx_contract
from .session import DEFAULT_TRT_BATCH, make_session


class OnnxBackend:
    def __init__(self, path: Path, provider: str = "cpu", threads: int = 0, trt_cache_dir=None,
                 trt_batch: Sequence[int] = DEFAULT_TRT_BATCH, allow_cpu_fallback: bool = False) -> None:
        self.meta: ModelMeta = read_onnx_contract(path)  # refused when its graph contradicts its metadata
        self.session = make_session(path, provider=provider, threads=threads, trt_cache_dir=trt_cache_dir,
                                    trt_batch=trt_batch, allow_cpu_fallback=allow_cpu_fallback)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        outs = self.session.run(None, {self.input_name: x})
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        self.session = None
