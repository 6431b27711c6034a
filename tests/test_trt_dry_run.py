"""End-to-end dry run of the TensorRT path, on the generated TensorRT and CUDA doubles:

    wmoe export onnx (tiny model) -> wmoe export trt -> engine + sidecar -> TrtBackend open and run -> wmoe-camera
    on three frames

over {portable, plugin} x {images, frames input} x {TensorRT 10.9, 11.4}. What runs for real: the whole of wmoe
(CLI, export, build_engine, the plugin registration and kernel store, TrtBackend, CudaPython, the camera loop), the
ONNX export, TensorRT's own Python (the bindings wheel's ``__init__.py`` and its ``tensorrt.plugin`` frontend),
ONNX Runtime, the AOT-compiled Triton PTX. What is a double: TensorRT's compiled core (surface generated from
tensorrt-stubs + that version's ``tensorrt.so``, tests/trt_double.py; behaviour in tests/trt_behaviour.py) and the
CUDA runtime (surface = the installed cuda-python's signatures, tests/cuda_double.py). No real TensorRT builder,
runtime or GPU ever ran here. On the code before this change every case failed at ``prof.is_valid()``.

Cost: one ONNX export per (flavor, input), shared by both TensorRT versions (module-scoped); the plugin kernels are
the session's ``plugin_kernels``.
"""
import json
import struct
import sys

import numpy as np
import pytest
from PIL import Image

import cuda_double
import trt_behaviour
import trt_double as D
from wmoe.contract import EngineSidecar
from wmoe.contract import PLUGIN_MOE_OP as MOE_OP, PLUGIN_WCMA_OP as WCMA_OP
from wmoe.export.trt_plugins import unregister_plugins

VERSIONS = ["10.9", "11.4"]
SIZE = 56
# one xdist worker runs the whole module, so each ONNX export is made once (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("trt_dry_run")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from wmoe.model.checkpoint import save_checkpoint
    from wmoe.model.config import ModelConfig
    from wmoe.model.wmoe_clip import WMoECLIP
    torch.manual_seed(0)
    return save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=SIZE)).eval(),
                           tmp_path_factory.mktemp("ckpt") / "m.safetensors")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """``get(flavor, input)``: the ONNX of ``wmoe export onnx``, made once per (flavor, input)."""
    from wmoe.cli.commands import main
    d, made = tmp_path_factory.mktemp("onnx"), {}

    def get(flavor, kind):
        if (flavor, kind) not in made:
            out = d / f"{flavor}_{kind}.onnx"
            assert main(["export", "onnx", str(checkpoint), "--out", str(out), "--flavor", flavor, "--input", kind,
                         "--threshold", "0.3"]) in (0, None)
            made[flavor, kind] = out
        return made[flavor, kind]
    return get


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    d = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (SIZE + 8, SIZE + 16, 3), dtype=np.uint8)).save(d / f"f{i}.png")
    return d


@pytest.fixture()
def doubles(monkeypatch):
    cuda_double.install(monkeypatch)
    unregister_plugins()

    def load(version):
        return D.load(version)
    yield load
    unregister_plugins()
    D.unload()


def _header(engine_bytes: bytes) -> dict:
    n = len(trt_behaviour.MAGIC)
    (k,) = struct.unpack("<Q", engine_bytes[n:n + 8])
    return json.loads(engine_bytes[n + 8:n + 8 + k])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["images", "frames"])
@pytest.mark.parametrize("flavor", ["portable", "plugin"])
def test_dry_run(flavor, kind, version, exported, frames, plugin_kernels, doubles, tmp_path, capsys):
    from wmoe.cli.commands import main
    from wmoe.runtime.camera import main as camera
    from wmoe.runtime.runtime import Runtime
    onnx_path = exported(flavor, kind)
    trt = doubles(version)
    engine = tmp_path / "m.engine"
    # 10.x: fp16 through the builder flag; 11.x builds strongly typed networks: the ONNX's own precision (fp32)
    precision = "fp16" if version == "10.9" else "fp32"
    argv = ["export", "trt", str(onnx_path), "--out", str(engine), "--precision", precision, "--batch", "1:2:4"]
    if flavor == "plugin":
        argv += ["--kernels", str(plugin_kernels.dir)]
    assert main(argv) in (0, None)

    side = EngineSidecar.read(EngineSidecar.path_for(engine))
    assert side.tensorrt_version == trt.__version__ and side.flavor == flavor and side.precision == precision
    shape = [-1, 3, SIZE, SIZE] if kind == "images" else [-1, SIZE, SIZE, 3]
    assert list(side.inputs.values()) == [shape] and side.batch_ranges == [[1, 2, 4]]
    # bound to each other (docs/reliability.md): the engine's bytes, the ONNX it was built from, its checkpoint
    from wmoe.contract import ModelMeta, sha256_file
    from wmoe.onnx_meta import read_onnx_metadata
    assert side.engine_sha256 == sha256_file(engine) and side.onnx_sha256 == sha256_file(onnx_path)
    assert side.checkpoint_sha256 == ModelMeta.from_metadata(read_onnx_metadata(onnx_path)).checkpoint_sha256 != ""
    header = _header(engine.read_bytes())
    assert header["flags"] == (["FP16"] if version == "10.9" else [])
    if flavor == "plugin":  # every plugin layer went through the builder's calls; its AOT kernel is in the engine
        assert {p["op"] for p in header["plugins"]} == {WCMA_OP, MOE_OP}
        assert all(p["kernel"] and p["ptx_sha256"] for p in header["plugins"])
    else:
        assert header["plugins"] == []

    imgs = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(frames.iterdir())]
    with Runtime.open(engine) as rt:  # the contract's input (images or uint8 frames) made by the runtime
        got = rt.score(imgs[:2])
        assert got.scores.shape == (2,) and got.maps.shape[0] == 2
        if flavor == "portable":  # the double runs the engine's ONNX in ONNX Runtime: the data path is exact
            with Runtime.open(onnx_path) as ref:
                want = ref.score(imgs[:2])
            for name in ("scores", "text_scores", "maps"):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        else:  # ONNX Runtime cannot run the custom nodes: zeros, with the contract's shapes and dtypes
            assert not got.scores.any() and not got.maps.any()
    capsys.readouterr()
    results = tmp_path / "results.jsonl"
    assert camera(["--source", str(frames), "--model", str(engine), "--batch", "2", "--results", str(results)]) == 0
    lines = [json.loads(ln) for ln in results.read_text().splitlines()]
    assert len(lines) == 3 and sorted(r["frame"] if "frame" in r else r["name"] for r in lines)
    assert "final:" in capsys.readouterr().out


def test_plugin_build_that_must_compile_without_triton_says_so(exported, doubles, tmp_path, monkeypatch):
    """A plugin-flavor build with no compiled kernel folder compiles the kernels, which needs Triton (and torch):
    where Triton is missing, one line says so and how to compile elsewhere; nothing is written."""
    from wmoe.errors import ExportError
    from wmoe.export.trt_build import build_engine
    doubles("11.4")
    monkeypatch.setitem(sys.modules, "triton", None)
    with pytest.raises(ExportError) as e:
        build_engine(exported("plugin", "images"), tmp_path / "m.engine", precision="fp32", batch="1:2:4")
    msg = str(e.value)
    assert "\n" not in msg and "m.kernels holds no compiled plugin kernels" in msg
    assert "needs Triton and torch (triton is not installed)" in msg and "--kernels DIR" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# -- TrtBackend: bounded contexts and buffers -------------------------------------------------------------------------
@pytest.fixture()
def portable_engine(exported, doubles, tmp_path):
    from wmoe.export.trt_build import build_engine
    doubles("10.9")
    return build_engine(exported("portable", "images"), tmp_path / "m.engine", precision="fp32", batch="1:4:12")


def _allocs():
    return len(cuda_double.STATE.device), len(cuda_double.STATE.pinned)


def test_backend_refuses_an_engine_with_another_engines_sidecar(portable_engine, tmp_path):
    """The TensorRT runtime checks the engine's bytes against its sidecar's SHA-256 before deserializing it: another
    engine (here: other bytes) beside a copied sidecar is refused naming both, and nothing stays allocated."""
    import shutil

    from wmoe.contract import EngineCompatError
    from wmoe.runtime.trt_backend import TrtBackend
    other = tmp_path / "line2.engine"
    other.write_bytes(portable_engine.read_bytes() + b"\0")
    shutil.copy(portable_engine.with_suffix(".json"), other.with_suffix(".json"))
    with pytest.raises(EngineCompatError, match=r"line2.engine: its sidecar .*line2.json was written for another "
                                                 r"engine \(m.engine, SHA-256 [0-9a-f]{12}\.\.\.; this file is "):
        TrtBackend(other)
    assert _allocs() == (0, 0)
    TrtBackend(portable_engine).close()  # its own sidecar: accepted


def test_backend_bounds_the_batch_sizes_it_keeps(portable_engine):
    from wmoe.runtime.trt_backend import TrtBackend
    x = np.random.default_rng(0).standard_normal((10, 3, SIZE, SIZE)).astype(np.float32)
    be = TrtBackend(portable_engine)  # the default bound: 8 batch sizes (the old code kept all 10)
    try:
        n_io = 1 + len(be.output_names)
        for n in range(1, 11):
            be.run(x[:n])
        assert _allocs() == (8 * n_io, 8 * n_io)
    finally:
        be.close()
    assert _allocs() == (0, 0)
    from wmoe.runtime.trt_backend import MAX_BATCH_SIZES
    assert MAX_BATCH_SIZES == 8
    be = TrtBackend(portable_engine, max_batch_sizes=2)
    try:
        first = be.run(x[:1])
        for n in (2, 3):
            be.run(x[:n])
        assert be.cached_batch_sizes == [2, 3] and _allocs() == (2 * n_io, 2 * n_io)
        again = be.run(x[:1])  # evicted, set up afresh
        assert be.cached_batch_sizes == [3, 1] and _allocs() == (2 * n_io, 2 * n_io)
        for name in first:
            np.testing.assert_array_equal(first[name], again[name])
        be.run(x[:3])  # a hit moves it to the back
        assert be.cached_batch_sizes == [1, 3]
    finally:
        be.close()
    assert _allocs() == (0, 0)


def test_failed_buffer_setup_leaves_nothing_behind(portable_engine, monkeypatch):
    from wmoe.runtime.cuda_api import CudaError
    from wmoe.runtime.trt_backend import TrtBackend
    be = TrtBackend(portable_engine)
    try:
        real, calls = cuda_double._Behaviour.cudaMalloc, []

        def oom(size):
            calls.append(size)
            if len(calls) == 3:
                return (cuda_double.real.cudaError_t.cudaErrorMemoryAllocation, 0)
            return real(size)

        monkeypatch.setattr(cuda_double._Behaviour, "cudaMalloc", staticmethod(oom))
        import cuda.bindings
        monkeypatch.setattr(cuda.bindings, "runtime", cuda_double.generate())
        be.cuda.rt = cuda.bindings.runtime
        x = np.zeros((2, 3, SIZE, SIZE), np.float32)
        with pytest.raises(CudaError, match="cudaMalloc"):
            be.run(x)
        assert _allocs() == (0, 0)  # nothing leaked (the old code kept the first buffers)
        out = be.run(x)  # the third allocation succeeds now: set up afresh (the old code reused the half-built entry)
        assert all(v.shape[0] == 2 for v in out.values()) and be.cached_batch_sizes == [2]
    finally:
        be.close()


def test_backend_cuda_graph_replays_the_captured_run(portable_engine):
    from wmoe.runtime.trt_backend import TrtBackend
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with_graph, plain = TrtBackend(portable_engine, cuda_graph=True), TrtBackend(portable_engine)
    try:
        want = plain.run(x)
        for _ in range(2):  # capture, then replay
            got = with_graph.run(x)
            for name in want:
                np.testing.assert_array_equal(got[name], want[name])
        assert with_graph._entries[2]["graph_exec"] is not None
    finally:
        with_graph.close()
        plain.close()
