"""TensorRT backend: a serialized engine run with cuda-python (pinned host buffers, async copies, one stream,
an optional CUDA graph per fixed batch size). Written against TensorRT 10's name-based tensor API
(``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).

Engines are specific to a GPU model and a TensorRT version: the JSON sidecar written by ``wmoe export trt`` is
checked before deserializing, so a mismatch is a clear error instead of a crash.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from wmoe.errors import WMoEError

INSTALL_HINT = ("the TensorRT backend needs tensorrt and cuda-python: pip install tensorrt cuda-python "
                "(Jetson: JetPack's python3-libnvinfer and pip install cuda-python)")


class EngineMismatch(WMoEError, RuntimeError):
    """The engine was built for another GPU, TensorRT version or input shape."""


def check_sidecar(sidecar: Dict, gpu_name: str, trt_version: str) -> None:
    def mm(v: str):
        return tuple(int(x) for x in re.findall(r"\d+", v)[:2])
    if sidecar.get("gpu_name") != gpu_name:
        raise EngineMismatch(f"engine {sidecar.get('engine')} was built for {sidecar.get('gpu_name')!r}; this GPU is "
                             f"{gpu_name!r}: rebuild it here with wmoe export trt")
    if mm(sidecar.get("tensorrt_version", "")) != mm(trt_version):
        raise EngineMismatch(f"engine {sidecar.get('engine')} was built with TensorRT "
                             f"{sidecar.get('tensorrt_version')}; this is TensorRT {trt_version}: rebuild it")


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
        side_path = Path(path).with_suffix(".json")
        if not side_path.is_file():
            raise EngineMismatch(f"{side_path}: engine sidecar missing (written by wmoe export trt)")
        self.sidecar = json.loads(side_path.read_text())
        _check(cudart.cudaSetDevice(device))
        err, prop = cudart.cudaGetDeviceProperties(device)
        _check(err)
        check_sidecar(self.sidecar, prop.name.decode().rstrip("\x00"), trt.__version__)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise EngineMismatch(f"{path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        err, self.stream = cudart.cudaStreamCreate()
        _check(err)
        self.input_name = self.engine.get_tensor_name(0)
        self.output_names = [self.engine.get_tensor_name(i) for i in range(1, self.engine.num_io_tensors)]
        self.input_kind = self.sidecar.get("input_kind", "images")
        self.image_size = int(self.sidecar.get("image_size", 0))
        self.frame_size = None
        self.mean = self.std = None
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
