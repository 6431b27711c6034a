"""ONNX Runtime sessions for exported models: CPU, CUDA or TensorRT execution provider, with fallback."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


def make_session(path: Union[str, Path], provider: str = "cpu", threads: int = 0):
    """An ``onnxruntime.InferenceSession`` on ``provider``; falls back to CPU with a warning when unavailable
    (the CUDA/TensorRT providers need ``onnxruntime-gpu``)."""
    import onnxruntime as ort

    from .onnx_export import read_metadata

    read_metadata(path)  # clear error for a missing or non-ONNX file
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
    available = ort.get_available_providers()
    chain = [PROVIDERS[provider]]
    if provider == "tensorrt":
        chain.append(PROVIDERS["cuda"])
    chain = [p for p in chain if p in available]
    if PROVIDERS[provider] not in available:
        fallback = chain[0] if chain else "CPUExecutionProvider"
        warnings.warn(f"ONNX Runtime provider {PROVIDERS[provider]} is not available (installed: {available}; "
                      f"pip install onnxruntime-gpu); running on {fallback}", RuntimeWarning, stacklevel=2)
    if "CPUExecutionProvider" not in chain:
        chain.append("CPUExecutionProvider")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=chain)
