"""ONNX export: the real exporter and the real ONNX Runtime against PyTorch; determinism; bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from wmoe.model.checkpoint import CheckpointError, save_checkpoint
from wmoe.model.config import ModelConfig
from wmoe.contract import ContractError, Decision, ModelMeta, threshold_path
from wmoe.export.onnx_export import ExportError, export_onnx
from wmoe.onnx_meta import read_onnx_metadata as read_metadata
from wmoe.runtime.session import make_session
from wmoe.model.wmoe_clip import WMoECLIP
from wmoe.model.preprocess import resize_normalize, to_chw_list

SIZE = 112


@pytest.fixture(scope="module")
def ckpt(trained_like_tiny, tmp_path_factory):
    assert trained_like_tiny.cfg.image_size == SIZE
    return save_checkpoint(trained_like_tiny, tmp_path_factory.mktemp("ck") / "m.safetensors")


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
    # the decision wmoe eval writes beside the checkpoint is picked up by the export
    threshold_path(ckpt).write_text(Decision(threshold=0.42, calibration={"n_images": 7}).to_json())
    return export_onnx(ckpt, tmp_path_factory.mktemp("onnx") / "m.onnx")


def _torch(ckpt, x):
    from wmoe.model.checkpoint import load_model
    m = load_model(ckpt)
    with torch.no_grad():
        o = m(x)
    return o.scores.numpy(), o.maps.numpy(), o.text_scores.numpy()


@pytest.mark.parametrize("batch", [1, 4])
def test_onnxruntime_matches_pytorch_fp32(ckpt, exported, batch):
    x = torch.randn(batch, 3, SIZE, SIZE)
    sess = make_session(exported)
    assert [o.name for o in sess.get_outputs()] == ["scores", "maps", "text_scores"]
    got = sess.run(None, {"images": x.numpy()})
    ref = _torch(ckpt, x)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        assert np.abs(g - r).max() <= 1e-4


def test_metadata_checker_and_exporter_pinned(ckpt, exported):
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto)
    meta = read_metadata(exported)
    assert meta["wmoe.exporter"] == "dynamo" and meta["wmoe.flavor"] == "portable"
    assert meta["wmoe.input"] == "images" and int(meta["wmoe.image_size"]) == SIZE
    assert ModelConfig.from_dict(json.loads(meta["wmoe.config"])) == ModelConfig.tiny(image_size=SIZE)
    m = ModelMeta.from_metadata(meta)
    assert m.decision.threshold == 0.42 and m.decision.calibration == {"n_images": 7} and m.input == "images"
    ops = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    assert "TopK" in ops and all(n.domain in ("", "ai.onnx", "pkg.onnxscript.torch_lib", "pkg.onnxscript.torch_lib.common")
                                  for n in proto.graph.node)
    # dynamic batch axis
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_dynamo_pinned_torchscript_disturbs_the_model(tmp_path):
    """Why the dynamo exporter is pinned: after the TorchScript exporter ran, the same in-memory PyTorch model gives
    different maps (measured 0.12 on torch 2.14; state dict unchanged, cause not isolated), so an export inside a
    running process (bench, tests) would corrupt its results. The dynamo export leaves the model untouched.
    If a future torch fixes it, this test fails and the choice can be revisited."""
    x = torch.randn(2, 3, 56, 56)
    changed = {}
    for exporter in ("dynamo", "torchscript"):
        torch.manual_seed(0)
        model = WMoECLIP(ModelConfig.tiny(image_size=56)).eval()
        with torch.no_grad():
            before = model(x).maps
        export_onnx(model, tmp_path / f"{exporter}.onnx", exporter=exporter, allow_torchscript=True)
        with torch.no_grad():
            changed[exporter] = float((model(x).maps - before).abs().max())
    assert changed["dynamo"] == 0.0 and changed["torchscript"] > 1e-3, changed


def test_export_is_deterministic(ckpt, exported, tmp_path):
    again = export_onnx(ckpt, tmp_path / "again.onnx")
    assert again.read_bytes() == exported.read_bytes()


def test_in_graph_preprocessing_and_fp16(ckpt, tmp_path):
    frames = np.random.default_rng().integers(0, 256, (2, 90, 120, 3), dtype=np.uint8)
    p = export_onnx(ckpt, tmp_path / "frames.onnx", preprocess=True, frame_size=(90, 120))
    got = make_session(p).run(None, {"frames": frames})
    ref = _torch(ckpt, resize_normalize(to_chw_list(frames), SIZE))
    # the same resize in the graph (ONNX Resize + AveragePool) as in torch: float rounding apart
    assert np.abs(got[0] - ref[0]).max() < 1e-4 and np.abs(got[1] - ref[1]).max() < 1e-4
    p16 = export_onnx(ckpt, tmp_path / "fp16.onnx", precision="fp16")
    x = torch.randn(2, 3, SIZE, SIZE)
    got = make_session(p16).run(None, {"images": x.numpy()})
    ref = _torch(ckpt, x)
    assert np.abs(got[0] - ref[0]).max() < 1e-2 and np.abs(got[1] - ref[1]).max() < 1e-2
    assert read_metadata(p16)["wmoe.precision"] == "fp16"


def test_bad_inputs(tmp_path, ckpt):
    with pytest.raises(CheckpointError, match="nope.safetensors"):
        export_onnx(tmp_path / "nope.safetensors", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx at all")
    with pytest.raises(ContractError, match="bad.onnx"):
        read_metadata(bad)
    with pytest.raises(ExportError, match="flavor"):
        export_onnx(ckpt, tmp_path / "p.onnx", flavor="bogus")
    with pytest.raises(ExportError, match="dynamo"):
        export_onnx(ckpt, tmp_path / "p.onnx", flavor="plugin", exporter="torchscript", allow_torchscript=True)
    with pytest.raises(ExportError, match="TorchScript exporter"):
        export_onnx(ckpt, tmp_path / "p.onnx", exporter="torchscript")
    r = subprocess.run([sys.executable, "-m", "wmoe", "export", "onnx", str(tmp_path / "nope.safetensors"),
                        "--out", str(tmp_path / "y.onnx")], capture_output=True, text=True)
    assert r.returncode == 2 and "nope.safetensors" in r.stderr and not (tmp_path / "y.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp.onnx")]


def _mem_gb() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


@pytest.mark.skipif(_mem_gb() < 8, reason="the full-size export needs ~8 GB of free memory")
def test_full_size_vit_l_14_336_parity(tmp_path):
    """Random-init ViT-L-14-336 (the default backbone's architecture) at 336 px, batch 1 and 4 (~2 min on 2 cores;
    measured max |diff| ~5e-7 on maps and scores)."""
    torch.manual_seed(0)
    model = WMoECLIP(ModelConfig(image_size=336)).eval()
    p = export_onnx(model, tmp_path / "vitl.onnx")
    sess = make_session(p)
    for batch in (1, 4):
        x = torch.randn(batch, 3, 336, 336)
        got = sess.run(None, {"images": x.numpy()})
        with torch.no_grad():
            o = model(x)
        for g, r in zip(got, (o.scores, o.maps, o.text_scores)):
            assert np.abs(g - r.numpy()).max() <= 1e-4
