"""The handful of CUDA calls the TensorRT backend makes, behind one small interface with two implementations:
cuda-python (``cuda.bindings``, preferred; NVIDIA's samples use it) and pycuda (what many Jetson images carry).

Every call's status is checked: a failure raises :class:`CudaError` naming the call and CUDA's message. pycuda
(2026.1 checked) has no CUDA-graph API, so ``graph_*`` raise there and the backend says to use cuda-python for
``cuda_graph=True``. No torch.
"""
from __future__ import annotations

import ctypes
from typing import Any, Optional, Tuple

import numpy as np

INSTALL_HINT = ("the TensorRT backend needs cuda-python (pip install 'cuda-python>=12.6.2,<13' for CUDA 12 drivers, "
                "'cuda-python>=13,<14' for CUDA 13) or pycuda")


class CudaError(RuntimeError):
    """A CUDA call failed (the message names the call)."""


class CudaApi:
    """Interface: device name, streams, device and pinned host memory, async copies, CUDA graphs, memory info."""
    name = "?"

    def device_name(self) -> str: raise NotImplementedError
    def compute_capability(self) -> Tuple[int, int]: raise NotImplementedError
    def driver_version(self) -> int: raise NotImplementedError  # as cuDriverGetVersion: 12040 = CUDA 12.4
    def stream_create(self) -> Any: raise NotImplementedError
    def stream_handle(self, stream: Any) -> int: raise NotImplementedError
    def stream_sync(self, stream: Any) -> None: raise NotImplementedError
    def stream_destroy(self, stream: Any) -> None: raise NotImplementedError
    def malloc(self, nbytes: int) -> Tuple[int, Any]: raise NotImplementedError  # (pointer, owner)
    def free(self, owner: Any) -> None: raise NotImplementedError
    def pinned(self, nbytes: int) -> Tuple[np.ndarray, Any]: raise NotImplementedError  # (uint8 array, owner)
    def free_pinned(self, owner: Any) -> None: raise NotImplementedError
    def htod(self, dptr: int, host: np.ndarray, stream: Any) -> None: raise NotImplementedError
    def dtoh(self, host: np.ndarray, dptr: int, stream: Any) -> None: raise NotImplementedError
    def graph_begin(self, stream: Any) -> None: raise NotImplementedError
    def graph_end(self, stream: Any) -> Tuple[Any, Any]: raise NotImplementedError  # (graph, executable graph)
    def graph_launch(self, graph_exec: Any, stream: Any) -> None: raise NotImplementedError
    def graph_destroy(self, graph: Any, graph_exec: Any) -> None: raise NotImplementedError
    def mem_info(self) -> Tuple[int, int]: raise NotImplementedError  # (free, total) bytes on the device
    def close(self) -> None: pass


class CudaPython(CudaApi):
    """cuda-python's runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    name = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart  # type: ignore  # cuda-python < 12.6
            except ImportError as e:
                raise ImportError(INSTALL_HINT) from e
        self.rt = cudart
        self.device = device
        self._ok("cudaSetDevice", self.rt.cudaSetDevice(device))

    # every call is written out (self.rt.cudaX(args)), so the type check holds it to cuda-python's signatures
    def _ok(self, fn: str, out: Any) -> Any:
        """cuda-python returns ``(cudaError_t, values...)``: raise on an error, return the value(s)."""
        err, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        if int(err) != 0:
            msg = self.rt.cudaGetErrorString(err)
            msg = msg[1] if isinstance(msg, tuple) else msg
            raise CudaError(f"{fn}: {msg.decode() if isinstance(msg, bytes) else msg} (error {int(err)})")
        return rest[0] if len(rest) == 1 else rest

    def device_name(self) -> str:
        prop = self._ok("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(self.device))
        name = prop.name
        return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")

    def compute_capability(self) -> Tuple[int, int]:
        prop = self._ok("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(self.device))
        return int(prop.major), int(prop.minor)

    def driver_version(self) -> int:
        return int(self._ok("cudaDriverGetVersion", self.rt.cudaDriverGetVersion()))

    def stream_create(self) -> Any:
        return self._ok("cudaStreamCreate", self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def stream_sync(self, stream: Any) -> None:
        self._ok("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def stream_destroy(self, stream: Any) -> None:
        self._ok("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))

    def malloc(self, nbytes: int) -> Tuple[int, Any]:
        p = int(self._ok("cudaMalloc", self.rt.cudaMalloc(nbytes)))
        return p, p

    def free(self, owner: Any) -> None:
        self._ok("cudaFree", self.rt.cudaFree(owner))

    def pinned(self, nbytes: int) -> Tuple[np.ndarray, Any]:
        p = int(self._ok("cudaMallocHost", self.rt.cudaMallocHost(nbytes)))
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(p)), p

    def free_pinned(self, owner: Any) -> None:
        self._ok("cudaFreeHost", self.rt.cudaFreeHost(owner))

    def htod(self, dptr: int, host: np.ndarray, stream: Any) -> None:
        self._ok("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dptr, host.ctypes.data, host.nbytes,
                                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def dtoh(self, host: np.ndarray, dptr: int, stream: Any) -> None:
        self._ok("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(host.ctypes.data, dptr, host.nbytes,
                                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def graph_begin(self, stream: Any) -> None:
        self._ok("cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture(
            stream, self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))

    def graph_end(self, stream: Any) -> Tuple[Any, Any]:
        graph = self._ok("cudaStreamEndCapture", self.rt.cudaStreamEndCapture(stream))
        return graph, self._ok("cudaGraphInstantiate", self.rt.cudaGraphInstantiate(graph, 0))

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        self._ok("cudaGraphLaunch", self.rt.cudaGraphLaunch(graph_exec, stream))

    def graph_destroy(self, graph: Any, graph_exec: Any) -> None:
        if graph_exec is not None:
            self._ok("cudaGraphExecDestroy", self.rt.cudaGraphExecDestroy(graph_exec))
        if graph is not None:
            self._ok("cudaGraphDestroy", self.rt.cudaGraphDestroy(graph))

    def mem_info(self) -> Tuple[int, int]:
        free, total = self._ok("cudaMemGetInfo", self.rt.cudaMemGetInfo())
        return int(free), int(total)


class PyCuda(CudaApi):
    """pycuda's driver API on the device's primary context."""
    name = "pycuda"

    def __init__(self, device: int = 0) -> None:
        try:
            import pycuda.driver as cuda  # type: ignore
        except ImportError as e:
            raise ImportError(INSTALL_HINT) from e
        self.cuda = cuda
        try:
            cuda.init()
            self.dev = cuda.Device(device)
            self.ctx = self.dev.retain_primary_context()
            self.ctx.push()
        except cuda.Error as e:
            raise CudaError(f"pycuda device {device}: {e}") from e

    def _wrap(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self.cuda.Error as e:
            raise CudaError(f"{what}: {e}") from e

    def device_name(self) -> str:
        return self.dev.name()

    def compute_capability(self) -> Tuple[int, int]:
        major, minor = self.dev.compute_capability()
        return int(major), int(minor)

    def driver_version(self) -> int:
        return int(self._wrap("get_driver_version", self.cuda.get_driver_version))

    def stream_create(self) -> Any:
        return self._wrap("Stream()", self.cuda.Stream)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def stream_sync(self, stream: Any) -> None:
        self._wrap("Stream.synchronize", stream.synchronize)

    def stream_destroy(self, stream: Any) -> None:
        pass  # freed with the object

    def malloc(self, nbytes: int) -> Tuple[int, Any]:
        alloc = self._wrap("mem_alloc", self.cuda.mem_alloc, nbytes)
        return int(alloc), alloc

    def free(self, owner: Any) -> None:
        self._wrap("DeviceAllocation.free", owner.free)

    def pinned(self, nbytes: int) -> Tuple[np.ndarray, Any]:
        a = self._wrap("pagelocked_empty", self.cuda.pagelocked_empty, (nbytes,), np.uint8)
        return a, a

    def free_pinned(self, owner: Any) -> None:
        self._wrap("HostAllocation.free", owner.base.free)

    def htod(self, dptr: int, host: np.ndarray, stream: Any) -> None:
        self._wrap("memcpy_htod_async", self.cuda.memcpy_htod_async, dptr, host, stream)

    def dtoh(self, host: np.ndarray, dptr: int, stream: Any) -> None:
        self._wrap("memcpy_dtoh_async", self.cuda.memcpy_dtoh_async, host, dptr, stream)

    def _no_graphs(self) -> CudaError:
        return CudaError("pycuda has no CUDA-graph API: install cuda-python for cuda_graph=True")

    def graph_begin(self, stream: Any) -> None:
        raise self._no_graphs()

    def graph_end(self, stream: Any) -> Tuple[Any, Any]:
        raise self._no_graphs()

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        raise self._no_graphs()

    def graph_destroy(self, graph: Any, graph_exec: Any) -> None:
        pass

    def mem_info(self) -> Tuple[int, int]:
        free, total = self._wrap("mem_get_info", self.cuda.mem_get_info)
        return int(free), int(total)

    def close(self) -> None:
        if getattr(self, "ctx", None) is not None:
            self.ctx.pop()
            self.ctx = None


IMPLEMENTATIONS = {"cuda-python": CudaPython, "pycuda": PyCuda}


def open_cuda(device: int = 0, prefer: Optional[str] = None) -> CudaApi:
    """cuda-python if it imports, else pycuda (``prefer`` picks one explicitly); ImportError with what to install
    when neither is there. CUDA failures (no device, driver too old) raise :class:`CudaError`."""
    if prefer is not None:
        if prefer not in IMPLEMENTATIONS:
            raise ValueError(f"unknown CUDA binding {prefer!r} (choose from {sorted(IMPLEMENTATIONS)})")
        return IMPLEMENTATIONS[prefer](device)
    errors = []
    for impl in (CudaPython, PyCuda):
        try:
            return impl(device)
        except ImportError as e:
            errors.append(f"{impl.name}: {e.__cause__ or e}")
    raise ImportError(INSTALL_HINT + " (" + "; ".join(errors) + ")")
