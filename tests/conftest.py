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


@pytest.fixture()
def fresh_tiny():
    from wmoe.model import WMoECLIP

    def make(**overrides):
        return WMoECLIP(ModelConfig.tiny(**overrides))

    return make
