"""TensorRT backend: a serialized engine run through TensorRT 10/11's name-based tensor API (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) with pinned host buffers, async copies on one stream and an optional
CUDA graph per batch size. CUDA calls go through :mod:`wmoe.runtime.cuda_api` (cuda-python, or pycuda).

Multi-profile engines (``wmoe export trt --batch 1:1:1,8:16:32``): one execution context per optimization profile,
each bound to its profile; a batch runs on the first profile whose range holds it. A CUDA graph bakes its context's
shapes and addresses in, so each captured batch size gets a context of its own. Every TensorRT call that reports
success with a boolean is checked. ``close()`` releases graphs, graph executables, buffers, contexts and the stream.

Bounded memory: the buffers (and, with ``cuda_graph=True``, the context and graph) of at most ``max_batch_sizes``
batch sizes are kept (default :data:`MAX_BATCH_SIZES` = 8), least recently used first out: a camera loop whose
last batch is short, or a server that sees many batch sizes, does not grow device memory without end. A batch size
whose buffers cannot all be set up (out of device memory) leaves nothing behind: what was allocated for it is freed
and the next call starts afresh.

Engines are specific to a GPU model and a TensorRT version: the JSON sidecar written by ``wmoe export trt`` is
checked before deserializing, so a mismatch is a clear error instead of a crash.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..contract import EngineCompatError, EngineSidecar, check_engine_compat
from ..errors import MissingDependencyError
from .cuda_api import CudaApi, open_cuda

if TYPE_CHECKING:  # the type check (tests/test_typecheck.py) holds the calls below to tensorrt-stubs
    import tensorrt as trt

#: Batch sizes whose buffers (and CUDA graphs) are kept at once (least recently used out); see the module docstring.
MAX_BATCH_SIZES = 8

TRT_INSTALL_DETAIL = ("CUDA 12 drivers; 'wmoe[trt-cu13]' for CUDA 13; on a Jetson: sudo apt install "
                      "python3-libnvinfer (JetPack) and pip install cuda-python")


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
    def __init__(self, path: Path, device: int = 0, cuda_graph: bool = False, cuda: Optional[str] = None,
                 max_batch_sizes: int = MAX_BATCH_SIZES) -> None:
        try:
            import tensorrt as trt
        except ImportError:  # one line (wmoe-camera, wmoe predict): what to install, on x86-64 and on a Jetson
            raise MissingDependencyError("tensorrt", "trt", f"{path}: a TensorRT engine",
                                         hint=TRT_INSTALL_DETAIL) from None
        if max_batch_sizes < 1:
            raise ValueError(f"max_batch_sizes must be >= 1, got {max_batch_sizes}")
        self.trt, self.path = trt, Path(path)
        self.sidecar = EngineSidecar.read(EngineSidecar.path_for(path))
        self.meta = self.sidecar.model_meta  # the exported model's contract: input, preprocessing, decision
        self.cuda_graph = cuda_graph
        self.max_batch_sizes = max_batch_sizes
        self.cuda: Optional[CudaApi] = None
        self.stream: Any = None
        self.runtime: Optional[trt.Runtime] = None
        self.engine: Optional[trt.ICudaEngine] = None
        self._contexts: Dict[int, trt.IExecutionContext] = {}  # profile -> execution context (runs without a graph)
        # batch size -> {context, host, dev, owners, graph, graph_exec}, least recently used first
        self._entries: "OrderedDict[int, Dict[str, Any]]" = OrderedDict()
        self.cuda = open_cuda(device, prefer=cuda)
        try:
            check_engine_compat(self.sidecar, self.cuda.device_name(), trt.__version__)
            self.logger = trt.Logger(trt.Logger.WARNING)
            self.runtime = trt.Runtime(self.logger)
            blob = self.path.read_bytes()
            self.sidecar.check_engine(self.path, blob)  # the sidecar (threshold, contract) is this engine's
            engine = self.runtime.deserialize_cuda_engine(blob)
            if engine is None:
                raise EngineCompatError(f"{path}: TensorRT could not deserialize the engine")
            self.engine = engine
            self.stream = self.cuda.stream_create()
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            if len(inputs) != 1:
                raise EngineCompatError(f"{path}: expected one input tensor, the engine has {inputs}")
            self.input_name = inputs[0]
            self.output_names = [n for n in names if n != self.input_name]
            self.ranges: List[Tuple[int, int, int]] = []
            for p in range(engine.num_optimization_profiles):
                lo, opt, hi = (int(d[0]) for d in engine.get_tensor_profile_shape(self.input_name, p))
                self.ranges.append((lo, opt, hi))
        except BaseException:
            self.close()
            raise

    def _live(self) -> Tuple[CudaApi, "trt.ICudaEngine"]:
        if self.cuda is None or self.engine is None:
            raise RuntimeError(f"{self.path}: the TensorRT backend is closed")
        return self.cuda, self.engine

    # -- contexts and buffers ---------------------------------------------------------------------------------
    def _new_context(self, profile: int) -> "trt.IExecutionContext":
        cuda, engine = self._live()
        ctx = engine.create_execution_context()
        _ok(ctx, "create_execution_context")
        if not ctx.set_optimization_profile_async(profile, cuda.stream_handle(self.stream)):
            hint = (" (with cuda_graph=True each captured batch size has a context of its own: if this TensorRT "
                    "will not bind two contexts to one profile, build one profile per batch size, e.g. --batch "
                    "1:1:1,8:8:8,32:32:32)" if self.cuda_graph else "")
            raise RuntimeError(f"TensorRT set_optimization_profile_async({profile}) failed{hint}")
        cuda.stream_sync(self.stream)
        return ctx

    def _bind(self, ctx: "trt.IExecutionContext", shape: Tuple[int, ...], entry: Dict[str, Any]) -> None:
        _ok(ctx.set_input_shape(self.input_name, self.trt.Dims(list(shape))),
            f"set_input_shape({self.input_name}, {shape})")
        for name in [self.input_name] + self.output_names:
            _ok(ctx.set_tensor_address(name, entry["dev"][name]), f"set_tensor_address({name})")

    def _entry(self, x: np.ndarray) -> Dict[str, Any]:
        n = x.shape[0]
        entry = self._entries.get(n)
        if entry is not None:
            self._entries.move_to_end(n)
            return entry
        cuda, engine = self._live()
        profile = pick_profile(self.ranges, n)
        while len(self._entries) >= self.max_batch_sizes:  # make room first: the device memory is what is bounded
            _, old = self._entries.popitem(last=False)
            self._release(old)
        if self.cuda_graph:  # a graph keeps its context's state: one context per captured batch size
            ctx = self._new_context(profile)
        else:
            ctx = self._contexts.get(profile) or self._new_context(profile)
            self._contexts[profile] = ctx
        entry = {"context": ctx, "profile": profile, "host": {}, "dev": {}, "owners": [], "graph": None,
                 "graph_exec": None}
        try:  # built aside: inserted only once every buffer exists, released on any failure
            _ok(ctx.set_input_shape(self.input_name, self.trt.Dims(list(x.shape))),
                f"set_input_shape({self.input_name}, {x.shape})")
            for name in [self.input_name] + self.output_names:
                dims = ctx.get_tensor_shape(name)  # Dims: indexable, not iterable in TensorRT's API
                shape = tuple(int(dims[i]) for i in range(len(dims)))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"TensorRT left {name} with unknown shape {shape} for input {x.shape}")
                dtype = np.dtype(self.trt.nptype(engine.get_tensor_dtype(name)))
                size = int(np.prod(shape)) * dtype.itemsize
                host, howner = cuda.pinned(max(size, 1))
                entry["owners"].append(("host", howner))
                dptr, downer = cuda.malloc(max(size, 1))
                entry["owners"].append(("dev", downer))
                entry["host"][name] = host[:size].view(dtype).reshape(shape)
                entry["dev"][name] = dptr
        except BaseException:
            errors = self._release(entry)
            if errors:  # the setup error is the one to report; say what could not be freed as well
                print(f"TrtBackend: while releasing the failed batch-{n} buffers: {'; '.join(errors)}", flush=True)
            raise
        self._entries[n] = entry
        return entry

    def _release(self, entry: Dict[str, Any]) -> List[str]:
        """Free one entry's graph, graph executable and buffers (its own context goes with it); the errors."""
        errors: List[str] = []
        cuda = self.cuda
        if cuda is None:
            return errors
        try:
            cuda.graph_destroy(entry["graph"], entry["graph_exec"])
        except Exception as e:  # keep releasing the rest
            errors.append(str(e))
        entry["graph"] = entry["graph_exec"] = None
        for kind, owner in entry["owners"]:
            try:
                (cuda.free if kind == "dev" else cuda.free_pinned)(owner)
            except Exception as e:
                errors.append(str(e))
        entry["owners"].clear()
        entry["host"].clear()
        entry["dev"].clear()
        return errors

    @property
    def cached_batch_sizes(self) -> List[int]:
        """Batch sizes whose buffers are held, least recently used first."""
        return list(self._entries)

    def _enqueue(self, entry: Dict[str, Any]) -> None:
        cuda, _ = self._live()
        cuda.htod(entry["dev"][self.input_name], entry["host"][self.input_name], self.stream)
        _ok(entry["context"].execute_async_v3(cuda.stream_handle(self.stream)), "execute_async_v3")
        for name in self.output_names:
            cuda.dtoh(entry["host"][name], entry["dev"][name], self.stream)

    # -- public -------------------------------------------------------------------------------------------------
    def run(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        check_engine_compat(self.sidecar, self.sidecar.gpu_name, self.sidecar.tensorrt_version, x.shape)
        cuda, _ = self._live()
        entry = self._entry(x)
        if not self.cuda_graph:  # contexts are shared across batch sizes of a profile: bind this one's
            self._bind(entry["context"], tuple(x.shape), entry)
        elif entry["graph_exec"] is None:
            self._bind(entry["context"], tuple(x.shape), entry)
        np.copyto(entry["host"][self.input_name], x.astype(entry["host"][self.input_name].dtype, copy=False))
        if self.cuda_graph:
            if entry["graph_exec"] is None:
                self._enqueue(entry)  # warm-up outside capture (TensorRT allocates lazily)
                cuda.stream_sync(self.stream)
                cuda.graph_begin(self.stream)
                try:
                    self._enqueue(entry)
                finally:
                    entry["graph"], entry["graph_exec"] = cuda.graph_end(self.stream)
            cuda.graph_launch(entry["graph_exec"], self.stream)
        else:
            self._enqueue(entry)
        cuda.stream_sync(self.stream)
        return {name: entry["host"][name].copy() for name in self.output_names}

    def device_memory(self) -> Tuple[int, int]:
        """(used, total) bytes on the device, from the driver (``cudaMemGetInfo``): what TensorRT holds."""
        cuda, _ = self._live()
        free, total = cuda.mem_info()
        return total - free, total

    def close(self) -> None:
        """Release graph executables, graphs, buffers, contexts, the engine and the stream (idempotent)."""
        errors: List[str] = []
        for entry in getattr(self, "_entries", {}).values():
            errors += self._release(entry)
        if hasattr(self, "_entries"):
            self._entries.clear()
            self._contexts.clear()
        self.engine = self.runtime = None
        cuda = getattr(self, "cuda", None)
        if getattr(self, "stream", None) is not None and cuda is not None:
            try:
                cuda.stream_destroy(self.stream)
            except Exception as e:
                errors.append(str(e))
            self.stream = None
        if cuda is not None:
            cuda.close()
            self.cuda = None
        if errors:
            raise RuntimeError("TrtBackend.close: " + "; ".join(errors))
