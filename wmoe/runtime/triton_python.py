"""The Triton Python-backend model: an exported ONNX served through :class:`wmoe.runtime.Runtime` inside Triton.

``wmoe export triton --backend python`` writes ``<name>_python/<version>/model.py``, which only imports this
class, so the serving code ships (and is tested) with the runtime. Use it on servers without the ONNX Runtime
backend (Triton's Python-only builds, the ``nvidia-pytriton`` wheel); the official containers serve the same ONNX
faster with their ``onnxruntime_onnx`` backend.

Triton checks each request's dtype and shape against ``config.pbtxt`` before it reaches ``execute``. With
dynamic batching ``execute`` receives several requests: their frames are scored as one batch and split back;
a batch that fails answers each of its requests with the error and the model keeps serving. Each model instance
is its own process (the backend's stub), so a ``KIND_GPU`` instance pins its GPU with ``CUDA_VISIBLE_DEVICES``
before ONNX Runtime starts CUDA. Imports no torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ..contract import INPUT_FRAMES, OUTPUT_NAMES
from .runtime import Runtime

#: config.pbtxt parameters that wmoe export triton writes for this model
MODEL_FILE_PARAM = "wmoe.model_file"  # the ONNX file in the version folder
THREADS_PARAM = "wmoe.threads"  # ONNX Runtime intra-op threads per instance (0: its default)


class TritonPythonModel:
    """The class the Python backend instantiates (``initialize`` / ``execute`` / ``finalize``)."""

    def initialize(self, args: Dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # exists inside the backend's stub only

        self.pb = pb_utils
        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / params.get(MODEL_FILE_PARAM, "model.onnx")
        gpu = args.get("model_instance_kind") == "GPU"
        if gpu:
            os.environ["CUDA_VISIBLE_DEVICES"] = args.get("model_instance_device_id", "0")
        self.rt = Runtime.open(path, provider="cuda" if gpu else "cpu", threads=int(params.get(THREADS_PARAM, 0)))
        self.input_name = cfg["input"][0]["name"]
        self.output_names: List[str] = [o["name"] for o in cfg["output"]]
        self._check_config(cfg, path)

    def _check_config(self, cfg: Dict[str, Any], path: Path) -> None:
        """A config.pbtxt edited apart from its model fails the load with the reason, not every request later."""
        meta, where = self.rt.meta, f"model {cfg.get('name')!r} (config.pbtxt)"
        dims = [int(d) for d in cfg["input"][0].get("dims", [])]
        if meta.input != INPUT_FRAMES or dims != [*meta.frame_size, 3]:
            want = f"{meta.frame_size[0]}x{meta.frame_size[1]}x3 uint8 frames" if meta.frame_size else "images"
            raise ValueError(f"{where}: input dims {dims}, but {path} takes {want}")
        unknown = [n for n in self.output_names if n not in OUTPUT_NAMES]
        if unknown:
            raise ValueError(f"{where}: outputs {unknown} are not produced by the model (it has {list(OUTPUT_NAMES)})")

    def _outputs(self, frames: np.ndarray) -> Dict[str, np.ndarray]:
        res = self.rt.score(frames)
        return {name: np.ascontiguousarray(getattr(res, name)) for name in self.output_names}

    def execute(self, requests: List[Any]) -> List[Any]:
        pb = self.pb
        frames = [pb.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        try:
            out = self._outputs(frames[0] if len(frames) == 1 else np.concatenate(frames))
        except Exception as e:  # noqa: BLE001 - one failing batch answers its requests, the model keeps serving
            err = pb.TritonError(f"{type(e).__name__}: {e}")
            return [pb.InferenceResponse(output_tensors=[], error=err) for _ in requests]
        responses, start = [], 0
        for f in frames:
            stop = start + f.shape[0]
            responses.append(pb.InferenceResponse([pb.Tensor(k, v[start:stop]) for k, v in out.items()]))
            start = stop
        return responses

    def finalize(self) -> None:
        self.rt.close()
