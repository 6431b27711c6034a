"""The deployment contract (torch-free): ONNX metadata reader vs the real onnx library, ModelMeta/Decision round
trips and refusals, the one engine sidecar check, and the one ONNX Runtime session factory."""
import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from wmoe.contract import (CLIP_MEAN, ContractError, Decision, EngineCompatError, EngineSidecar, ModelMeta,
                           PreprocessSpec, check_engine_compat, parse_precision, threshold_path)
from wmoe.onnx_meta import read_onnx_external_files, read_onnx_metadata
from wmoe.errors import ProviderUnavailableError
from wmoe.runtime.session import PROVIDERS, make_session, provider_chain


def _tiny_onnx(path, meta=None, domain="", big=0):
    """A real ONNX (y = x + w) written by the onnx library, optionally with a large initializer to skip."""
    w = numpy_helper.from_array(np.random.default_rng().standard_normal(big or 3).astype(np.float32), "w")
    node = helper.make_node("Add", ["x", "w"], ["y"], domain=domain)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [big or 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [big or 3])], [w])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    m = helper.make_model(g, opset_imports=opsets)
    for k, v in (meta or {}).items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(path))
    return path


def test_metadata_reader_matches_onnx(tmp_path):
    meta = ModelMeta(image_size=224, decision=Decision(1.25, 0.5, calibration={"n_images": 10})).to_metadata()
    meta["other.key"] = "ünïcode ✓" * 50  # multi-byte and > 127 bytes (multi-byte varint lengths)
    p = _tiny_onnx(tmp_path / "m.onnx", meta, big=300_000)  # 1.2 MB graph skipped by seeking
    want = {e.key: e.value for e in onnx.load(str(p)).metadata_props}
    assert read_onnx_metadata(p) == want
    assert ModelMeta.from_metadata(read_onnx_metadata(p), "m.onnx").decision.threshold == 1.25


def test_external_data_reader_matches_onnx(tmp_path):
    """The files holding external weights, read without the onnx package (a runtime-only install writes Triton
    repositories with it): the same as onnx's answer, with inline tensors and several external files."""
    rng = np.random.default_rng()
    ws = [numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), f"w{i}") for i, n in
          enumerate((3, 40_000, 5_000))]
    nodes = [helper.make_node("Add", ["x", "w0"], ["a"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3])], ws)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save_model(m, str(tmp_path / "inline.onnx"))
    assert read_onnx_external_files(tmp_path / "inline.onnx") == []
    onnx.save_model(m, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=1024)
    proto = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False)
    want = sorted({e.value for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL
                   for e in t.external_data if e.key == "location"})
    assert len(want) == 2 and read_onnx_external_files(tmp_path / "ext.onnx") == want
    (tmp_path / "bad.onnx").write_bytes((tmp_path / "ext.onnx").read_bytes()[:-7])
    with pytest.raises(ContractError, match="bad.onnx"):
        read_onnx_external_files(tmp_path / "bad.onnx")


@pytest.mark.parametrize("content,msg", [(b"", "empty"), (b"not onnx at all", "not an ONNX model"),
                                         (b"\x08\x07", "not an ONNX model")])
def test_metadata_reader_refuses_non_onnx(tmp_path, content, msg):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(ContractError, match=f"bad.onnx.*{msg}|{msg}.*bad.onnx"):
        read_onnx_metadata(p)
    with pytest.raises(ContractError, match="no such"):
        read_onnx_metadata(tmp_path / "missing.onnx")


def test_truncated_onnx_is_refused(tmp_path):
    p = _tiny_onnx(tmp_path / "m.onnx", ModelMeta(image_size=32).to_metadata(), big=1000)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ContractError, match="m.onnx"):
        read_onnx_metadata(p)


def test_model_meta_round_trip_and_refusals():
    m = ModelMeta(image_size=336, input="frames", frame_size=(1080, 1920), precision="float16",
                  decision=Decision(threshold=0.7, calibration={"classes": ["a"]}))
    back = ModelMeta.from_metadata(m.to_metadata())
    assert back == m and back.precision == "fp16" and back.mean == CLIP_MEAN
    assert m.to_metadata()["wmoe.threshold"] == "0.7"
    with pytest.raises(ContractError, match="foreign.onnx is not a wmoe model"):
        ModelMeta.from_metadata({"producer": "x"}, "foreign.onnx")
    bad = m.to_metadata()
    bad["wmoe.decision"] = '{"threshold": "high"}'
    with pytest.raises(ContractError, match="threshold must be a finite number"):
        ModelMeta.from_metadata(bad, "m.onnx")
    bad["wmoe.decision"] = "{"
    with pytest.raises(ContractError, match="m.onnx"):
        ModelMeta.from_metadata(bad, "m.onnx")
    with pytest.raises(ContractError, match="frame_size"):
        ModelMeta(image_size=336, input="frames")
    with pytest.raises(ContractError, match="unknown resize"):
        PreprocessSpec(336, resize="lanczos")
    with pytest.raises(ValueError, match="fp32, fp16"):
        parse_precision("fp64")


def test_decision_never_calls_a_fault_normal():
    d = Decision(threshold=1.0, pixel_threshold=0.5)
    assert d.verdicts(np.array([0.5, 1.0, 2.0, np.nan, np.inf, -np.inf])) == [
        "normal", "anomalous", "anomalous", "undecided", "undecided", "undecided"]
    assert Decision().verdicts(np.array([5.0])) == ["undecided"]  # no threshold known
    mask = d.mask(np.array([[0.1, 0.6], [np.nan, 0.4]]))
    assert mask.tolist() == [[False, True], [True, False]]
    assert Decision().mask(np.zeros((2, 2))) is None
    for bad in (float("nan"), float("inf"), True, "1"):
        with pytest.raises(ContractError):
            Decision(threshold=bad)
    with pytest.raises(ContractError, match="unknown decision fields"):
        Decision.from_json('{"treshold": 1}', "t.json")
    assert threshold_path("runs/a/model.safetensors").name == "model.safetensors.threshold.json"


def _sidecar(**kw):
    base = dict(engine="m.engine", onnx_sha256="a", checkpoint_sha256="b", precision="fp16",
                tensorrt_version="10.9.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                inputs={"images": [-1, 3, 336, 336]}, outputs={"scores": [-1]}, batch_ranges=[[1, 1, 1], [8, 16, 32]],
                metadata=ModelMeta(image_size=336, decision=Decision(0.9)).to_metadata())
    base.update(kw)
    return EngineSidecar(**base)


def test_engine_sidecar_one_check(tmp_path):
    s = _sidecar()
    s.write(EngineSidecar.path_for(tmp_path / "m.engine"))
    back = EngineSidecar.read(tmp_path / "m.json")
    assert back == s and back.model_meta.decision.threshold == 0.9 and back.model_meta.image_size == 336
    check_engine_compat(s, "NVIDIA H100 80GB HBM3", "10.9.7", (16, 3, 336, 336))
    for args, msg in [(("Orin", "10.9.0"), "Orin"), (("NVIDIA H100 80GB HBM3", "10.3.0"), "TensorRT 10.3"),
                      (("NVIDIA H100 80GB HBM3", "10.9.0", (4, 3, 336, 336)), "batch in"),  # between the profiles
                      (("NVIDIA H100 80GB HBM3", "10.9.0", (1, 3, 224, 224)), "does not fit")]:
        with pytest.raises(EngineCompatError, match=msg):
            check_engine_compat(s, *args)
    (tmp_path / "bad.json").write_text('{"engine": 1}')
    with pytest.raises(EngineCompatError, match="damaged"):
        EngineSidecar.read(tmp_path / "bad.json")


def test_provider_chain_registers_cuda_behind_tensorrt(tmp_path):
    meta = ModelMeta(image_size=336, precision="fp16")
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chain = provider_chain("tensorrt", gpu, meta, tmp_path / "cache", (1, 4, 16))
    assert [c[0] if isinstance(c, tuple) else c for c in chain] == gpu
    opts = chain[0][1]
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert (tmp_path / "cache").is_dir() and opts["trt_fp16_enable"] == "True"
    assert opts["trt_profile_min_shapes"] == "images:1x3x336x336"
    assert opts["trt_profile_max_shapes"] == "images:16x3x336x336"
    frames = ModelMeta(image_size=336, input="frames", frame_size=(480, 640))
    assert provider_chain("tensorrt", gpu, frames, tmp_path)[0][1]["trt_profile_opt_shapes"] == "frames:8x480x640x3"
    assert provider_chain("tensorrt", gpu, frames, tmp_path)[0][1]["trt_fp16_enable"] == "False"
    with pytest.raises(ProviderUnavailableError, match="TensorrtExecutionProvider not available.*"
                       "--allow-cpu-fallback"):
        provider_chain("tensorrt", gpu[1:], meta, tmp_path)
    with pytest.warns(RuntimeWarning, match="TensorrtExecutionProvider.*running on CUDAExecutionProvider"):
        chain = provider_chain("tensorrt", gpu[1:], meta, tmp_path, allow_cpu_fallback=True)
    assert chain == gpu[1:]
    with pytest.raises(ValueError, match="batch profile"):
        provider_chain("tensorrt", gpu, meta, tmp_path, (8, 1, 16))


def test_session_factory_runs_and_refuses_plugin_flavor(tmp_path):
    p = _tiny_onnx(tmp_path / "m.onnx", ModelMeta(image_size=3).to_metadata())
    x = np.arange(3, dtype=np.float32)
    sess = make_session(p)
    assert sess.get_providers() == [PROVIDERS["cpu"]]
    w = numpy_helper.to_array(onnx.load(str(p)).graph.initializer[0])
    assert np.array_equal(sess.run(None, {"x": x})[0], x + w)
    plug = _tiny_onnx(tmp_path / "plugin.onnx", ModelMeta(image_size=3, flavor="plugin").to_metadata(), domain="wmoe")
    with pytest.raises(ContractError, match="plugin.onnx is the plugin flavor.*wmoe export trt"):
        make_session(plug)
    (tmp_path / "zero.onnx").write_bytes(b"")
    with pytest.raises(ContractError, match="zero.onnx is empty"):
        make_session(tmp_path / "zero.onnx")


def test_contract_and_runtime_import_without_torch():
    code = ("import sys\nimport wmoe.contract, wmoe.onnx_meta, wmoe.runtime, wmoe.runtime.session\n"
            "bad = [m for m in ('torch', 'onnx', 'open_clip', 'triton') if m in sys.modules]\n"
            "assert not bad, bad\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
