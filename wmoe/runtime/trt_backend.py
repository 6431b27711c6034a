"""TensorRT backend: a serialized engine run through TensorRT 10/11's name-based tensor API (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) with pinned host buffers, async copies on one stream and an optional
CUDA graph per batch size. CUDA calls go through :mod:`wmoe.runtime.cuda_api` (cuda-python, or pycuda).

Multi-profile engines (``wmoe export trt --batch 1:1:1,8:16:32``): one execution context per optimization profile,
each bound to its profile; a batch runs on the first profile whose range holds it. A CUDA graph bakes its context's
shapes and addresses in, so each captured batch size gets a context of its own. Every TensorRT call that reports
success with a boolean is checked. ``close()`` releases graphs, graph executables, buffers, contexts and the stream.

Engines are specific to a GPU model and a TensorRT version: the JSON sidecar written by ``wmoe export trt`` is
checked before deserializing, so a mismatch is a clear error instead of a crash.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..contract import EngineCompatError, EngineSidecar, check_engine_compat
from .cuda_api import CudaApi, open_cuda

INSTALL_HINT = ("the TensorRT backend needs tensorrt and cuda-python (or pycuda): pip install 'wmoe[trt]' "
                "(CUDA 12 drivers) or 'wmoe[trt-cu13]' (CUDA 13); Jetson: JetPack's python3-libnvinfer and "
                "pip install cuda-python")


def pick_profile(ranges: Sequence[Tuple[int, int, int]], batch: int) -> int:
    """Index of the first optimization profile whose (min, opt, max) batch range holds ``batch``."""
    for i, (lo, _, hi) in enumerate(ranges):
        if lo <= batch <= hi:
            return i
    raise EngineCompatError(f"batch {batch} is outside every optimization profile of the engine "
                            f"({[list(r) for r in ranges]}): rebuild with a --batch range that holds it")


def _ok(result: Any, what: str) -> None:
    """TensorRT reports many failures as ``False`` (the reason goes to its logger)."""
    if result is False or result is None:
        raise RuntimeError(f"TensorRT {what} failed (see TensorRT's log above)")


class TrtBackend:
    def __init__(self, path: Path, device: int = 0, cuda_graph: bool = False, cuda: Optional[str] = None) -> None:
        try:
            import tensorrt as trt  # type: ignore
        except ImportError as e:
            raise ImportError(INSTALL_HINT) from e
        self.trt, self.path = trt, Path(path)
        self.sidecar = EngineSidecar.read(EngineSidecar.path_for(path))
        self.meta = self.sidecar.model_meta  # the exported model's contract: input, preprocessing, decision
        self.cuda_graph = cuda_graph
        self.cuda: CudaApi = open_cuda(device, prefer=cuda)
        self.stream = None
        self._contexts: Dict[int, Any] = {}  # profile -> execution context (runs without a graph)
        self._entries: Dict[int, dict] = {}  # batch size -> {context, host, dev, graph, graph_exec}
        try:
            check_engine_compat(self.sidecar, self.cuda.device_name(), trt.__version__)
            self.logger = trt.Logger(trt.Logger.WARNING)
            self.runtime = trt.Runtime(self.logger)
            blob = self.path.read_bytes()
            self.sidecar.check_engine(self.path, blob)  # the sidecar (threshold, contract) is this engine's
            self.engine = self.runtime.deserialize_cuda_engine(blob)
            if self.engine is None:
                raise EngineCompatError(f"{path}: TensorRT could not deserialize the engine")
            self.stream = self.cuda.stream_create()
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            if len(inputs) != 1:
                raise EngineCompatError(f"{path}: expected one input tensor, the engine has {inputs}")
            self.input_name = inputs[0]
            self.output_names = [n for n in names if n != self.input_name]
            self.ranges = [tuple(int(s[0]) for s in self.engine.get_tensor_profile_shape(self.input_name, p))
                           for p in range(self.engine.num_optimization_profiles)]
        except BaseException:
            self.close()
            raise

    # -- contexts and buffers ---------------------------------------------------------------------------------
    def _new_context(self, profile: int) -> Any:
        ctx = self.engine.create_execution_context()
        _ok(ctx, "create_execution_context")
        if not ctx.set_optimization_profile_async(profile, self.cuda.stream_handle(self.stream)):
            hint = (" (with cuda_graph=True each captured batch size has a context of its own: if this TensorRT "
                    "will not bind two contexts to one profile, build one profile per batch size, e.g. --batch "
                    "1:1:1,8:8:8,32:32:32)" if self.cuda_graph else "")
            raise RuntimeError(f"TensorRT set_optimization_profile_async({profile}) failed{hint}")
        self.cuda.stream_sync(self.stream)
        return ctx

    def _bind(self, ctx: Any, shape: Tuple[int, ...], entry: dict) -> None:
        _ok(ctx.set_input_shape(self.input_name, shape), f"set_input_shape({self.input_name}, {shape})")
        for name in [self.input_name] + self.output_names:
            _ok(ctx.set_tensor_address(name, entry["dev"][name]), f"set_tensor_address({name})")

    def _entry(self, x: np.ndarray) -> dict:
        n = x.shape[0]
        entry = self._entries.get(n)
        if entry is not None:
            return entry
        profile = pick_profile(self.ranges, n)
        if self.cuda_graph:  # a graph keeps its context's state: one context per captured batch size
            ctx = self._new_context(profile)
        else:
            ctx = self._contexts.get(profile)
            if ctx is None:
                ctx = self._contexts[profile] = self._new_context(profile)
        entry = {"context": ctx, "profile": profile, "host": {}, "dev": {}, "owners": [], "graph": None,
                 "graph_exec": None}
        self._entries[n] = entry
        _ok(ctx.set_input_shape(self.input_name, x.shape), f"set_input_shape({self.input_name}, {x.shape})")
        for name in [self.input_name] + self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"TensorRT left {name} with unknown shape {shape} for input {x.shape}")
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
            host, howner = self.cuda.pinned(nbytes)
            entry["owners"].append(("host", howner))
            dptr, downer = self.cuda.malloc(nbytes)
            entry["owners"].append(("dev", downer))
            entry["host"][name] = host[:int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)
            entry["dev"][name] = dptr
        return entry

    def _enqueue(self, entry: dict) -> None:
        self.cuda.htod(entry["dev"][self.input_name], entry["host"][self.input_name], self.stream)
        _ok(entry["context"].execute_async_v3(self.cuda.stream_handle(self.stream)), "execute_async_v3")
        for name in self.output_names:
            self.cuda.dtoh(entry["host"][name], entry["dev"][name], self.stream)

    # -- public -------------------------------------------------------------------------------------------------
    def run(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        check_engine_compat(self.sidecar, self.sidecar.gpu_name, self.sidecar.tensorrt_version, x.shape)
        entry = self._entry(x)
        if not self.cuda_graph:  # contexts are shared across batch sizes of a profile: bind this one's
            self._bind(entry["context"], tuple(x.shape), entry)
        elif entry["graph_exec"] is None:
            self._bind(entry["context"], tuple(x.shape), entry)
        np.copyto(entry["host"][self.input_name], x.astype(entry["host"][self.input_name].dtype, copy=False))
        if self.cuda_graph:
            if entry["graph_exec"] is None:
                self._enqueue(entry)  # warm-up outside capture (TensorRT allocates lazily)
                self.cuda.stream_sync(self.stream)
                self.cuda.graph_begin(self.stream)
                try:
                    self._enqueue(entry)
                finally:
                    entry["graph"], entry["graph_exec"] = self.cuda.graph_end(self.stream)
            self.cuda.graph_launch(entry["graph_exec"], self.stream)
        else:
            self._enqueue(entry)
        self.cuda.stream_sync(self.stream)
        return {name: entry["host"][name].copy() for name in self.output_names}

    def device_memory(self) -> Tuple[int, int]:
        """(used, total) bytes on the device, from the driver (``cudaMemGetInfo``): what TensorRT holds."""
        free, total = self.cuda.mem_info()
        return total - free, total

    def close(self) -> None:
        """Release graph executables, graphs, buffers, contexts, the engine and the stream (idempotent)."""
        cuda = getattr(self, "cuda", None)
        errors: List[str] = []
        for entry in getattr(self, "_entries", {}).values():
            try:
                cuda.graph_destroy(entry["graph"], entry["graph_exec"])
            except Exception as e:  # keep releasing the rest
                errors.append(str(e))
            for kind, owner in entry["owners"]:
                try:
                    (cuda.free if kind == "dev" else cuda.free_pinned)(owner)
                except Exception as e:
                    errors.append(str(e))
        if hasattr(self, "_entries"):
            self._entries.clear()
            self._contexts.clear()
        self.engine = self.runtime = None
        if getattr(self, "stream", None) is not None:
            try:
                cuda.stream_destroy(self.stream)
            except Exception as e:
                errors.append(str(e))
            self.stream = None
        if cuda is not None:
            cuda.close()
        if errors:
            raise RuntimeError("TrtBackend.close: " + "; ".join(errors))
