"""SA-MoE Triton path (router, grouped expert GEMMs, deterministic combine) against the float64 reference."""
import pytest
import torch

from wmoe.kernels import dispatch
from wmoe.kernels.moe_experts_triton import moe_experts_triton, moe_router_triton
from wmoe.kernels.spec import TARGETS
from wmoe.kernels.moe_ref import moe_experts_dense_ref, moe_experts_ref, moe_router_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BUDGET = {torch.float32: 1e-5, torch.float16: 5e-3}


def _params(C, N, Dh, dtype):
    r = lambda *s, scale=1.0: (torch.randn(*s, device=DEVICE) * scale)  # noqa: E731
    ps = [r(N, C, scale=0.2), r(N, scale=0.1), r(N, C, Dh, scale=C ** -0.5), r(N, Dh, scale=0.1),
          r(N, Dh, C, scale=Dh ** -0.5), r(N, C, scale=0.1)]
    return [ps[0], ps[1]] + [p.to(dtype) for p in ps[2:]]


def _check(B, C, N, Dh, k, dtype, params=None, x=None, target=None):
    x = torch.randn(B, C, device=DEVICE).to(dtype) if x is None else x
    params = params or _params(C, N, Dh, dtype)
    out = torch.full((B, C), float("nan"), device=DEVICE, dtype=dtype)  # poison
    got = moe_experts_triton(x, *params, top_k=k, out=out, target=target)
    ref = moe_experts_ref(x.double(), *[p.double() for p in params], k)
    assert torch.isfinite(got).all()
    rel = ((got.double() - ref).abs().max() / ref.abs().max()).item()
    assert rel <= BUDGET[dtype], f"{dtype} B={B}: rel err {rel:.2e}"
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("batch", [1, 5, 37])
def test_parity(batch, dtype):
    _check(batch, 64, 8, 48, 2, dtype)


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_target_configuration(target):
    _check(37, 48, 8, 40, 2, torch.float16, target=target)


def test_full_width():
    _check(4, 768, 8, 768, 2, torch.float16)


def test_router_ties_go_to_lower_index():
    x = torch.randn(6, 32, device=DEVICE)
    wr = torch.zeros(8, 32, device=DEVICE)
    br = torch.tensor([0.0, 1.0, 1.0, 0.5, 1.0, 0.0, 0.0, 0.0], device=DEVICE)  # three-way tie at 1.0
    w, e = moe_router_triton(x, wr, br, 2)
    rw, re = moe_router_ref(x, wr, br, 2)
    assert torch.equal(e.long(), re) and e[0].tolist() == [1, 2]
    assert torch.allclose(w, rw) and torch.allclose(w.sum(1), torch.ones(6, device=DEVICE))


def test_all_tokens_one_expert_and_idle_experts():
    C, N, Dh = 32, 8, 24
    params = _params(C, N, Dh, torch.float32)
    params[1] = torch.tensor([9.0, 8.0] + [-9.0] * 6, device=DEVICE)  # experts 0, 1 take every token
    params[0] = params[0] * 0.0
    _check(9, C, N, Dh, 2, torch.float32, params=params)
    # B = 37 rows for one expert: the grid's worst case (B rows per expert, three 16-row blocks), every row written
    _check(37, C, N, Dh, 2, torch.float32, params=params)
    _, e = moe_router_triton(torch.randn(9, C, device=DEVICE), params[0], params[1], 2)
    assert set(e.flatten().tolist()) == {0, 1}


def test_deterministic_and_top1():
    params = _params(64, 8, 32, torch.float32)
    x = torch.randn(11, 64, device=DEVICE)
    a = _check(11, 64, 8, 32, 2, torch.float32, params=params, x=x)
    b = moe_experts_triton(x, *params, top_k=2)
    assert torch.equal(a, b)
    _check(7, 64, 8, 32, 1, torch.float32)


def test_dense_reference_agrees():
    params = _params(64, 8, 32, torch.float32)
    x = torch.randn(5, 64, device=DEVICE)
    assert torch.allclose(moe_experts_dense_ref(x, *params, 2), moe_experts_ref(x, *params, 2), atol=1e-5)


def test_bad_top_k():
    with pytest.raises(ValueError, match="top_k"):
        moe_router_triton(torch.randn(2, 8, device=DEVICE), torch.randn(4, 8, device=DEVICE),
                          torch.zeros(4, device=DEVICE), 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA-graph capture needs a GPU")
def test_moe_path_captures_in_a_cuda_graph():
    params = _params(768, 8, 768, torch.float16)
    x = torch.randn(32, 768, device="cuda", dtype=torch.float16)
    out = torch.empty_like(x)
    moe_experts_triton(x, *params, top_k=2, out=out)  # warm-up compiles outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        moe_experts_triton(x, *params, top_k=2, out=out)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    ref = moe_experts_ref(x.double(), *[p.double() for p in params], 2)
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() <= BUDGET[torch.float16]
