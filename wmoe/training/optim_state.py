"""Optimizer and RNG state for resuming, stored in safetensors (tensors) + JSON metadata: no pickle."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..model.checkpoint import CheckpointError


def write_optimizer(opt: torch.optim.Optimizer, path: Union[str, Path], progress: Dict[str, Any],
                    save_id: Optional[str] = None) -> None:
    """Flatten ``opt.state_dict()`` into named tensors; groups, progress and the torch RNG go to the metadata.

    Not atomic: :mod:`wmoe.training.checkpoint_set` writes it as part of an all-or-nothing set."""
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars),
            "progress": json.dumps(progress), "format": "wmoe-optimizer"}
    if save_id is not None:
        meta["save_id"] = save_id
    save_file(tensors, str(path), metadata=meta)


def load_optimizer(opt: torch.optim.Optimizer, path: Union[str, Path]) -> Tuple[Dict[str, Any], torch.Tensor]:
    """Restore ``opt`` from :func:`write_optimizer`'s file; return (progress, torch RNG state)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"optimizer state {path} does not exist (needed to resume)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        groups = json.loads(meta["param_groups"])
        scalars = json.loads(meta["scalars"])
        progress = json.loads(meta["progress"])
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"optimizer state {path} is unreadable or damaged ({type(e).__name__}: {e})") from e
    state: Dict[int, Dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("state."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = t
    for name, v in scalars.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state {path} does not fit this model/optimizer: {e}") from e
    return progress, tensors["rng.torch"]
