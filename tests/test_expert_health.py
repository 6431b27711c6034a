"""SA-MoE expert health: ESB/EIR against direct formulas, where their gradients go, utilization statistics, the
options in the checkpoint config, the per-epoch training log, the evaluation report and the demo plot."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wmoe.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from wmoe.model.config import ModelConfig
from wmoe.model.expert_health import (ExpertUsage, MoERouting, TrainingHealth, balance_loss, moe_routing,
                                      repulsion_loss, usage_markdown)
from wmoe.training.losses import total_loss


def _random_routing(B=7, N=5, k=2, C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(B, N, generator=g, dtype=torch.float64), -1)
    experts = torch.stack([torch.randperm(N, generator=g)[:k] for _ in range(B)])
    w = torch.rand(B, k, generator=g, dtype=torch.float64)
    outputs = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    return MoERouting(probs=probs, weights=w / w.sum(-1, keepdim=True), experts=experts, outputs=outputs)


def test_balance_loss_matches_the_direct_formula():
    r = _random_routing()
    B, N = r.probs.shape
    k = r.experts.shape[1]
    direct = 0.0
    for n in range(N):
        f_n = sum(int(e == n) for row in r.experts.tolist() for e in row) / (B * k)
        p_n = sum(r.probs[b, n].item() for b in range(B)) / B
        direct += f_n * p_n
    assert balance_loss(r.probs, r.experts).item() == pytest.approx(N * direct, rel=1e-6)
    # uniform routing -> 1; everyone on the same k experts with all the probability there -> N / k
    uni = torch.full((8, 4), 0.25)
    assert balance_loss(uni, torch.tensor([[0, 1], [2, 3]] * 4)).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[0.5, 0.5, 0.0, 0.0]] * 8)
    assert balance_loss(collapsed, torch.tensor([[0, 1]] * 8)).item() == pytest.approx(4 / 2)


def test_repulsion_loss_matches_the_direct_formula():
    r = _random_routing(seed=1)
    y = r.outputs.numpy()
    B, N, _ = y.shape
    total = 0.0
    for b in range(B):
        for n in range(N):
            for m in range(N):
                if n != m:
                    total += y[b, n] @ y[b, m] / (np.linalg.norm(y[b, n]) * np.linalg.norm(y[b, m]))
    assert repulsion_loss(r.outputs).item() == pytest.approx(total / (B * N * (N - 1)), rel=1e-6)
    same = torch.randn(3, 1, 4).expand(3, 5, 4)
    assert repulsion_loss(same).item() == pytest.approx(1.0, rel=1e-6)  # identical experts
    assert repulsion_loss(torch.eye(4).expand(2, 4, 4)).item() == pytest.approx(0.0, abs=1e-7)  # orthogonal


def _grads_after(model, term):
    model.zero_grad(set_to_none=True)
    term.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_gradients_reach_only_the_router_and_the_experts(fresh_tiny):
    torch.manual_seed(0)
    model = fresh_tiny(image_size=112, moe_balance=1.0, moe_repulsion=1.0).train()
    health = TrainingHealth(model.samoe, 1.0, 1.0)
    x = torch.randn(4, 3, 112, 112)
    regs = health.regularizers(model(x).moe_context)
    assert _grads_after(model, regs["esb"][1]) == {"samoe.router.weight", "samoe.router.bias"}
    regs = health.regularizers(model(x).moe_context)
    assert _grads_after(model, regs["eir"][1]) == {"samoe.w1", "samoe.b1", "samoe.w2", "samoe.b2"}
    # the paper's loss still reaches the adapters, CTDS and WCMA as before
    out = model(x)
    paper = _grads_after(model, total_loss(out, torch.tensor([0, 1, 0, 1]), torch.zeros(4, 1, 112, 112))["loss"])
    assert any(n.startswith("samoe.adapters") for n in paper) and any(n.startswith("wcma") for n in paper)


def test_off_by_default_and_weight_zero_leaves_eq11_unchanged(fresh_tiny):
    assert ModelConfig().moe_balance == 0.0 and ModelConfig().moe_repulsion == 0.0
    torch.manual_seed(0)
    model = fresh_tiny(image_size=112).eval()
    out = model(torch.randn(3, 3, 112, 112))
    labels, masks = torch.tensor([0, 1, 1]), torch.zeros(3, 1, 112, 112)
    plain = total_loss(out, labels, masks)
    health = TrainingHealth(model.samoe)  # weights 0: terms logged, not added, no graph through them
    regs = health.regularizers(out.moe_context)
    assert not regs["esb"][1].requires_grad and not regs["eir"][1].requires_grad
    logged = total_loss(out, labels, masks, regs)
    assert torch.equal(logged["loss"], plain["loss"]) and {"esb", "eir"} <= set(logged)
    on = total_loss(out, labels, masks, {"esb": (0.5, regs["esb"][1]), "eir": (2.0, regs["eir"][1])})
    expect = plain["loss"] + 0.5 * regs["esb"][1] + 2.0 * regs["eir"][1]
    assert on["loss"].item() == pytest.approx(expect.item(), rel=1e-6)


def test_routing_statistics_are_the_forward_pass_routing(fresh_tiny):
    torch.manual_seed(1)
    model = fresh_tiny(image_size=112).eval()
    with torch.no_grad():
        for p in model.samoe.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        out = model(torch.randn(5, 3, 112, 112))
        r = moe_routing(model.samoe, out.moe_context)
        # Eq. 8 rebuilt from the statistics' routing equals the model's x_p
        rebuilt = (r.weights[..., None] * r.outputs.gather(1, r.experts[..., None].expand(-1, -1, r.outputs.shape[-1]))).sum(1)
        torch.testing.assert_close(rebuilt, model.samoe.mix(out.moe_context).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r.probs.sum(-1), torch.ones(5))


def test_usage_summary_matches_direct_computation():
    r1, r2 = _random_routing(seed=2), _random_routing(B=4, seed=3)
    u = ExpertUsage(5, 2)
    u.update(r1)
    u.update(r2)
    experts = torch.cat([r1.experts, r2.experts]).numpy()
    weights = torch.cat([r1.weights, r2.weights]).numpy()
    probs = torch.cat([r1.probs, r2.probs]).numpy()
    outs = torch.cat([r1.outputs, r2.outputs]).numpy()
    B = experts.shape[0]
    f = np.array([(experts == n).sum() for n in range(5)]) / experts.size
    gate = np.array([weights[experts == n].sum() for n in range(5)]) / B
    h = -sum(v * math.log(v) for v in f if v > 0)
    s = u.summary(matrix=True)
    assert s["n_images"] == B
    np.testing.assert_allclose(s["selection_frequency"], f, atol=1e-6)
    np.testing.assert_allclose(s["mean_gate_weight"], gate, atol=1e-6)
    np.testing.assert_allclose(s["mean_router_prob"], probs.mean(0), atol=1e-6)
    assert sum(s["mean_gate_weight"]) == pytest.approx(1.0, abs=1e-5)
    assert s["usage_entropy"] == pytest.approx(h, abs=1e-6)
    assert s["usage_evenness"] == pytest.approx(h / math.log(5), abs=1e-6)
    assert s["effective_experts"] == pytest.approx(math.exp(h), abs=1e-3)
    yn = outs / np.linalg.norm(outs, axis=-1, keepdims=True)
    sim = np.einsum("bnc,bmc->nm", yn, yn) / B
    np.testing.assert_allclose(s["output_similarity_matrix"], sim, atol=1e-4)
    assert s["output_similarity"] == pytest.approx(repulsion_loss(torch.cat([r1.outputs, r2.outputs])).item(),
                                                   abs=1e-6)
    # merging and the saved state give the same numbers
    a, b = ExpertUsage(5, 2), ExpertUsage(5, 2)
    a.update(r1)
    b.update(r2)
    assert a.merge(b).summary(matrix=True) == s
    assert ExpertUsage.from_state(json.loads(json.dumps(u.state()))).summary(matrix=True) == s
    md = usage_markdown(s, {"cls": s})
    assert "SA-MoE expert utilization" in md and md.count("\n| ") == 5 + 1 + 1 + 1  # 5 experts, header, class, header


def test_collapsed_routing_is_visible():
    u = ExpertUsage(8, 2)
    u.update(MoERouting(probs=torch.full((6, 8), 1 / 8), weights=torch.full((6, 2), 0.5),
                        experts=torch.tensor([[3, 5]] * 6), outputs=torch.randn(6, 8, 4)))
    s = u.summary()
    assert s["unused_experts"] == [0, 1, 2, 4, 6, 7]
    assert s["usage_evenness"] == pytest.approx(math.log(2) / math.log(8), abs=1e-6) and s["effective_experts"] == 2.0


def test_config_validation_and_old_checkpoints_load(tmp_path):
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="moe_balance"):
            ModelConfig.tiny(moe_balance=bad)
    with pytest.raises(ValueError, match="needs SA-MoE"):
        ModelConfig.tiny(moe_repulsion=0.1, use_samoe=False)
    from wmoe.model.wmoe_clip import WMoECLIP
    model = WMoECLIP(ModelConfig.tiny(moe_balance=0.25, moe_repulsion=0.5))
    ckpt = save_checkpoint(model, tmp_path / "m.safetensors")
    info, _ = read_checkpoint(ckpt)
    assert (info.config.moe_balance, info.config.moe_repulsion) == (0.25, 0.5)
    # a checkpoint written before these options existed has no such keys: it loads, with both off
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(ckpt), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    del cfg["moe_balance"], cfg["moe_repulsion"]
    meta["config"] = json.dumps(cfg)
    save_file(tensors, str(ckpt), metadata=meta)
    old = load_model(ckpt)
    assert (old.cfg.moe_balance, old.cfg.moe_repulsion) == (0.0, 0.0)


def test_cli_options_reach_the_model_config():
    from wmoe.cli.commands import _model_cfg, build_parser
    a = build_parser().parse_args(["train", "d", "--tiny", "--moe-balance", "0.01", "--moe-repulsion", "0.1"])
    cfg = _model_cfg(a)
    assert (cfg.moe_balance, cfg.moe_repulsion) == (0.01, 0.1)
    a = build_parser().parse_args(["train", "d", "--image-size", "336", "--moe-balance", "0.2"])
    assert _model_cfg(a).moe_balance == 0.2 and _model_cfg(a).image_size == 336
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "d", "--moe-balance", "-1"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from wmoe.data import make_demo_dataset
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), image_size=64, n_test_good=2, n_test_defect=4,
                             categories=["brick", "grass"])


def test_training_logs_usage_per_epoch_and_stores_the_options(data, tmp_path):
    from wmoe.training.train import TrainConfig, train
    cfg = ModelConfig.tiny(image_size=112, moe_balance=0.05, moe_repulsion=0.2)
    ckpt = train(cfg, TrainConfig(str(data), out_dir=str(tmp_path), batch_size=6, epochs=2, progress=False))
    info, _ = read_checkpoint(ckpt)
    assert (info.config.moe_balance, info.config.moe_repulsion) == (0.05, 0.2)
    log = json.loads((tmp_path / "expert_usage.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2] and log["moe_repulsion"] == 0.2
    n_images = sum(1 for _ in (data).rglob("test/*/*.png"))
    assert all(e["n_images"] == n_images for e in log["epochs"])
    assert info.extra["expert_usage"] == log["epochs"][-1]
    from safetensors import safe_open
    with safe_open(str(tmp_path / "last.optim.safetensors"), "pt") as f:
        hist = json.loads(f.metadata()["progress"])["history"]
    assert all("esb" in h and "eir" in h for h in hist) and all(h["esb"] >= 1.0 - 1e-6 for h in hist)


def test_evaluation_report_has_utilization(data, tmp_path, fresh_tiny):
    from wmoe.evaluation.evaluate import evaluate
    model = fresh_tiny(image_size=112)
    table = evaluate(model, data, out_dir=tmp_path, progress=False)
    usage = json.loads((tmp_path / "metrics.json").read_text())["extra"]["expert_usage"]
    assert usage["all"]["n_images"] == table.extra["n_images"]
    assert set(usage["per_class"]) == {"brick", "grass"}
    assert sum(c["n_images"] for c in usage["per_class"].values()) == usage["all"]["n_images"]
    md = (tmp_path / "metrics.md").read_text()
    assert md.startswith("| class |") and "## SA-MoE expert utilization" in md


def test_usage_plot_draws_frequencies(tmp_path):
    from PIL import Image

    from wmoe.evaluation.usage_plot import _CELL_H, _CELL_W, _HEAD_H, _LABEL_W, draw_usage_grid
    u = ExpertUsage(4, 2)
    u.update(MoERouting(probs=torch.full((2, 4), 0.25), weights=torch.full((2, 2), 0.5),
                        experts=torch.tensor([[1, 2], [1, 3]]), outputs=torch.randn(2, 4, 3)))
    s = u.summary()  # f = [0, .5, .25, .25]
    path = draw_usage_grid([("ep 1", s), ("eval", s)], tmp_path / "u.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] == _HEAD_H + 2 * _CELL_H + 4
    def cell(j, row=0):  # a pixel in the cell's lower right corner, away from the printed number
        return tuple(img[_HEAD_H + row * _CELL_H + _CELL_H - 4, _LABEL_W + j * _CELL_W + _CELL_W - 5])
    assert cell(0) == (255, 255, 255)  # never chosen
    assert cell(1) == (8, 48, 107)  # chosen for every image (f = 1/k)
    assert cell(2) == cell(3) and 8 < cell(2)[0] < 255
    with pytest.raises(ValueError):
        draw_usage_grid([], tmp_path / "none.png")
