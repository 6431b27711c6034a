"""TensorRT backend: a serialized engine run with cuda-python (pinned host buffers, async copies, one stream,
an optional CUDA graph per fixed batch size). Written against TensorRT 10's name-based tensor API
(``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).

Engines are specific to a GPU model and a TensorRT version: the JSON sidecar written by ``wmoe export trt`` is
checked before deserializing, so a mismatch is a clear error instead of a crash.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np

from ..contract import EngineCompatError, EngineSidecar, check_engine_compat

INSTALL_HINT = ("the TensorRT backend needs tensorrt and cuda-python: pip install tensorrt cuda-python "
                "(Jetson: JetPack's python3-libnvinfer and pip install cuda-python)")


def _check(err) -> None:
    code = err[0] if isinstance(err, tuple) else err
    if int(code) != 0:
        raise RuntimeError(f"CUDA error {code}")


class TrtBackend:
    def __init__(self, path: Path, device: int = 0, cuda_graph: bool = False) -> None:
        try:
            import tensorrt as trt  # type: ignore
            from cuda.bindings import runtime as cudart  # type: ignore
        except ImportError as e:
            raise ImportError(INSTALL_HINT) from e
        self.trt, self.cudart = trt, cudart
        self.sidecar = EngineSidecar.read(EngineSidecar.path_for(path))
        self.meta = self.sidecar.model_meta  # the exported model's contract: input, preprocessing, decision
        _check(cudart.cudaSetDevice(device))
        err, prop = cudart.cudaGetDeviceProperties(device)
        _check(err)
        check_engine_compat(self.sidecar, prop.name.decode().rstrip("\x00"), trt.__version__)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise EngineCompatError(f"{path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        err, self.stream = cudart.cudaStreamCreate()
        _check(err)
        self.input_name = self.engine.get_tensor_name(0)
        self.output_names = [self.engine.get_tensor_name(i) for i in range(1, self.engine.num_io_tensors)]
        self.cuda_graph = cuda_graph
        self._buffers: Dict[int, dict] = {}  # per batch size: pinned host + device buffers (+ graph)

    def _alloc(self, n: int, x: np.ndarray) -> dict:
        cudart, trt = self.cudart, self.trt
        bufs = {"host": {}, "dev": {}, "graph": None}
        self.context.set_input_shape(self.input_name, x.shape)
        for name in [self.input_name] + self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            err, hptr = cudart.cudaMallocHost(nbytes)
            _check(err)
            err, dptr = cudart.cudaMalloc(nbytes)
            _check(err)
            host = np.ctypeslib.as_array((np.ctypeslib.ctypes.c_byte * nbytes).from_address(hptr)).view(dtype)
            bufs["host"][name] = host.reshape(shape)
            bufs["dev"][name] = dptr
            self.context.set_tensor_address(name, dptr)
        return bufs

    def _enqueue(self, bufs: dict) -> None:
        cudart = self.cudart
        kind = cudart.cudaMemcpyKind
        h = bufs["host"][self.input_name]
        _check(cudart.cudaMemcpyAsync(bufs["dev"][self.input_name], h.ctypes.data, h.nbytes,
                                      kind.cudaMemcpyHostToDevice, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for name in self.output_names:
            o = bufs["host"][name]
            _check(cudart.cudaMemcpyAsync(o.ctypes.data, bufs["dev"][name], o.nbytes,
                                          kind.cudaMemcpyDeviceToHost, self.stream))

    def run(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        check_engine_compat(self.sidecar, self.sidecar.gpu_name, self.sidecar.tensorrt_version, x.shape)
        n = x.shape[0]
        bufs = self._buffers.get(n)
        if bufs is None:
            bufs = self._buffers[n] = self._alloc(n, x)
        else:
            self.context.set_input_shape(self.input_name, x.shape)
            for name in [self.input_name] + self.output_names:
                self.context.set_tensor_address(name, bufs["dev"][name])
        np.copyto(bufs["host"][self.input_name], x.astype(bufs["host"][self.input_name].dtype, copy=False))
        cudart = self.cudart
        if self.cuda_graph:
            if bufs["graph"] is None:
                self._enqueue(bufs)  # warm-up run outside capture (TensorRT allocates lazily)
                _check(cudart.cudaStreamSynchronize(self.stream))
                _check(cudart.cudaStreamBeginCapture(self.stream,
                                                     cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
                self._enqueue(bufs)
                err, graph = cudart.cudaStreamEndCapture(self.stream)
                _check(err)
                err, bufs["graph"] = cudart.cudaGraphInstantiate(graph, 0)
                _check(err)
            _check(cudart.cudaGraphLaunch(bufs["graph"], self.stream))
        else:
            self._enqueue(bufs)
        _check(cudart.cudaStreamSynchronize(self.stream))
        return {name: bufs["host"][name].copy() for name in self.output_names}

    def close(self) -> None:
        for bufs in self._buffers.values():
            for name, d in bufs["dev"].items():
                self.cudart.cudaFree(d)
                self.cudart.cudaFreeHost(bufs["host"][name].ctypes.data)
        self._buffers.clear()
