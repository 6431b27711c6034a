"""Each equation against a direct float64 formula (Eq. 1-8, the losses and the final score)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wmoe.kernels import (haar_dwt_ref, moe_experts_dense_ref, moe_experts_ref, moe_router_ref,
                          wcma_cross_attention_ref, wcma_frequency_ref)
from wmoe.training.losses import dice_loss, focal_loss, kl_loss, reconstruction_loss

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pytorch_wavelets imports pkg_resources
    from pytorch_wavelets import DWTForward


def _pw_dwt(x_bhwc: torch.Tensor):
    dwt = DWTForward(J=1, wave="haar", mode="zero").double()
    ll, yh = dwt(x_bhwc.permute(0, 3, 1, 2))
    to = lambda t: t.permute(0, 2, 3, 1)  # noqa: E731
    return to(ll), [to(yh[0][:, :, i]) for i in range(3)]


@pytest.mark.parametrize("H,W", [(24, 24), (37, 37), (5, 8)])
def test_haar_matches_pytorch_wavelets(H, W):
    x = torch.randn(2, H, W, 6, dtype=torch.float64)
    ll, lh, hl, hh = haar_dwt_ref(x)
    pll, (p0, p1, p2) = _pw_dwt(x)
    # pytorch_wavelets keeps its filters in float32: 1e-7 relative error even in float64.
    for a, b in [(ll, pll), (lh, p0), (hl, p1), (hh, p2)]:
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # Haar identity: F_L + F_H = 2 * top-left pixel of each (zero-padded) 2x2 block.
    padded = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    torch.testing.assert_close(ll + lh + hl + hh, 2 * padded[:, 0::2, 0::2], rtol=1e-12, atol=1e-12)


def _direct_wcma(x, wg, bg, wp, bp, wl, bl):
    """Eq. 5-6 straight from the paper, with pytorch_wavelets' DWT, in float64 numpy."""
    ll, yh = _pw_dwt(x)
    f_l = ll.numpy()
    f_h = sum(t.numpy() for t in yh)
    s = f_l + f_h
    gap = s.mean(axis=(1, 2))
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    g = relu(gap) @ wg.numpy().T + bg.numpy()
    loc = relu(s @ wp.numpy().T + bp.numpy()) @ wl.numpy().T + bl.numpy()
    w_h = 1 / (1 + np.exp(-(loc + g[:, None, None, :])))
    return f_h * w_h + f_l


@pytest.mark.parametrize("grid", [24, 37])
def test_eq5_6_frequency_stage(grid):
    C, D = 16, 8
    x = torch.randn(2, grid, grid, C, dtype=torch.float64)
    p = [torch.randn(C, C), torch.randn(C), torch.randn(D, C), torch.randn(D), torch.randn(C, D), torch.randn(C)]
    p = [t.double() * 0.3 for t in p]
    out = wcma_frequency_ref(x, *p)
    np.testing.assert_allclose(out.numpy(), _direct_wcma(x, *p), rtol=1e-5, atol=1e-5)


def test_eq7_cross_attention():
    B, T, C = 2, 2, 12
    f_t = torch.randn(B, T, C, dtype=torch.float64)
    f_p = torch.randn(B, 5, 5, C, dtype=torch.float64)
    wq, wk, wv = (torch.randn(C, C, dtype=torch.float64) * 0.3 for _ in range(3))
    out = wcma_cross_attention_ref(f_t, f_p, wq, wk, wv)
    for b in range(B):
        K = f_p[b].reshape(-1, C).numpy()
        q = f_t[b].numpy() @ wq.numpy().T
        k = K @ wk.numpy().T
        v = K @ wv.numpy().T
        logits = q @ k.T / np.sqrt(C)
        a = np.exp(logits - logits.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        np.testing.assert_allclose(out[b].numpy(), a @ v, rtol=1e-10, atol=1e-10)


def test_router_top2_renormalized():
    B, C, N = 7, 10, 8
    x = torch.randn(B, C, dtype=torch.float64)
    wr, br = torch.randn(N, C, dtype=torch.float64), torch.randn(N, dtype=torch.float64)
    w, idx = moe_router_ref(x, wr, br, 2)
    logits = x.numpy() @ wr.numpy().T + br.numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for b in range(B):
        order = sorted(range(N), key=lambda n: (-p[b, n], n))[:2]
        assert idx[b].tolist() == order
        np.testing.assert_allclose(w[b].numpy(), p[b, order] / p[b, order].sum(), rtol=1e-5, atol=1e-7)  # router is fp32
    torch.testing.assert_close(w.sum(-1), torch.ones(B, dtype=w.dtype))


def test_router_ties_go_to_lower_index():
    x = torch.zeros(3, 4)
    w, idx = moe_router_ref(x, torch.zeros(8, 4), torch.zeros(8), 2)  # all experts tie
    assert idx.tolist() == [[0, 1]] * 3
    torch.testing.assert_close(w, torch.full((3, 2), 0.5))


def test_eq8_experts_loop_dense_and_direct_agree():
    B, C, D, N, k = 6, 10, 7, 8, 2
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, C, generator=g, dtype=torch.float64)
    wr, br = torch.randn(N, C, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    w1, b1 = torch.randn(N, C, D, generator=g, dtype=torch.float64), torch.randn(N, D, generator=g, dtype=torch.float64)
    w2, b2 = torch.randn(N, D, C, generator=g, dtype=torch.float64), torch.randn(N, C, generator=g, dtype=torch.float64)
    loop = moe_experts_ref(x, wr, br, w1, b1, w2, b2, k)
    dense = moe_experts_dense_ref(x, wr, br, w1, b1, w2, b2, k)
    weights, idx = moe_router_ref(x, wr, br, k)
    direct = torch.zeros(B, C, dtype=torch.float64)
    for b in range(B):
        for j in range(k):
            n = idx[b, j]
            h = x[b] @ w1[n] + b1[n]
            h = 0.5 * h * (1 + torch.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
            direct[b] += weights[b, j].double() * (h @ w2[n] + b2[n])
    # The combine runs in float32 (as on every backend), hence the tolerance.
    torch.testing.assert_close(loop, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense, direct, rtol=1e-5, atol=1e-5)


def test_eq2_kl_closed_form():
    mu = torch.randn(4, 9, dtype=torch.float64)
    logvar = torch.randn(4, 9, dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(-1).mean()
    torch.testing.assert_close(kl_loss(mu, logvar), expected)


def test_eq3_reconstruction():
    r = torch.randn(3, 2, 5, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64)
    expected = np.mean([[np.sum((r[b, i].numpy() - x[b].numpy()) ** 2) for i in range(2)] for b in range(3)])
    assert abs(reconstruction_loss(r, x).item() - expected) < 1e-10


def test_focal_and_dice_direct():
    p = torch.tensor([[0.9, 0.2], [0.6, 0.05]], dtype=torch.float64).reshape(1, 2, 2)
    m = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64).reshape(1, 2, 2)
    pts = [0.9, 0.8, 0.6, 0.95]
    expected_focal = np.mean([-(1 - t) ** 2 * np.log(t) for t in pts])
    assert abs(focal_loss(p, m).item() - expected_focal) < 1e-6
    inter = 0.9 + 0.6
    expected_dice = 1 - (2 * inter + 1) / (p.sum().item() + 2 + 1)
    assert abs(dice_loss(p, m).item() - expected_dice) < 1e-6


def test_anomaly_probability_is_two_state_softmax():
    from wmoe.model.wmoe_clip import anomaly_probability

    f = torch.randn(2, 3, 3, 8, dtype=torch.float64)
    t = torch.randn(2, 2, 8, dtype=torch.float64)
    got = anomaly_probability(f, t, 0.07)
    fn, tn = F.normalize(f, dim=-1), F.normalize(t, dim=-1)
    logits = torch.einsum("bhwc,btc->bhwt", fn, tn) / 0.07
    torch.testing.assert_close(got, torch.softmax(logits, -1)[..., 1])


def test_eot_truncated_text_equals_full_context(tiny_model):
    bb = tiny_model.backbone
    ids = bb.tokenizer(["a photo of a good object", "a photo of a damaged thing with scratches"])
    full = bb.encode_text_full(ids).double()
    eot = ids.argmax(-1)  # EOT has the largest token id
    L = int(eot.max()) + 1
    trunc = bb.encode_text_embeddings(bb.token_embedding(ids[:, :L]), eot).double()
    torch.testing.assert_close(trunc, full, rtol=0, atol=1e-5)
    assert L < 20  # ~4-8x fewer tokens than the 77-token context
