"""The runtime (numpy + ONNX Runtime, no torch) against the PyTorch model; bad frames; TensorRT sidecar checks."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
import torch

from wmoe.detector import Detector
from wmoe.contract import ContractError
from wmoe.runtime import FrameError, Runtime

SIZE = 112


@pytest.fixture(scope="module")
def model_files(tiny_onnx):
    return tiny_onnx


def test_runtime_matches_detector(model_files):
    ckpt, onnx_path = model_files
    rng = np.random.default_rng()
    frames = [rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), rng.integers(0, 256, (200, 150, 3), dtype=np.uint8)]
    with Runtime.open(onnx_path) as rt:
        assert rt.input_size == SIZE
        res = rt.score(frames)
    ref = Detector.from_checkpoint(ckpt)(frames)
    # numpy twin vs torch preprocessing: <= 1e-4 pixel units apart (tests/test_preprocess_spec.py)
    np.testing.assert_allclose(res.scores, ref.scores, atol=1e-4)
    for i, f in enumerate(frames):
        m = res.maps_at(i)
        assert m.shape == f.shape[:2]
        # the map goes back to the frame size with the Detector's bilinear (numpy twin of torch's interpolate)
        assert np.abs(m - ref.maps[i]).max() < 1e-4


def test_runtime_exact_on_preprocessed_input(model_files):
    ckpt, onnx_path = model_files
    x = torch.randn(3, 3, SIZE, SIZE)
    from wmoe.model.checkpoint import load_model
    with torch.no_grad():
        o = load_model(ckpt)(x)
    res = Runtime.open(onnx_path).score_preprocessed(x.numpy())
    assert np.abs(res.maps - o.maps.numpy()).max() <= 1e-4
    assert np.abs(res.scores - o.scores.numpy()).max() <= 1e-4


def test_bad_frames(model_files):
    rt = Runtime.open(model_files[1])
    with pytest.raises(FrameError, match="frame 1 is None"):
        rt.score([np.zeros((8, 8, 3), np.uint8), None])
    with pytest.raises(FrameError, match="uint8"):
        rt.score(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(FrameError, match="shape"):
        rt.score(np.zeros((8, 8, 5), np.uint8))
    gray = rt.score(np.full((30, 40), 128, np.uint8))  # gray frames are expanded to RGB
    rgb = rt.score(np.full((30, 40, 3), 128, np.uint8))
    np.testing.assert_array_equal(gray.scores, rgb.scores)
    with pytest.raises(ContractError, match="missing.onnx: no such model file"):
        Runtime.open(model_files[1].with_name("missing.onnx"))
    odd = model_files[1].with_name("model.bin")
    odd.write_bytes(b"\0")
    with pytest.raises(ContractError, match=r"model.bin: unknown model type \(expected .onnx, .engine, .plan, "):
        Runtime.open(odd)
    with pytest.raises(ContractError, match=r"no backend runs .onnx files on provider 'torch'"):
        Runtime.open(model_files[1], provider="torch")


def test_runtime_does_not_import_torch(model_files):
    code = ("import sys, numpy as np\nfrom wmoe.runtime import Runtime\n"
            f"r = Runtime.open({str(model_files[1])!r}).score(np.zeros((50, 60, 3), np.uint8))\n"
            "assert r.scores.shape == (1,)\nassert 'torch' not in sys.modules, 'torch imported'\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_provider_that_cannot_be_had_is_an_error_unless_fallback_allowed(model_files, provider, tmp_path):
    """Issue 20 item 6: --provider cuda on a machine without it used to warn and score on the CPU (exit 0)."""
    import onnxruntime as ort

    from wmoe.errors import ProviderUnavailableError
    from wmoe.runtime.session import PROVIDERS, make_session
    from wmoe.runtime.onnx_backend import OnnxBackend
    _, onnx_path = model_files
    want = PROVIDERS[provider]
    if want in ort.get_available_providers():  # onnxruntime-gpu: the provider is used, CPU behind it
        assert make_session(onnx_path, provider=provider).get_providers()[0] == want
        assert OnnxBackend(onnx_path, provider=provider).session.get_providers()[0] == want
        return
    with pytest.raises(ProviderUnavailableError, match=f"{want}.*not available.*onnxruntime-gpu.*"
                       "--allow-cpu-fallback"):
        make_session(onnx_path, provider=provider)
    with pytest.raises(ProviderUnavailableError, match=want):
        Runtime.open(onnx_path, provider=provider)
    with pytest.warns(RuntimeWarning, match=want):
        sess = make_session(onnx_path, provider=provider, allow_cpu_fallback=True)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    with pytest.warns(RuntimeWarning, match=want):
        rt = Runtime.open(onnx_path, provider=provider, allow_cpu_fallback=True)
    assert rt.backend.session.get_providers() == ["CPUExecutionProvider"]
    # the camera loop: one line naming what is missing, exit status 2; runs with --allow-cpu-fallback
    src = tmp_path / "frames"
    src.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(src / "0.png")
    cmd = [sys.executable, "-m", "wmoe.runtime.camera", "--source", str(src), "--model", str(onnx_path),
           "--provider", provider]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and want in r.stderr and "--allow-cpu-fallback" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "running on" not in r.stderr, r.stderr  # the error said 'running on CPUExecutionProvider' and ran nothing
    r = subprocess.run(cmd + ["--allow-cpu-fallback"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and want in r.stderr, r.stdout + r.stderr[-2000:]
    assert "running on CPUExecutionProvider" in r.stderr, r.stderr  # the warning says where it runs instead
    with pytest.raises(ValueError, match="provider must be one of"):
        make_session(onnx_path, provider="rocm")


def test_decision_travels_with_the_model(model_files, tmp_path):
    import onnx
    from onnx import numpy_helper

    _, onnx_path = model_files
    rng = np.random.default_rng()
    frames = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(3)]
    with Runtime.open(onnx_path) as rt:
        assert rt.decision.threshold == 0.25 and rt.decision.pixel_threshold == 0.5
        res = rt.score(frames)
    want = ["anomalous" if s >= 0.25 else "normal" for s in res.scores]
    assert res.verdicts == want and res.faults == ["", "", ""]
    assert np.array_equal(res.mask_at(1), res.maps_at(1) >= 0.5) and res.mask_at(1).shape == (40, 50)
    with Runtime.open(onnx_path, threshold=float(res.scores.max()) + 1) as rt:  # an override beats the file
        assert rt.score(frames).verdicts == ["normal"] * 3
    # a broken model (NaN weights, written by the real onnx library) is never judged normal
    proto = onnx.load(str(onnx_path))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(init).shape, np.nan, np.float32), init.name))
    onnx.save(proto, str(tmp_path / "nan.onnx"))
    with Runtime.open(tmp_path / "nan.onnx") as rt:
        res = rt.score(frames)
        assert res.verdicts == ["undecided"] * 3 and all("non-finite" in f for f in res.faults)
        with pytest.raises(FrameError, match="NaN or infinite.*images \\[1\\]"):
            rt.score_preprocessed(np.stack([np.zeros((3, SIZE, SIZE), np.float32),
                                            np.full((3, SIZE, SIZE), np.inf, np.float32)]))
