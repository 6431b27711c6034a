"""Artifacts bound to each other: an engine's sidecar records the engine's SHA-256 (and the ONNX's), every reader
checks the engine it is given against it, and a sidecar whose fields contradict each other is refused at load.

The engines here are byte strings written by the real ``write_engine_and_sidecar`` (no TensorRT builder installs
here); what is tested is what wmoe writes and reads around them.
"""
from __future__ import annotations

import json
import shutil

import pytest

from wmoe.contract import EngineCompatError, EngineSidecar, ModelMeta, sha256_file
from wmoe.export.cli import main as export_main
from wmoe.export.triton_repo import TritonOptions, write_repository
from wmoe.export.trt_build import write_engine_and_sidecar
from wmoe.errors import ExportError

SIZE, FRAME = 112, (112, 112)


def sidecar(threshold: float, frame=FRAME, size=SIZE, input_shape=None) -> EngineSidecar:
    from wmoe.contract import Decision

    meta = ModelMeta(image_size=size, input="frames", frame_size=frame, decision=Decision(threshold=threshold))
    return EngineSidecar(engine="x", onnx_sha256="a" * 64, checkpoint_sha256="b" * 64, precision="fp16",
                         tensorrt_version="10.16.1", gpu_name="NVIDIA L4", compute_capability="8.9",
                         inputs={"frames": input_shape or [-1, *frame, 3]},
                         outputs={"scores": [-1], "maps": [-1, size, size], "text_scores": [-1]},
                         batch_ranges=[[1, 4, 8]], metadata=meta.to_metadata())


def test_sidecar_records_the_engine_hash(tmp_path):
    eng = write_engine_and_sidecar(tmp_path / "line1.engine", b"line-1 plan bytes", sidecar(1.0))
    side = EngineSidecar.read(EngineSidecar.path_for(eng))
    assert side.engine == "line1.engine" and side.engine_sha256 == sha256_file(eng)
    assert side.onnx_sha256 == "a" * 64  # the ONNX it was built from (build_engine fills it)
    assert side.check_engine(eng) is True


def test_engine_with_another_engines_sidecar_is_refused(tmp_path, capsys):
    """line2.engine with line1.engine's sidecar: refused, naming both (the old code served line 1's threshold)."""
    write_engine_and_sidecar(tmp_path / "line1.engine", b"line-1 plan bytes", sidecar(1.0))
    line2 = write_engine_and_sidecar(tmp_path / "line2.engine", b"line-2 plan bytes", sidecar(2.0))
    shutil.copy(tmp_path / "line1.json", tmp_path / "line2.json")
    with pytest.raises(ExportError, match=r"line2.engine: its sidecar .*line2.json was written for another engine "
                                          r"\(line1.engine, SHA-256 [0-9a-f]{12}\.\.\.; this file is [0-9a-f]{12}"):
        write_repository(line2, tmp_path / "repo")
    assert not (tmp_path / "repo" / "wmoe").exists()
    rc = export_main(["triton", str(line2), "--out", str(tmp_path / "repo")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "written for another engine" in err
    with pytest.raises(EngineCompatError, match="written for another engine"):
        EngineSidecar.read(tmp_path / "line2.json").check_engine(line2)
    # its own sidecar back: served, with its own threshold
    write_engine_and_sidecar(line2, b"line-2 plan bytes", sidecar(2.0))
    repo = write_repository(line2, tmp_path / "repo")
    assert 'key: "wmoe.threshold"\n  value: { string_value: "2.0" }' in (repo / "wmoe" / "config.pbtxt").read_text()
    rec = json.loads((repo / "wmoe" / "1" / "wmoe-version.json").read_text())
    assert rec["engine_sha256"] == sha256_file(line2) == rec["files"]["model.plan"]


def test_sidecar_that_contradicts_its_metadata_is_refused_at_load(tmp_path, capsys):
    """Input 224x224 in the sidecar while its metadata says 112x112 frames: refused (the old code wrote a
    config.pbtxt with dims [224, 224, 3])."""
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"plan")
    sidecar(1.0, input_shape=[-1, 224, 224, 3]).write(tmp_path / "m.json")
    msg = (r"m.json: the sidecar contradicts itself: input 'frames' is \[224, 224, 3\] per image but its metadata "
           r"says \[112, 112, 3\] \(frames, image_size 112, frame_size \[112, 112\]\)")
    with pytest.raises(EngineCompatError, match=msg):
        EngineSidecar.read(tmp_path / "m.json")
    with pytest.raises(ExportError, match=msg):
        write_repository(eng, tmp_path / "repo", TritonOptions())
    assert export_main(["triton", str(eng), "--out", str(tmp_path / "repo")]) == 2
    assert "contradicts itself" in capsys.readouterr().err
    bad = sidecar(1.0)
    bad.outputs["maps"] = [-1, 224, 224]
    bad.write(tmp_path / "m.json")
    with pytest.raises(EngineCompatError, match=r"output 'maps' is \[224, 224\] but its metadata says image_size 112"):
        EngineSidecar.read(tmp_path / "m.json")


@pytest.fixture(scope="module")
def frames_onnx(tmp_path_factory):
    from conftest import export_tiny_frames

    return export_tiny_frames(tmp_path_factory.mktemp("frames"), seed=2, threshold=1.0)


@pytest.mark.parametrize("key,value,problem", [
    ("wmoe.frame_size", "[112, 112]", r"input 'frames' is \[48, 64, 3\] per image but its metadata says "
                                      r"\[112, 112, 3\] \(frames, image_size 56, frame_size \[112, 112\]\)"),
    ("wmoe.image_size", "112", r"output 'maps' is \[56, 56\] but its metadata says image_size 112")])
def test_onnx_whose_metadata_contradicts_its_graph_is_refused_at_load(frames_onnx, tmp_path, capsys, key, value,
                                                                      problem):
    """An ONNX whose wmoe.* metadata says 112x112 frames (or 112 px maps) while its graph takes 48x64 (gives 56 px):
    refused when opened by the runtime, the camera loop and wmoe export triton, naming the fields. The old code
    opened it: the camera scored nothing and blamed the frames ('this model takes 112x112 frames, got 48x64'), or
    scored every frame against a contract of another size; export triton staged it before noticing."""
    import subprocess
    import sys

    from wmoe.contract import ContractError
    from wmoe.contract import read_onnx_contract
    from wmoe.onnx_meta import write_onnx_metadata
    from wmoe.runtime import Runtime

    bad = write_onnx_metadata(frames_onnx, {key: value}, out=tmp_path / "mixed.onnx")
    msg = r"mixed.onnx: its metadata contradicts its graph: " + problem
    assert read_onnx_contract(frames_onnx).frame_size == (48, 64)  # the export itself agrees with its graph
    with pytest.raises(ContractError, match=msg):
        read_onnx_contract(bad)
    with pytest.raises(ContractError, match=msg):
        Runtime.open(bad)
    with pytest.raises(ExportError, match=msg):
        write_repository(bad, tmp_path / "repo", TritonOptions(device="cpu"))
    assert not (tmp_path / "repo" / "wmoe").exists()  # refused before anything was staged
    frames = tmp_path / "frames"
    frames.mkdir()
    from PIL import Image
    import numpy as np
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(frames / "a.png")
    r = subprocess.run([sys.executable, "-m", "wmoe.runtime.camera", "--source", str(frames), "--model", str(bad)],
                       capture_output=True, text=True, timeout=300)
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(err) == 1 and "contradicts its graph" in err[0], r.stderr
