"""Checkpoints: the trainable parameters in safetensors, the config as JSON in its header (and a sidecar).

No pickle anywhere. The header records the backbone name and the SHA-256 of its weights file ("random-init"
for a seeded random backbone, with a fingerprint of its weights), so that loading against a different
backbone fails with a message that says which.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor

from .. import __version__
from ..atomic import atomic_path
from .config import ModelConfig
from ..errors import WMoEError

FORMAT = "wmoe-checkpoint"
FORMAT_VERSION = "1"


class CheckpointError(WMoEError, ValueError):
    """A checkpoint file cannot be used; the message names the file and the reason."""


@dataclass
class CheckpointInfo:
    config: ModelConfig
    backbone_sha256: str
    backbone_fingerprint: str
    package_version: str
    extra: Dict[str, Any] = field(default_factory=dict)
    save_id: Optional[str] = None  # the training save this file belongs to (wmoe.training.checkpoint_set)


def backbone_fingerprint(model: torch.nn.Module) -> str:
    """A cheap digest of the frozen backbone's weights (shapes + the first 4096 values of each tensor).

    Catches a random-init backbone rebuilt differently (other seed, other torch init) without hashing GBs.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()


def checkpoint_meta(model: torch.nn.Module, extra: Optional[Dict[str, Any]] = None,
                    save_id: Optional[str] = None) -> Dict[str, str]:
    """The safetensors header of a checkpoint (all values are strings). ``save_id`` ties a run's file set."""
    bb = model.backbone
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_json(),
        "backbone": bb.name,
        "backbone_sha256": bb.weights_sha256,
        "backbone_fingerprint": backbone_fingerprint(model),
        "package_version": __version__,
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    if save_id is not None:
        meta["save_id"] = save_id
    return meta


def write_weights(model: torch.nn.Module, path: Union[str, Path], meta: Dict[str, str]) -> None:
    """Write the trainable parameters with header ``meta`` to ``path`` (not atomic: the caller owns that)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.trainable_state_dict().items()}
    save_file(tensors, str(path), metadata=meta)


def write_sidecar(path: Union[str, Path], meta: Dict[str, str]) -> None:
    """Write the human-readable JSON twin of a checkpoint header (not atomic: the caller owns that)."""
    sidecar = {k: (json.loads(v) if k in ("config", "extra") else v) for k, v in meta.items()}
    Path(path).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_checkpoint(model: torch.nn.Module, path: Union[str, Path], extra: Optional[Dict[str, Any]] = None,
                    save_id: Optional[str] = None) -> Path:
    """Write ``model``'s trainable parameters and config to ``path`` (.safetensors) atomically, plus ``.json``.

    Training runs save through :mod:`wmoe.training.checkpoint_set` instead, which makes the weights, sidecar and
    optimizer state one all-or-nothing set; ``save_id`` keeps a rewritten run checkpoint a member of its set.
    """
    path = Path(path)
    meta = checkpoint_meta(model, extra, save_id)
    with atomic_path(path) as tmp:
        write_weights(model, tmp, meta)
    with atomic_path(path.with_suffix(".json")) as tmp:
        write_sidecar(tmp, meta)
    return path


def read_checkpoint(path: Union[str, Path]) -> "tuple[CheckpointInfo, Dict[str, Tensor]]":
    """Read and validate a checkpoint file: (info, tensors). Raises :class:`CheckpointError` with the file name."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" if not path.exists()
                              else f"checkpoint {path} is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror or e})") from None
    try:
        tensors: Dict[str, Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({type(e).__name__}: {e}); "
                              f"it may be truncated or corrupted") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a wmoe checkpoint (no '{FORMAT}' header)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {meta.get('format_version')!r}; "
                              f"this wmoe reads version {FORMAT_VERSION}")
    try:
        cfg = ModelConfig.from_dict(json.loads(meta["config"]))
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged config in the checkpoint header: {e}") from e
    info = CheckpointInfo(cfg, meta.get("backbone_sha256", ""), meta.get("backbone_fingerprint", ""),
                          meta.get("package_version", ""), extra, meta.get("save_id"))
    return info, tensors


def load_model(path: Union[str, Path], pretrained: Optional[str] = None, map_location: str = "cpu"):
    """Build the model a checkpoint describes, check its backbone, and load the trainable weights.

    Args:
        path: the .safetensors checkpoint.
        pretrained: the backbone weights file, required when the checkpoint was trained on one.
    """
    from .backbone import BackboneError
    from ..contract import sha256_file
    from .wmoe_clip import WMoECLIP

    path = Path(path)
    info, tensors = read_checkpoint(path)
    cfg = info.config
    if info.backbone_sha256 != "random-init":
        if not pretrained:
            raise CheckpointError(f"{path} was trained on backbone {cfg.backbone} with weights sha256 "
                                  f"{info.backbone_sha256[:16]}...; pass that weights file (--pretrained PATH)")
        got = sha256_file(Path(pretrained)) if Path(pretrained).is_file() else None
        if got is None:
            raise CheckpointError(f"backbone weights file {pretrained} does not exist")
        if got != info.backbone_sha256:
            raise CheckpointError(f"{path} was trained on backbone weights with sha256 {info.backbone_sha256[:16]}..., "
                                  f"but {pretrained} has sha256 {got[:16]}...: a different backbone")
    elif pretrained:
        raise CheckpointError(f"{path} was trained on a random-init {cfg.backbone} backbone; "
                              f"do not pass pretrained weights ({pretrained}) for it")
    try:
        model = WMoECLIP(cfg, pretrained=pretrained)
    except BackboneError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if info.backbone_sha256 == "random-init" and info.backbone_fingerprint != backbone_fingerprint(model):
        raise CheckpointError(f"{path}: the random-init {cfg.backbone} backbone rebuilt here differs from the one "
                              f"it was trained with (seed {cfg.backbone_seed}; another torch version?)")
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the model its config describes: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for k, p in expected.items():
            t = tensors[k]
            if t.shape != p.shape:
                raise CheckpointError(f"{path}: tensor {k} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise CheckpointError(f"{path}: tensor {k} holds NaN or infinite values: a broken model (a diverged "
                                      f"training run?) would score every image NaN; refusing to load it")
            p.copy_(t)
    model.to(map_location)
    model.eval()
    model.checkpoint_info = info
    return model
