"""The fused WCMA stage, Eq. 5-7 in one pass (Triton; under TRITON_INTERPRET=1 on CPU), against float64 Eq. 7 as
written applied to the float64 ``F_p`` of Eq. 5-6."""
import pytest
import torch
from wcma_cases import grid_cases

from wmoe.kernels import dispatch
from wmoe.kernels.spec import TARGETS, device_target
from wmoe.kernels.wcma_attention_triton import attn_partials_shape, wcma_attention_triton
from wmoe.kernels.wcma_ref import wcma_cross_attention_folded_ref, wcma_cross_attention_ref, wcma_frequency_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# max |err| / max |ref|; fp16 rounds inputs, weights and the on-chip intermediate t (F_p, logits, softmax: fp32)
BUDGET = {torch.float32: 1e-5, torch.float16: 5e-3}


def _inputs(B, H, W, C, D, dtype, T=2):
    g = lambda *s: (torch.randn(*s, device=DEVICE) / s[-1] ** 0.5).to(dtype)  # noqa: E731
    freq = [g(C, C), g(C) * 0.1, g(D, C), g(D) * 0.1, g(C, D), g(C) * 0.1]
    # W_q, W_k scaled so the attention is peaked (a near-uniform softmax would hide errors in the logits)
    attn = [g(C, C) * 4, g(C, C) * 4, g(C, C)]
    x = torch.randn(B, H, W, C, device=DEVICE).to(dtype)
    f_t = torch.randn(B, T, C, device=DEVICE).to(dtype)
    return f_t, x, freq, attn


def _reference(f_t, x, freq, attn):
    f_p = wcma_frequency_ref(x.double(), *[t.double() for t in freq])
    return f_p, wcma_cross_attention_ref(f_t.double(), f_p, *[t.double() for t in attn])


def _check(B, H, W, C, D, dtype, T=2, target=None):
    f_t, x, freq, attn = _inputs(B, H, W, C, D, dtype, T)
    NT, _ = attn_partials_shape(B, H, W, C, T, dtype, target or device_target(x.device))
    nan = float("nan")  # poison: every partial the combine reads must have been written
    parts = (torch.full((B, NT, T, C), nan, device=DEVICE), torch.full((B, NT, T), nan, device=DEVICE),
             torch.full((B, NT, T), nan, device=DEVICE))
    got = wcma_attention_triton(f_t, x, *freq, *attn, partials=parts, target=target)
    f_p, ref = _reference(f_t, x, freq, attn)
    assert got.shape == (B, T, C) and got.dtype == dtype and torch.isfinite(got).all()
    rel = ((got.double() - ref).abs().max() / ref.abs().max()).item()
    assert rel <= BUDGET[dtype], f"{dtype} B={B} {H}x{W} C={C} D={D}: rel err {rel:.2e}"
    return f_t, f_p, attn


test_grids_batches_dtypes, test_full_width_c768_default_hidden = grid_cases(_check)


def test_odd_sizes_and_other_query_counts():
    for (H, W), T in [((1, 1), 2), ((3, 8), 1), ((9, 5), 3), ((13, 7), 2)]:
        _check(2, H, W, 48, 17, torch.float32, T=T)


def test_attention_is_peaked_so_the_test_can_fail():
    # the inputs above must give a far from uniform softmax, else a wrong logit would go unnoticed
    f_t, x, freq, attn = _inputs(2, 24, 24, 64, 20, torch.float32)
    f_p, ref = _reference(f_t, x, freq, attn)
    kv = f_p.reshape(2, -1, 64)
    q = torch.nn.functional.linear(torch.nn.functional.linear(f_t.double(), attn[0].double()), attn[1].double().t())
    p = torch.softmax(q @ kv.transpose(1, 2) / 8.0, dim=-1)
    assert p.max() > 20 / kv.shape[1]
    uniform = torch.nn.functional.linear(kv.mean(1, keepdim=True).expand(-1, 2, -1), attn[2].double())
    assert ((uniform - ref).abs().max() / ref.abs().max()) > 10 * BUDGET[torch.float32]


def test_folded_reference_equals_eq7_as_written():
    f_t, x, freq, attn = _inputs(3, 9, 11, 32, 8, torch.float64)
    f_p, ref = _reference(f_t, x, freq, attn)
    folded = wcma_cross_attention_folded_ref(f_t, f_p, *attn)
    assert torch.allclose(folded, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("target", list(TARGETS))
def test_every_target_configuration(target, dtype):
    # the tiles shipped for each GPU, run under the interpreter: odd grid, more positions than one tile
    _check(2, 19, 17, 48, 24, dtype, target=target)


def test_deterministic():
    f_t, x, freq, attn = _inputs(2, 13, 13, 48, 16, torch.float32)
    a = wcma_attention_triton(f_t, x, *freq, *attn)
    b = wcma_attention_triton(f_t, x, *freq, *attn)
    assert torch.equal(a, b)


def test_dispatch_uses_the_fused_pass_only_where_it_may():
    f_t, x, freq, attn = _inputs(2, 6, 6, 32, 8, torch.float32)
    _, ref = _reference(f_t, x, freq, attn)
    for backend in ("triton", "reference", "auto"):
        y = dispatch.wcma_attention(f_t, x, *freq, *attn, kernels=backend)
        assert ((y.double() - ref).abs().max() / ref.abs().max()) < 1e-5, backend
    # a gradient is needed (training): the reference runs and backpropagates
    ft = f_t.clone().requires_grad_(True)
    dispatch.wcma_attention(ft, x, *freq, *attn, kernels="triton").sum().backward()
    assert ft.grad is not None and torch.isfinite(ft.grad).all()


def test_shape_errors():
    f_t, x, freq, attn = _inputs(2, 6, 6, 32, 8, torch.float32)
    with pytest.raises(ValueError, match="expects f_t"):
        wcma_attention_triton(f_t[:1], x, *freq, *attn)
    with pytest.raises(ValueError, match="partials"):
        wcma_attention_triton(f_t, x, *freq, *attn, partials=(torch.empty(1), torch.empty(1), torch.empty(1)))
