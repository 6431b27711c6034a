"""TensorRT: everything around the engine build is tested here; the build itself needs TensorRT and a GPU."""
import json

import pytest

from wmoe.contract import EngineCompatError, EngineSidecar, check_engine_compat
from wmoe.export.trt_build import INSTALL_HINT, build_engine, parse_batch
from wmoe.export.onnx_export import ExportError


def test_parse_batch():
    assert parse_batch("1:8:32") == [(1, 8, 32)]
    assert parse_batch("1,8:16:32") == [(1, 1, 1), (8, 16, 32)]
    for bad in ("8:1:32", "a:b:c", "1:2", "0:1:2"):
        with pytest.raises(ValueError):
            parse_batch(bad)


def _sidecar(**kw):
    base = dict(engine="m.engine", onnx_sha256="a", checkpoint_sha256="b", precision="fp16",
                tensorrt_version="10.9.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                inputs={"images": [-1, 3, 336, 336]}, outputs={"scores": [-1]}, batch_ranges=[[1, 8, 32]])
    base.update(kw)
    return EngineSidecar(**base)


def test_sidecar_round_trip_and_compat(tmp_path):
    s = _sidecar()
    s.write(tmp_path / "m.json")
    assert EngineSidecar.read(tmp_path / "m.json") == s
    check_engine_compat(s, "NVIDIA H100 80GB HBM3", "10.9.1", (4, 3, 336, 336))
    with pytest.raises(EngineCompatError, match="Orin"):
        check_engine_compat(s, "Orin", "10.9.0")
    check_engine_compat(s, "NVIDIA H100 80GB HBM3", "10.9.5")
    assert EngineSidecar.read(tmp_path / "m.json").flavor == "portable"
    with pytest.raises(EngineCompatError, match="TensorRT 10.3"):
        check_engine_compat(s, "NVIDIA H100 80GB HBM3", "10.3.0")
    with pytest.raises(EngineCompatError, match="does not fit"):
        check_engine_compat(s, "NVIDIA H100 80GB HBM3", "10.9.0", (64, 3, 336, 336))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(EngineCompatError, match="damaged"):
        EngineSidecar.read(tmp_path / "bad.json")
    with pytest.raises(EngineCompatError, match="missing"):
        EngineSidecar.read(tmp_path / "none.json")


def test_engine_build_or_clear_install_message(tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ExportError, match="pip install tensorrt"):
            build_engine(tmp_path / "m.onnx", tmp_path / "m.engine")
        assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.json").exists()
        pytest.skip(f"engine build not run: {INSTALL_HINT}")
    pytest.skip("TensorRT present: the engine build is exercised by bench on a GPU machine")


def test_engine_and_sidecar_written_last_and_never_apart(tmp_path, monkeypatch):
    from wmoe.export.trt_build import write_engine_and_sidecar
    out = tmp_path / "m.engine"
    write_engine_and_sidecar(out, b"old engine", _sidecar(onnx_sha256="old"))
    assert out.read_bytes() == b"old engine" and EngineSidecar.read(tmp_path / "m.json").onnx_sha256 == "old"
    # a failure while the new sidecar is written: the old engine is not left to meet any other sidecar
    # and no temporary files remain
    real_write = EngineSidecar.write

    def broken(self, path):
        real_write(self, path)
        raise OSError("disk full")

    monkeypatch.setattr(EngineSidecar, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        write_engine_and_sidecar(out, b"new engine", _sidecar(onnx_sha256="new"))
    assert (not out.exists() and EngineSidecar.read(tmp_path / "m.json").onnx_sha256 == "old") or \
        (out.read_bytes() == b"old engine" and EngineSidecar.read(tmp_path / "m.json").onnx_sha256 == "old")
    assert sorted(p.name for p in tmp_path.iterdir()) in (["m.json"], ["m.engine", "m.json"])
    monkeypatch.setattr(EngineSidecar, "write", real_write)
    write_engine_and_sidecar(out, b"new engine", _sidecar(onnx_sha256="new"))
    assert out.read_bytes() == b"new engine" and EngineSidecar.read(tmp_path / "m.json").onnx_sha256 == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.json"]
