"""Preprocessing defined once: the torch implementation (data set, Detector, exported graph) and its numpy twin (the
runtime) against a float64 reference of the spec's definition; eval and predict give the same tensor and score for
the same file; the in-graph frames model agrees in ONNX Runtime and OpenVINO (the resize ports)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wmoe.contract import PreprocessSpec
from wmoe.model.preprocess import resize_batch, resize_normalize, to_chw_list
from wmoe.runtime.frames import preprocess_frames, resize_frame

#: The one stated tolerance between the numpy twin, the torch implementation and the definition, in [0, 1] pixel
#: units (a quarter of a grey level at most): float32 source coordinates may differ by an ulp between
#: implementations (measured up to 3.1e-5 at 1080p -> 336).
TWIN_TOL = 1e-4


def reference_resize(img: np.ndarray, s: int) -> np.ndarray:
    """The ``bilinear-box`` definition in float64: bilinear (half-pixel centres, clamped at 0 and the last pixel;
    source coordinates in float32 as torch and ONNX Resize compute them — float64 coordinates move 1080p samples
    by ~1e-4 px, 3e-5 in value) to (s*kh, s*kw), then the mean of each kh x kw block."""
    h, w = img.shape[:2]
    kh, kw = max(1, h // s), max(1, w // s)
    x = img.astype(np.float64)

    def axis(n_in, m):
        f32 = np.float32
        src = np.maximum((np.arange(m, dtype=f32) + f32(0.5)) * f32(n_in / m) - f32(0.5), f32(0)).astype(np.float64)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    r0, r1, ry = axis(h, s * kh)
    c0, c1, cx = axis(w, s * kw)
    up = ((1 - ry)[:, None, None] * ((1 - cx)[None, :, None] * x[r0][:, c0] + cx[None, :, None] * x[r0][:, c1])
          + ry[:, None, None] * ((1 - cx)[None, :, None] * x[r1][:, c0] + cx[None, :, None] * x[r1][:, c1]))
    return up.reshape(s, kh, s, kw, -1).mean(axis=(1, 3))


@pytest.mark.parametrize("h,w,s", [(1080, 1920, 336), (331, 517, 112), (50, 70, 112), (112, 112, 112),
                                   (113, 1000, 112), (517, 518, 259)])
def test_torch_and_numpy_twin_match_the_definition(h, w, s):
    img = np.random.default_rng().integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = reference_resize(img, s) / 255
    spec = PreprocessSpec(s)
    t = resize_batch(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, spec)[0].permute(1, 2, 0).numpy()
    n = resize_frame(img, spec) / 255
    assert np.abs(t - ref).max() <= TWIN_TOL and np.abs(n - ref).max() <= TWIN_TOL
    assert np.abs(n - t).max() <= TWIN_TOL
    # normalized model inputs: the same tolerance scaled by 1/std
    x_t = resize_normalize(to_chw_list(img), s).numpy()
    x_n = preprocess_frames([img], spec)
    assert np.abs(x_t - x_n).max() <= TWIN_TOL / min(spec.std)


def test_eval_and_predict_score_the_same_image_identically(tmp_path, tiny_onnx):
    from wmoe.data import AnomalyDataset, make_demo_dataset
    from wmoe.detector import Detector
    from wmoe.image_io import load_image

    root = make_demo_dataset(tmp_path / "demo", image_size=150, n_test_good=1, n_test_defect=1,
                             categories=["gravel"])
    ds = AnomalyDataset(root, split="test", image_size=112)
    det = Detector.from_checkpoint(tiny_onnx[0])
    for i in range(len(ds)):
        item = ds[i]
        path = Path(item["img_path"])
        x_pred = resize_normalize(to_chw_list(load_image(path)), 112)[0]
        assert torch.equal(item["image"], x_pred)  # eval's tensor is predict's tensor, bit for bit
        with torch.no_grad():
            s_eval = det.model(item["image"][None]).scores[0].item()
        assert s_eval == det(load_image(path)).scores[0]
        with Image.open(path) as im:
            assert det(im).scores[0] == s_eval


def test_in_graph_frames_model_ports_to_onnxruntime_and_openvino(tmp_path):
    from wmoe.model.config import ModelConfig
    from wmoe.export.onnx_export import export_onnx
    from wmoe.model.wmoe_clip import WMoECLIP
    from wmoe.runtime import Runtime
    from wmoe.runtime.session import make_session

    torch.manual_seed(0)
    model = WMoECLIP(ModelConfig.tiny(image_size=112)).eval()
    p = export_onnx(model, tmp_path / "frames.onnx", preprocess=True, frame_size=(150, 250))  # kh=1, kw=2
    frames = np.random.default_rng().integers(0, 256, (2, 150, 250, 3), dtype=np.uint8)
    got = make_session(p).run(None, {"frames": frames})
    with torch.no_grad():
        o = model(resize_normalize(to_chw_list(frames), 112))
    assert np.abs(got[0] - o.scores.numpy()).max() <= 1e-4 and np.abs(got[1] - o.maps.numpy()).max() <= 1e-4
    res = Runtime.open(p).score(frames)  # the runtime only stacks the frames
    np.testing.assert_array_equal(res.scores, got[0])
    ov = pytest.importorskip("openvino")
    cm = ov.Core().compile_model(str(p), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = cm([frames])
    ov_scores, ov_maps = out[cm.outputs[0]], out[cm.outputs[1]]
    # measured 6.6e-7 on maps (the antialiased-cubic graph this replaced differed by 0.56)
    assert np.abs(ov_maps - got[1]).max() <= 1e-5 and np.abs(ov_scores - got[0]).max() <= 1e-5


def test_model_sized_frames_model_takes_any_frame_size(tmp_path):
    """The CLI's default export (uint8 frames of the model's SxS): the runtime resizes other frames with the numpy
    twin and rounds to uint8 — within half a grey level of the Detector's float path."""
    from wmoe.model.config import ModelConfig
    from wmoe.detector import Detector
    from wmoe.export.onnx_export import export_onnx
    from wmoe.model.wmoe_clip import WMoECLIP
    from wmoe.runtime import FrameError, Runtime

    torch.manual_seed(0)
    model = WMoECLIP(ModelConfig.tiny(image_size=112)).eval()
    p = export_onnx(model, tmp_path / "sq.onnx", preprocess=True)  # frame_size defaults to (112, 112)
    rng = np.random.default_rng()
    frames = [rng.integers(0, 256, (300, 420, 3), dtype=np.uint8), rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)]
    with Runtime.open(p) as rt:
        assert rt.meta.input == "frames" and rt.meta.frame_size == (112, 112)
        res = rt.score(frames)
    ref = Detector(model)(frames)
    assert np.abs(res.scores - ref.scores).max() <= 5e-3  # uint8 rounding of the resized frame only
    assert abs(float(res.scores[1]) - float(ref.scores[1])) <= 1e-4  # model-sized: only stacked
    with Runtime.open(tmp_path / "sq.onnx") as rt:
        with pytest.raises(FrameError, match="frame 0: expected an HxWx3"):
            rt.score([np.zeros((5, 5, 7), np.uint8)])
