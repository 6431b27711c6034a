"""WMoE-CLIP (Fig. 1): frozen CLIP + CTDS + WCMA + SA-MoE, anomaly maps and the image score.

Forward pass for a batch of normalized images ``(B, 3, S, S)``:

1. backbone -> class token ``x_c`` and the patch grids ``F_I^l`` of the four feature layers;
2. CTDS (Eq. 1-4) -> text features ``F_T`` = [normal, abnormal];
3. per layer, WCMA (Eq. 5-7) -> ``F'_T^l``; anomaly map ``M_l`` = softmax over the two states of
   ``cos(F_I^l, F'_T^l) / tau``, abnormal channel, bilinearly upsampled to S x S; ``M`` = mean over layers;
4. SA-MoE (Eq. 8) -> ``x_p``; ``x_cls = x_p + x_c``; ``s_txt`` = abnormal probability of ``cos(x_cls, F_T) / tau``;
5. image score ``s_hat = s_txt + max(M)``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmoe.kernels import ChoiceLike, KernelChoice, as_choice

from .backbone import CLIPBackbone
from .config import ModelConfig
from .ctds import CTDS
from .samoe import SAMoE
from .wcma import WCMA


@dataclass
class WMoEOutput:
    """Model outputs. ``scores`` = s_hat (B,), ``maps`` = M (B, S, S), ``layer_maps`` = M_l (B, L, S, S),
    ``text_scores`` = s_txt (B,); ``mu``/``logvar``/``recon``/``target`` are CTDS' VAE terms (training only);
    ``moe_context`` = SA-MoE's token ``x_a`` (B, E), for the expert utilization statistics and regularizers."""

    scores: Tensor
    maps: Tensor
    layer_maps: Tensor
    text_scores: Tensor
    mu: Optional[Tensor] = None
    logvar: Optional[Tensor] = None
    recon: Optional[Tensor] = None
    target: Optional[Tensor] = None
    moe_context: Optional[Tensor] = None


def anomaly_probability(features: Tensor, text: Tensor, temperature: float) -> Tensor:
    """Abnormal-state probability of ``softmax(cos(features, text) / tau)`` over [normal, abnormal].

    ``features`` (B, ..., E), ``text`` (B, 2, E) -> (B, ...). The two-way softmax equals a sigmoid of the
    logit difference, which is cheaper and exports to one op.
    """
    f = F.normalize(features, dim=-1)
    t = F.normalize(text, dim=-1)
    diff = t[:, 1] - t[:, 0]  # (B, E)
    shape = (f.shape[0],) + (1,) * (f.dim() - 2) + (f.shape[-1],)
    logit = (f * diff.reshape(shape)).sum(-1) / temperature
    return torch.sigmoid(logit)


class WMoECLIP(nn.Module):
    """The full model. Only CTDS, WCMA and SA-MoE parameters are trainable; the backbone is frozen."""

    def __init__(self, cfg: ModelConfig, pretrained: Optional[str] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = CLIPBackbone(cfg.backbone, cfg.image_size, cfg.feature_layers, pretrained,
                                     cfg.backbone_seed)
        E = self.backbone.embed_dim
        L = len(self.backbone.feature_layers)
        self.ctds = CTDS(cfg, self.backbone)
        self.wcma = (nn.ModuleList(WCMA(E, cfg.freq_hidden, cfg.wcma_residual) for _ in range(L))
                     if cfg.use_wcma else None)
        self.samoe = (SAMoE(E, L, cfg.n_experts, cfg.top_k, cfg.expert_hidden or E) if cfg.use_samoe else None)

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    def kernel_stages(self) -> List[nn.Module]:
        """The modules that run fused stages (each holds its own ``kernels`` choice)."""
        return [m for m in self.modules() if isinstance(getattr(m, "kernels", None), KernelChoice)]

    def set_kernels(self, kernels: ChoiceLike) -> None:
        """Run every fused stage of this model with ``kernels`` (a :class:`wmoe.kernels.KernelChoice`, a
        :class:`wmoe.kernels.Kernels` or its name). Affects this model only."""
        choice = as_choice(kernels)
        for m in self.kernel_stages():
            m.kernels = choice

    @contextlib.contextmanager
    def using_kernels(self, kernels: ChoiceLike) -> Iterator["WMoECLIP"]:
        """:meth:`set_kernels` for a ``with`` block; each stage's previous choice is restored on exit."""
        old = [(m, m.kernels) for m in self.kernel_stages()]
        self.set_kernels(kernels)
        try:
            yield self
        finally:
            for m, c in old:
                m.kernels = c

    def trainable_state_dict(self) -> Dict[str, Tensor]:
        """The parameters a checkpoint stores (everything but the frozen backbone)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def forward(self, images: Tensor) -> WMoEOutput:
        S = self.cfg.image_size
        tau = self.cfg.temperature
        with torch.no_grad():
            x_c, grids = self.backbone(images)
        dtype = self.ctds.ctx.dtype
        x_c = x_c.to(dtype)
        grids = [g.to(dtype) for g in grids]

        ctds = self.ctds(x_c)
        text = ctds.text  # F_T (B, 2, E)

        layer_maps: List[Tensor] = []
        for i, g in enumerate(grids):
            t = self.wcma[i](text, g) if self.wcma is not None else text  # F'_T (Eq. 7)
            layer_maps.append(anomaly_probability(g, t, tau))  # (B, H, W)
        lm = torch.stack(layer_maps, dim=1)  # (B, L, H, W)
        lm = F.interpolate(lm, size=(S, S), mode="bilinear", align_corners=False)
        maps = lm.mean(dim=1)

        x_cls, x_a = x_c, None
        if self.samoe is not None:
            x_a = self.samoe.context(grids)
            x_cls = x_c + self.samoe.mix(x_a)  # x_cls = x_p + x_c
        s_txt = anomaly_probability(x_cls, text, tau)
        scores = s_txt + maps.flatten(1).amax(dim=1)  # s_hat = s_txt + max(M)
        return WMoEOutput(scores=scores, maps=maps, layer_maps=lm, text_scores=s_txt, mu=ctds.mu,
                          logvar=ctds.logvar, recon=ctds.recon, target=ctds.target, moe_context=x_a)
