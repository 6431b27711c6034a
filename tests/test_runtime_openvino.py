"""The OpenVINO CPU backend of the runtime: the real OpenVINO runs the exported ONNX (frames input, stored decision);
precision is chosen by the accuracy gate once (wmoe export cpu-precision) and fallbacks say why."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from wmoe.contract import ContractError, CpuPrecision, ModelMeta
from wmoe.onnx_meta import read_onnx_metadata

ov = pytest.importorskip("openvino")
from wmoe.runtime import Runtime  # noqa: E402
from wmoe.runtime.openvino_backend import OpenVinoBackend, cpu_capabilities, resolve_precision  # noqa: E402

ALL = ("FP32", "BF16", "INT8")


@pytest.fixture(scope="module")
def frames_onnx(tmp_path_factory):
    from conftest import export_tiny_frames

    return export_tiny_frames(tmp_path_factory.mktemp("ov"), seed=3, threshold=0.3)


def _meta(rec=None, precision="fp32"):
    return ModelMeta(56, precision=precision, cpu_precision=rec)


def test_precision_rules_fall_back_with_the_reason(tmp_path):
    """The decision table of resolve_precision: what is stored and passed runs; what this CPU or folder cannot run
    falls back to the next passing precision, f32 last, naming why; nothing reduced runs ungated."""
    p = tmp_path / "m.onnx"
    q = tmp_path / "m.qdq.onnx"
    q.write_bytes(b"qdq")
    from wmoe.contract import sha256_file
    rec = CpuPrecision("int8", {"f32": {"passed": True, "images_per_s": 1.0},
                                "bf16": {"passed": True, "images_per_s": 2.0},
                                "int8": {"passed": True, "images_per_s": 3.0}},
                       int8_model="m.qdq.onnx", int8_sha256=sha256_file(q))
    assert resolve_precision("auto", _meta(), p, ALL)[0] == "f32"
    assert "no CPU precision decision" in resolve_precision("auto", _meta(), p, ALL)[2]
    assert resolve_precision("auto", _meta(rec), p, ALL) == ("int8", q, "")
    # another line PC: no INT8 capability -> bf16 (the next passing), and it says why
    prec, f, note = resolve_precision("auto", _meta(rec), p, ("FP32", "BF16"))
    assert (prec, f) == ("bf16", p) and "no INT8" in note and "running bf16" in note
    prec, _, note = resolve_precision("auto", _meta(rec), p, ("FP32",))
    assert prec == "f32" and "no INT8" in note and "no BF16" in note
    # the Q/DQ file replaced after the gate measured it: not run on the old verdict
    q.write_bytes(b"another")
    prec, _, note = resolve_precision("auto", _meta(rec), p, ALL)
    assert prec == "bf16" and "SHA-256 differs" in note
    q.unlink()
    assert "missing" in resolve_precision("auto", _meta(rec), p, ALL)[2]
    # explicit reduced precision: only where the gate passed
    failed = CpuPrecision("f32", {"f32": {"passed": True}, "bf16": {"passed": False,
                                                                    "failures": ["score Spearman 0.9 < 0.99"]}})
    prec, _, note = resolve_precision("bf16", _meta(failed), p, ALL)
    assert prec == "f32" and "bf16 failed the accuracy gate (score Spearman 0.9 < 0.99)" in note
    prec, _, note = resolve_precision("int8", _meta(failed), p, ALL)
    assert prec == "f32" and "never measured" in note
    assert resolve_precision("bf16", _meta(failed), p, ALL, allow_ungated=True)[0] == "bf16"  # the bench's way
    assert resolve_precision("bf16", _meta(), p, ("FP32",), allow_ungated=True)[0] == "f32"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp16", _meta(), p, ALL)
    with pytest.raises(ContractError, match="fp8"):
        resolve_precision("auto", _meta(precision="fp8"), p, ALL)
    # the contract refuses a record whose choice did not pass
    with pytest.raises(ContractError, match="did not pass"):
        CpuPrecision("bf16", {"bf16": {"passed": False}})


def test_openvino_scores_frames_like_onnx_runtime(frames_onnx, tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    ref = Runtime.open(frames_onnx).score(frames)
    cache = tmp_path / "ovcache"
    with Runtime.open(frames_onnx, provider="openvino", precision="f32", cache_dir=cache) as rt:
        res = rt.score(frames)
        assert rt.backend.precision == "f32" and rt.backend.hint == "LATENCY" and rt.backend.streams == 1
    assert np.abs(res.maps - ref.maps).max() < 1e-5 and np.abs(res.scores - ref.scores).max() < 1e-5
    assert res.verdicts == ref.verdicts and rt.decision.threshold == 0.3  # the stored decision
    assert any(cache.iterdir())  # compiled once, cached on disk for the next start
    # a batch > 1 compiles for throughput: the batch is split over the streams, same outputs
    be = OpenVinoBackend(frames_onnx, precision="f32", batch=4, cache_dir=cache)
    assert be.hint == "THROUGHPUT" and be.streams >= 1
    out = be.run(np.stack(list(frames) * 2))
    be.close()
    assert out["maps"].shape == (6, 56, 56) and np.abs(out["maps"][:3] - ref.maps).max() < 1e-5
    # bf16 asked without a gate verdict: runs f32 and says so
    if "BF16" in cpu_capabilities():
        with pytest.warns(RuntimeWarning, match="never measured by the accuracy gate"):
            rt = Runtime.open(frames_onnx, provider="openvino", precision="bf16", cache_dir=cache)
        assert rt.backend.precision == "f32"
        rt.close()


def test_cpu_precision_decision_is_stored_and_used(frames_onnx, tmp_path):
    """wmoe export cpu-precision measures each precision with the gate, stores the fastest passing one in the model
    (metadata only: the graph bytes are copied), and the runtime's default runs it."""
    import shutil

    from wmoe.data import make_demo_dataset
    from wmoe.export.cpu_precision import choose_cpu_precision
    from wmoe.export.gate import GateThresholds
    model = tmp_path / "m.onnx"
    shutil.copyfile(frames_onnx, model)
    data = make_demo_dataset(tmp_path / "demo", image_size=64, n_train_good=1, n_test_good=4, n_test_defect=4,
                             categories=["gravel", "cell"])
    before = ModelMeta.from_metadata(read_onnx_metadata(model))
    rec = choose_cpu_precision(model, gate_data=data, thresholds=GateThresholds(1.0, -1.0), repeats=1,
                               progress=False)
    passing = [p for p, c in rec.candidates.items() if c["passed"]]
    assert rec.choice == max(passing, key=lambda p: rec.candidates[p]["images_per_s"])
    assert rec.candidates["f32"]["spearman_scores"] > 0.9999 and rec.candidates["f32"]["n_images"] == 16
    after = ModelMeta.from_metadata(read_onnx_metadata(model))
    assert after.cpu_precision == rec and after.decision == before.decision
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stored choice runs without a fallback warning
        rt = Runtime.open(model, provider="openvino", cache_dir=tmp_path / "c")
    assert rt.backend.precision == rec.choice and rt.backend.note == ""
    rt.close()
    frames = np.random.default_rng(1).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    ref = Runtime.open(frames_onnx).score(frames)  # the rewritten file computes what the original did
    assert np.abs(Runtime.open(model).score(frames).maps - ref.maps).max() == 0
    # the strictest gate (ranking identical, no AUROC drop): f32 (exact) passes it; a failed bf16 is never run,
    # an explicit request falls back naming the failure
    rec2 = choose_cpu_precision(model, gate_data=data, thresholds=GateThresholds(0.0, 1.0), repeats=1,
                                progress=False)
    assert rec2.candidates["f32"]["passed"] and rec2.candidates[rec2.choice]["passed"]
    if "bf16" in rec2.candidates and not rec2.candidates["bf16"]["passed"]:
        with pytest.warns(RuntimeWarning, match="bf16 failed the accuracy gate"):
            assert Runtime.open(model, provider="openvino", precision="bf16",
                                cache_dir=tmp_path / "c").backend.precision == "f32"


def test_camera_loop_runs_on_openvino(frames_onnx, tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(src / f"f{i}.png")
    r = subprocess.run([sys.executable, "-m", "wmoe.runtime.camera", "--source", str(src), "--model", str(frames_onnx),
                        "--provider", "openvino", "--batch", "2", "--report-every", "0"],
                       capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "WMOE_OV_CACHE": str(tmp_path / "c")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "backend: OpenVINO" in r.stdout and "f32" in r.stdout and "final: frames 3" in r.stdout
