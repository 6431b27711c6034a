"""The fused WCMA frequency kernel (Triton; under TRITON_INTERPRET=1 on CPU) against the float64 reference."""
import os

import pytest
import torch
from wcma_cases import grid_cases

from wmoe.kernels import dispatch
from wmoe.kernels.spec import TARGETS
from wmoe.kernels.wcma_frequency_triton import wcma_frequency_triton
from wmoe.kernels.wcma_ref import wcma_frequency_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# relative error budgets (max |err| / max |ref|): fp32 accumulates exactly (IEEE dot, no TF32); fp16 rounds the
# inputs, the weights and the on-chip intermediate to 11-bit mantissas (~5e-4 each)
BUDGET = {torch.float32: 1e-5, torch.float16: 5e-3}


def _weights(C, D, dtype):
    g = lambda *s: (torch.randn(*s, device=DEVICE) * (1.0 / s[-1] ** 0.5)).to(dtype)  # noqa: E731
    return [g(C, C), g(C) * 0.1, g(D, C), g(D) * 0.1, g(C, D), g(C) * 0.1]


def _check(B, H, W, C, D, dtype, target=None, fp32="ieee"):
    x = torch.randn(B, H, W, C, device=DEVICE).to(dtype)
    ws = _weights(C, D, dtype)
    h, w = (H + 1) // 2, (W + 1) // 2
    out = torch.full((B, h, w, C), float("nan"), device=DEVICE, dtype=dtype)  # poison: every element must be written
    got = wcma_frequency_triton(x, *ws, out=out, target=target, fp32=fp32)
    assert got.data_ptr() == out.data_ptr()
    ref = wcma_frequency_ref(x.double(), *[t.double() for t in ws])
    assert torch.isfinite(got).all()
    rel = ((got.double() - ref).abs().max() / ref.abs().max()).item()
    budget = BUDGET[dtype] if fp32 == "ieee" else TF32_BUDGET[fp32]
    assert rel <= budget, f"{dtype} {fp32} B={B} {H}x{W} C={C}: rel err {rel:.2e}"


test_grids_batches_dtypes, test_full_width_c768_default_hidden = grid_cases(_check)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("target", list(TARGETS))
def test_every_target_configuration(target, dtype):
    # the tiles shipped for each GPU, run under the interpreter: odd grid, batch 17 (> one BLOCK_B of the GEMV),
    # positions spanning several BLOCK_M tiles with a ragged last one
    _check(17, 11, 9, 48, 24, dtype, target=target)


def test_odd_non_square_and_tiny_grids():
    for H, W in [(1, 1), (3, 8), (9, 5)]:
        _check(2, H, W, 48, 17, torch.float32)


def test_dispatch_rules():
    x = torch.randn(1, 6, 6, 32, device=DEVICE)
    ws = _weights(32, 8, torch.float32)
    assert not dispatch.use_triton(x, *ws, kernels=dispatch.Kernels.REFERENCE)
    assert dispatch.use_triton(x, *ws, kernels="triton")
    assert dispatch.use_triton(x, *ws, kernels=dispatch.KernelChoice()) == x.is_cuda  # AUTO
    assert dispatch.use_triton(x, *ws) == x.is_cuda
    # export's tracing mode never launches directly: the custom op decides
    assert not dispatch.use_triton(x, *ws, kernels=dispatch.KernelChoice("triton", as_ops=True))
    # gradients needed: the kernel has no backward, the reference runs
    xg = x.clone().requires_grad_(True)
    assert not dispatch.use_triton(xg, *ws, kernels="triton")
    y = dispatch.wcma_frequency(xg, *ws, kernels="triton")
    y.sum().backward()
    assert xg.grad is not None
    # bf16 is not verified: it goes to the reference
    assert not dispatch.use_triton(x.bfloat16(), *ws, kernels="triton")
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'"):
        dispatch.use_triton(x, *ws, kernels="cuda")
    with pytest.raises(ValueError, match="unknown fp32 precision 'tf16'"):
        dispatch.KernelChoice(fp32="tf16")


def test_no_process_wide_kernel_state():
    # the choice is a value: nothing in the module to set, no environment variable read
    import wmoe.kernels.dispatch as d
    assert not hasattr(d, "set_backend") and not hasattr(d, "_backend") and not hasattr(d, "using_backend")
    assert "WMOE_KERNELS" not in open(d.__file__).read()


def test_model_output_identical_through_the_kernel(tiny_model):
    images = torch.randn(2, 3, tiny_model.image_size, tiny_model.image_size, device=DEVICE)
    m = tiny_model.to(DEVICE)
    stages = m.kernel_stages()
    assert len(stages) == len(m.wcma) + 1  # every WCMA and the SA-MoE
    with torch.no_grad():
        with m.using_kernels("reference"):
            ref = m(images)
        with m.using_kernels(dispatch.Kernels.TRITON):
            assert all(s.kernels.kernels is dispatch.Kernels.TRITON for s in stages)
            got = m(images)
            x_a = torch.randn(5, m.samoe.router.in_features, device=DEVICE)
            rw, re = m.samoe.route(x_a)  # the router goes through the dispatch too
    assert all(s.kernels == dispatch.KernelChoice() for s in stages)  # restored
    with torch.no_grad():
        rw_ref, re_ref = m.samoe.route(x_a)
    assert re.dtype == re_ref.dtype == torch.int64 and torch.equal(re, re_ref)
    assert torch.allclose(rw, rw_ref, atol=1e-6)
    assert torch.allclose(got.maps, ref.maps, atol=1e-5) and torch.allclose(got.scores, ref.scores, atol=1e-5)


# TF32 (Fp32.TF32): one TF32 MMA per product; the operands keep 10 of fp32's 23 mantissa bits. Budget: the fp16
# one (same mantissa width), 5e-3. TF32X3 splits each operand into a TF32 head and tail: fp32 accuracy, 1e-5.
TF32_BUDGET = {"tf32": 5e-3, "tf32x3": 1e-5}


def _tf32(t):
    """Round-toward-zero to TF32 (what the MMA does with fp32 registers: the low 13 mantissa bits are ignored)."""
    return (t.float().contiguous().view(torch.int32) & ~0x1FFF).view(torch.float32).double()


def test_tf32_error_budget_holds_for_tf32_arithmetic():
    # The interpreter computes tl.dot in fp32 whatever the input precision, so the budget is checked on an
    # emulation of the kernel's TF32 arithmetic at the model's full width (C 768, D 192): both GEMM operands of the
    # pointwise and of the local GEMM truncated to TF32, everything else as the kernel (fp32 accumulation is
    # modelled in float64). The compiled kernel's use of TF32 MMAs is pinned by test_kernels_aot.
    import torch.nn.functional as F

    from wmoe.kernels.wcma_ref import haar_dwt_ref
    torch.manual_seed(0)
    B, H, W, C, D = 2, 24, 24, 768, 192
    x = torch.randn(B, H, W, C, dtype=torch.float64)
    ws = [w.double() for w in _weights(C, D, torch.float32)]
    ref = wcma_frequency_ref(x, *ws)
    ll, lh, hl, hh = haar_dwt_ref(x)
    s, f_h = ll + lh + hl + hh, lh + hl + hh
    g = F.linear(F.relu(s.mean(dim=(1, 2))), ws[0], ws[1])
    t = F.relu(2 * F.linear(_tf32(x[:, 0::2, 0::2]), _tf32(ws[2])) + ws[3])
    loc = F.linear(_tf32(t), _tf32(ws[4]), ws[5]) + g[:, None, None, :]
    emulated = f_h * torch.sigmoid(loc) + ll
    rel = ((emulated - ref).abs().max() / ref.abs().max()).item()
    assert 1e-6 < rel <= TF32_BUDGET["tf32"], rel  # TF32 is visibly inexact, and within its budget (4.8e-4 seen)


@pytest.mark.parametrize("fp32", ["tf32", "tf32x3"])
def test_tf32_option_runs_through_the_kernel(fp32):
    # odd sizes, every tile ragged; the choice travels from the dispatch value to the kernel's constexpr
    _check(3, 9, 7, 40, 24, torch.float32, fp32=fp32)
    x = torch.randn(2, 6, 6, 32, device=DEVICE)
    ws = _weights(32, 8, torch.float32)
    y = dispatch.wcma_frequency(x, *ws, kernels=dispatch.KernelChoice("triton", fp32=fp32))
    ref = wcma_frequency_ref(x.double(), *[w.double() for w in ws])
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() <= TF32_BUDGET[fp32]
