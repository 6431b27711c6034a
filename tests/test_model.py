"""Model core: shapes, frozen backbone, gradients, determinism, ablation switches (tiny config, CPU)."""
from __future__ import annotations

import pytest
import torch

from wmoe.model.config import ModelConfig
from wmoe.training.losses import total_loss


@pytest.mark.parametrize("image_size,grid", [(336, 24), (518, 37)])
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes(fresh_tiny, image_size, grid, batch):
    model = fresh_tiny(image_size=image_size).eval()
    x = torch.randn(batch, 3, image_size, image_size)
    with torch.no_grad():
        x_c, grids = model.backbone(x)
        out = model(x)
    E = model.backbone.embed_dim
    assert x_c.shape == (batch, E)
    assert len(grids) == 4 and all(g.shape == (batch, grid, grid, E) for g in grids)
    assert out.scores.shape == (batch,) and out.text_scores.shape == (batch,)
    assert out.maps.shape == (batch, image_size, image_size)
    assert out.layer_maps.shape == (batch, 4, image_size, image_size)
    assert torch.isfinite(out.maps).all() and torch.isfinite(out.scores).all()
    assert ((out.maps >= 0) & (out.maps <= 1)).all()
    # F_p of an odd 37x37 grid has ceil(37/2) = 19 rows and columns.
    f_p = model.wcma[0].frequency(grids[0])
    assert f_p.shape == (batch, (grid + 1) // 2, (grid + 1) // 2, E)


def test_feature_layers_scale_with_depth():
    from wmoe.model.backbone import default_feature_layers

    assert default_feature_layers(24) == (6, 12, 18, 24)
    assert default_feature_layers(12) == (3, 6, 9, 12)
    assert default_feature_layers(4) == (1, 2, 3, 4)


def test_four_layer_features_differ(tiny_model):
    # A peer's bug (missing clone on in-place residual updates) made all layers identical copies.
    with torch.no_grad():
        _, grids = tiny_model.backbone(torch.randn(2, 3, 336, 336))
    for i in range(len(grids)):
        for j in range(i + 1, len(grids)):
            assert (grids[i] - grids[j]).abs().max() > 1e-3, (i, j)


def test_only_trainable_parameters_get_gradients(fresh_tiny):
    torch.manual_seed(1)
    model = fresh_tiny()
    model.train()
    assert not model.backbone.training  # frozen backbone stays in eval mode
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainable = list(model.trainable_state_dict().values())
    assert trainable and all(not p.requires_grad for p in model.backbone.parameters())
    opt = torch.optim.Adam(trainable, lr=1e-2)
    x = torch.randn(2, 3, 336, 336)
    masks = (torch.rand(2, 336, 336) > 0.8).float()
    loss = total_loss(model(x), torch.tensor([0, 1]), masks)["loss"]
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert no_grad == []
    opt.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_eval_is_deterministic(tiny_model):
    x = torch.randn(2, 3, 336, 336)
    with torch.no_grad():
        a, b = tiny_model(x), tiny_model(x)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.maps, b.maps)


def test_training_samples_are_stochastic(fresh_tiny):
    model = fresh_tiny().train()
    x = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.equal(a.text_scores, b.text_scores)  # Eq. 1 reparameterized samples


def test_final_score_is_text_score_plus_map_max(tiny_model):
    with torch.no_grad():
        out = tiny_model(torch.randn(3, 3, 336, 336))
    expected = out.text_scores.double() + out.maps.double().flatten(1).max(dim=1).values
    torch.testing.assert_close(out.scores.double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.maps, out.layer_maps.mean(1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("ctds,wcma,samoe", [(False, False, False), (True, False, False), (True, True, False),
                                             (True, False, True), (True, True, True)])
def test_table2_ablation_rows(ctds, wcma, samoe):
    from wmoe.model.wmoe_clip import WMoECLIP

    model = WMoECLIP(ModelConfig.tiny(use_ctds=ctds, use_wcma=wcma, use_samoe=samoe))
    names = {n.split(".")[0] for n in model.trainable_state_dict()}
    assert ("wcma" in names) == wcma and ("samoe" in names) == samoe
    assert any(n.startswith("ctds.vae") for n in model.trainable_state_dict()) == ctds
    model.train()
    out = model(torch.randn(2, 3, 336, 336))
    loss = total_loss(out, torch.tensor([0, 1]), torch.zeros(2, 336, 336))
    assert ("kl" in loss) == ctds and torch.isfinite(loss["loss"])
    loss["loss"].backward()
    model.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 336, 336)
        text = model.ctds(model.backbone(x)[0]).text
    # Without CTDS the prompts do not depend on the image: both rows equal.
    assert torch.allclose(text[0], text[1]) == (not ctds)


def test_prior_mode_is_image_independent_and_cached(fresh_tiny):
    model = fresh_tiny(prompt_mode="prior").eval()
    with torch.no_grad():
        t1 = model.ctds(torch.randn(2, 64)).text
        t2 = model.ctds(torch.randn(3, 64)).text
    assert torch.equal(t1[0], t1[1]) and torch.equal(t1[0], t2[2])
    assert model.ctds._prior_cache is not None
    model.train()
    assert model.ctds._prior_cache is None


def test_backbone_rejects_bad_shapes(tiny_model):
    with pytest.raises(ValueError, match="expects"):
        tiny_model.backbone(torch.randn(1, 3, 224, 224))
