"""The fused WCMA frequency kernel (Triton; under TRITON_INTERPRET=1 on CPU) against the float64 reference."""
import os

import pytest
import torch

from wmoe.kernels import dispatch
from wmoe.kernels.wcma_ops import wcma_frequency_triton
from wmoe.kernels.wcma_ref import wcma_frequency_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# relative error budgets (max |err| / max |ref|): fp32 accumulates exactly (IEEE dot, no TF32); fp16 rounds the
# inputs, the weights and the on-chip intermediate to 11-bit mantissas (~5e-4 each)
BUDGET = {torch.float32: 1e-5, torch.float16: 5e-3}


def _weights(C, D, dtype):
    g = lambda *s: (torch.randn(*s, device=DEVICE) * (1.0 / s[-1] ** 0.5)).to(dtype)  # noqa: E731
    return [g(C, C), g(C) * 0.1, g(D, C), g(D) * 0.1, g(C, D), g(C) * 0.1]


def _check(B, H, W, C, D, dtype):
    x = torch.randn(B, H, W, C, device=DEVICE).to(dtype)
    ws = _weights(C, D, dtype)
    h, w = (H + 1) // 2, (W + 1) // 2
    out = torch.full((B, h, w, C), float("nan"), device=DEVICE, dtype=dtype)  # poison: every element must be written
    got = wcma_frequency_triton(x, *ws, out=out)
    assert got.data_ptr() == out.data_ptr()
    ref = wcma_frequency_ref(x.double(), *[t.double() for t in ws])
    assert torch.isfinite(got).all()
    rel = ((got.double() - ref).abs().max() / ref.abs().max()).item()
    assert rel <= BUDGET[dtype], f"{dtype} B={B} {H}x{W} C={C}: rel err {rel:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("grid", [24, 37])
@pytest.mark.parametrize("batch", [1, 5])
def test_grids_batches_dtypes(grid, batch, dtype):
    # C = 64 keeps the interpreter fast; the full width is covered below
    _check(batch, grid, grid, 64, 20, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_full_width_c768_default_hidden(dtype):
    _check(1, 24, 24, 768, 192, dtype)


def test_odd_non_square_and_tiny_grids():
    for H, W in [(1, 1), (3, 8), (9, 5)]:
        _check(2, H, W, 48, 17, torch.float32)


def test_dispatch_rules():
    x = torch.randn(1, 6, 6, 32, device=DEVICE)
    ws = _weights(32, 8, torch.float32)
    assert not dispatch.use_triton(x, *ws, backend="reference")
    assert dispatch.use_triton(x, *ws, backend="triton")
    assert dispatch.use_triton(x, *ws, backend="auto") == x.is_cuda
    # gradients needed: the kernel has no backward, the reference runs
    xg = x.clone().requires_grad_(True)
    assert not dispatch.use_triton(xg, *ws, backend="triton")
    y = dispatch.wcma_frequency(xg, *ws, backend="triton")
    y.sum().backward()
    assert xg.grad is not None
    # bf16 is not verified: it goes to the reference
    assert not dispatch.use_triton(x.bfloat16(), *ws, backend="triton")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        dispatch.use_triton(x, *ws, backend="cuda")


def test_model_output_identical_through_the_kernel(tiny_model):
    images = torch.randn(2, 3, tiny_model.image_size, tiny_model.image_size, device=DEVICE)
    m = tiny_model.to(DEVICE)
    with torch.no_grad():
        dispatch.set_backend("reference")
        ref = m(images)
        dispatch.set_backend("triton")
        try:
            got = m(images)
        finally:
            dispatch.set_backend("auto")
    assert torch.allclose(got.maps, ref.maps, atol=1e-5) and torch.allclose(got.scores, ref.scores, atol=1e-5)
