"""Shared fixtures: tiny models are cheap to build (< 1 s); a session-scoped one serves read-only tests."""
from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run under the interpreter on machines without a GPU; must be set before any kernel import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from wmoe.config import ModelConfig  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    from wmoe.model import WMoECLIP

    torch.manual_seed(0)
    return WMoECLIP(ModelConfig.tiny()).eval()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """A tiny model exported once per session with a stored decision: (checkpoint, onnx path)."""
    from wmoe.checkpoint import save_checkpoint
    from wmoe.export.onnx_export import export_onnx
    from wmoe.model import WMoECLIP

    d = tmp_path_factory.mktemp("tiny_onnx")
    torch.manual_seed(1)
    ckpt = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), d / "m.safetensors")
    return ckpt, export_onnx(ckpt, d / "m.onnx", threshold=0.25, pixel_threshold=0.5)


@pytest.fixture()
def fresh_tiny():
    from wmoe.model import WMoECLIP

    def make(**overrides):
        return WMoECLIP(ModelConfig.tiny(**overrides))

    return make
