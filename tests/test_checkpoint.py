"""Checkpoints: bit-exact round trip, backbone identity checks, damaged files."""
from __future__ import annotations

import json

import pytest
import torch

from wmoe.model.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from wmoe.model.config import ModelConfig
from wmoe.model.wmoe_clip import WMoECLIP


def _perturb(model):
    with torch.no_grad():
        for p in model.trainable_state_dict().values():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def test_round_trip_bit_exact(tmp_path):
    model = _perturb(WMoECLIP(ModelConfig.tiny())).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", extra={"threshold": 1.25})
    info, tensors = read_checkpoint(path)
    assert info.config == model.cfg and info.backbone_sha256 == "random-init" and info.extra["threshold"] == 1.25
    assert set(tensors) == set(model.trainable_state_dict())
    assert not any(k.startswith("backbone.") for k in tensors)  # trainable parameters only
    loaded = load_model(path)
    for k, v in model.trainable_state_dict().items():
        assert torch.equal(v, loaded.trainable_state_dict()[k]), k
    x = torch.randn(2, 3, 336, 336)
    with torch.no_grad():
        assert torch.equal(model(x).scores, loaded(x).scores)
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["config"]["backbone"] == "wmoe-tiny" and sidecar["backbone_sha256"] == "random-init"


def _weights_file(tmp_path, name, seed):
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    import open_clip

    from wmoe.model.backbone import register_configs

    register_configs()
    clip = open_clip.create_model("wmoe-tiny")
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return path


def test_pretrained_backbone_is_loaded_and_checked(tmp_path):
    wa = _weights_file(tmp_path, "a.safetensors", 1)
    wb = _weights_file(tmp_path, "b.safetensors", 2)
    model = WMoECLIP(ModelConfig.tiny(), pretrained=str(wa))
    from safetensors.torch import load_file

    ref = load_file(str(wa))
    assert torch.equal(model.backbone.clip.visual.conv1.weight, ref["visual.conv1.weight"])
    ckpt = save_checkpoint(model, tmp_path / "m.safetensors")
    assert read_checkpoint(ckpt)[0].backbone_sha256 != "random-init"
    load_model(ckpt, pretrained=str(wa))  # the right weights load
    with pytest.raises(CheckpointError, match="different backbone"):
        load_model(ckpt, pretrained=str(wb))
    with pytest.raises(CheckpointError, match="pass that weights file"):
        load_model(ckpt)


def test_wrong_random_backbone_is_detected(tmp_path):
    model = WMoECLIP(ModelConfig.tiny())
    ckpt = save_checkpoint(model, tmp_path / "m.safetensors")
    # Rewrite the header to claim another seed: the rebuilt backbone no longer matches the fingerprint.
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    cfg["backbone_seed"] = 7
    meta["config"] = json.dumps(cfg)
    save_file(tensors, str(ckpt), metadata=meta)
    with pytest.raises(CheckpointError, match="random-init wmoe-tiny backbone rebuilt here differs"):
        load_model(ckpt)


def test_damaged_files_give_clear_errors(tmp_path):
    model = WMoECLIP(ModelConfig.tiny())
    good = save_checkpoint(model, tmp_path / "good.safetensors")
    data = good.read_bytes()
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"this is not a checkpoint at all")
    for name, message in (("truncated", "truncated.safetensors"), ("garbage", "garbage.safetensors"),
                          ("missing", "does not exist"), ("other", "not a wmoe checkpoint")):
        with pytest.raises(CheckpointError, match=message):
            load_model(tmp_path / f"{name}.safetensors")


def test_failed_save_keeps_previous_file(tmp_path):
    model = WMoECLIP(ModelConfig.tiny())
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    class Boom(WMoECLIP):
        def trainable_state_dict(self):
            raise RuntimeError("disk full")

    bad = Boom.__new__(Boom)
    bad.__dict__ = model.__dict__
    with pytest.raises(RuntimeError):
        save_checkpoint(bad, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_backbone_weights_file(tmp_path):
    from wmoe.model.backbone import BackboneError

    with pytest.raises(BackboneError, match="does not exist"):
        WMoECLIP(ModelConfig.tiny(), pretrained=str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(BackboneError, match="bad.bin"):
        WMoECLIP(ModelConfig.tiny(), pretrained=str(bad))
