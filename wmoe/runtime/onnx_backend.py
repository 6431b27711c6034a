"""ONNX Runtime backend of the runtime (numpy in, numpy out; no torch)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OnnxBackend:
    def __init__(self, path: Path, provider: str = "cpu", threads: int = 0) -> None:
        import onnx
        import onnxruntime as ort

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path} is not an ONNX model ({type(e).__name__}: {e})") from e
        self.meta: Dict[str, str] = {p.key: p.value for p in proto.metadata_props}
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {sorted(PROVIDERS)}, got {provider!r}")
        avail = ort.get_available_providers()
        chain = [p for p in [PROVIDERS[provider]] if p in avail]
        if not chain:
            import warnings
            warnings.warn(f"{PROVIDERS[provider]} not available (pip install onnxruntime-gpu); using the CPU",
                          RuntimeWarning, stacklevel=3)
        if "CPUExecutionProvider" not in chain:
            chain.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=chain)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_kind = self.meta.get("wmoe.input", inp.name)
        self.image_size = int(self.meta.get("wmoe.image_size", inp.shape[-1] if inp.name == "images" else 0))
        self.frame_size: Optional[tuple] = (tuple(json.loads(self.meta["wmoe.frame_size"]))
                                            if "wmoe.frame_size" in self.meta else None)
        self.mean = json.loads(self.meta["wmoe.mean"]) if "wmoe.mean" in self.meta else None
        self.std = json.loads(self.meta["wmoe.std"]) if "wmoe.std" in self.meta else None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        outs = self.session.run(None, {self.input_name: x})
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        self.session = None
