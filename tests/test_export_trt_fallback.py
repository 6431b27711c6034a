"""The portable fallback of `wmoe export trt` for TensorRT < 10.9 (JetPack 6 ships 10.3: no AOT Python plugins):
the plugin-flavor ONNX is re-exported as the portable flavor from its checkpoint with the WHOLE contract -- input
kind, frame size, threshold, pixel threshold, calibration record -- and nothing else changes but the flavor."""
import numpy as np
import pytest
import torch

from wmoe.model.checkpoint import save_checkpoint
from wmoe.model.config import ModelConfig
from wmoe.contract import INPUT_FRAMES, Decision, ModelMeta, read_onnx_contract
from wmoe.errors import ExportError
from wmoe.export.onnx_export import export_onnx
from wmoe.export.trt_build import plan_flavor, portable_fallback
from wmoe.model.wmoe_clip import WMoECLIP
from wmoe.onnx_meta import read_onnx_metadata


@pytest.fixture(scope="module")
def plugin_frames(tmp_path_factory):
    d = tmp_path_factory.mktemp("fallback")
    torch.manual_seed(5)
    ckpt = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), d / "m.safetensors")
    dec = Decision(0.3, 0.6, calibration={"n_images": 12, "method": "given"}, class_thresholds={"pcb": 0.4})
    onnx_path = export_onnx(ckpt, d / "plugin.onnx", flavor="plugin", preprocess=True, frame_size=(60, 80),
                            decision=dec)
    return {"ckpt": ckpt, "onnx": onnx_path, "dir": d, "decision": dec}


def test_fallback_keeps_the_whole_contract(plugin_frames, tmp_path):
    meta = read_onnx_metadata(plugin_frames["onnx"])
    flavor, note = plan_flavor(read_onnx_contract(plugin_frames["onnx"]), "10.3.0", plugin_frames["ckpt"])
    assert flavor == "portable" and "10.3.0 < 10.9" in note
    out = portable_fallback(plugin_frames["onnx"], plugin_frames["ckpt"], tmp_path / "m.portable.onnx")
    src = ModelMeta.from_metadata(meta)
    got = ModelMeta.from_metadata(read_onnx_metadata(out))
    assert src.flavor == "plugin" and got.flavor == "portable"
    assert got.input == INPUT_FRAMES and tuple(got.frame_size) == (60, 80)
    assert got.decision == plugin_frames["decision"]  # thresholds (image, pixel, per class), calibration record
    assert (got.image_size, got.precision, got.config, got.checkpoint_sha256, got.preprocess) == (
        src.image_size, src.precision, src.config, src.checkpoint_sha256, src.preprocess)
    # the portable file runs where the plugin one cannot (ONNX Runtime) and takes what the camera delivers
    from wmoe.runtime import Runtime
    frames = np.random.default_rng(0).integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
    res = Runtime.open(out).score(frames)
    assert res.scores.shape == (2,) and res.verdicts is not None


def test_fallback_refuses_another_checkpoint(plugin_frames, tmp_path):
    torch.manual_seed(6)
    other = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), tmp_path / "other.safetensors")
    with pytest.raises(ExportError, match="other.safetensors is not the checkpoint .*plugin.onnx was exported from"):
        portable_fallback(plugin_frames["onnx"], other, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ExportError, match="missing.safetensors: no such checkpoint"):
        portable_fallback(plugin_frames["onnx"], tmp_path / "missing.safetensors", tmp_path / "x.onnx")
