"""TensorRT backend and its CUDA interface (cuda-python or pycuda).

On a CPU machine: the real cuda-python reports "no usable device", which the interface turns into a CudaError
naming the call; profile selection; the install hints. On a GPU (``make gpu-check``) the same interface tests run
for every binding installed: pinned/device copies, memory info, CUDA graph capture and replay.
"""
import sys

import numpy as np
import pytest

from wmoe.contract import EngineCompatError
from wmoe.runtime.cuda_api import IMPLEMENTATIONS, CudaError, open_cuda
from wmoe.runtime.trt_backend import pick_profile


def _binding_installed(name: str) -> bool:
    import importlib.util
    mod = {"cuda-python": "cuda.bindings", "pycuda": "pycuda"}[name]
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


def _gpu() -> bool:
    try:
        open_cuda().close()
        return True
    except (ImportError, CudaError):
        return False


def test_profile_per_batch():
    ranges = [(1, 1, 1), (8, 16, 32)]  # --batch 1:1:1,8:16:32
    assert pick_profile(ranges, 1) == 0 and pick_profile(ranges, 8) == 1 and pick_profile(ranges, 32) == 1
    with pytest.raises(EngineCompatError, match=r"batch 4 is outside every optimization profile"):
        pick_profile(ranges, 4)
    with pytest.raises(EngineCompatError, match="batch 33"):
        pick_profile(ranges, 33)


@pytest.mark.skipif(not _binding_installed("cuda-python"), reason="cuda-python not installed")
def test_cuda_python_failures_name_the_call():
    if _gpu():
        pytest.skip("a GPU is present: the GPU tests below cover the binding")
    with pytest.raises(CudaError, match=r"^cudaSetDevice: .*\(error \d+\)"):
        open_cuda(prefer="cuda-python")


def test_missing_bindings_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)  # an import of pycuda fails as if not installed
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(ImportError, match=r"cuda-python>=12\.6\.2,<13.*or pycuda"):
        open_cuda(prefer="pycuda")
    with pytest.raises(ValueError, match="unknown CUDA binding"):
        open_cuda(prefer="cupy")


def test_backend_without_tensorrt_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    from wmoe.runtime.trt_backend import TrtBackend
    with pytest.raises(ImportError, match=r"wmoe\[trt\].*wmoe\[trt-cu13\]"):
        TrtBackend(tmp_path / "m.engine")


@pytest.mark.gpu
@pytest.mark.parametrize("binding", sorted(IMPLEMENTATIONS))
def test_cuda_interface_on_a_gpu(binding):
    """Never executed on the build machine (no GPU): run by make gpu-check."""
    if not _binding_installed(binding) or not _gpu():
        pytest.skip(f"needs a GPU and {binding}")
    cu = open_cuda(prefer=binding)
    try:
        assert cu.device_name()
        free, total = cu.mem_info()
        assert 0 < free <= total
        s = cu.stream_create()
        src, so = cu.pinned(4096)
        dst, do = cu.pinned(4096)
        src[:] = np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8)
        dst[:] = 0
        dptr, downer = cu.malloc(4096)
        cu.htod(dptr, src, s)
        cu.dtoh(dst, dptr, s)
        cu.stream_sync(s)
        assert np.array_equal(src, dst)
        if binding == "cuda-python":
            dst[:] = 0
            cu.graph_begin(s)
            cu.htod(dptr, src, s)
            cu.dtoh(dst, dptr, s)
            g, ge = cu.graph_end(s)
            assert not dst.any()  # captured, not run
            cu.graph_launch(ge, s)
            cu.stream_sync(s)
            assert np.array_equal(src, dst)
            cu.graph_destroy(g, ge)
        else:
            with pytest.raises(CudaError, match="cuda-python"):
                cu.graph_begin(s)
        cu.free(downer)
        cu.free_pinned(so)
        cu.free_pinned(do)
        cu.stream_destroy(s)
    finally:
        cu.close()
