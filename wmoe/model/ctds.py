"""Class Token Distribution Sampling (CTDS), Sec. 2.1, Eq. 1-4.

A VAE models the distribution of the (unit-normalized) class token ``x_c``; reconstructions ``r_i`` decoded
from latent samples are added to the learnable prompt vectors, ``g(r_i, v_i) = r_i + v_i`` (Eq. 4), and the
prompts "a photo of a good/damaged [g_1]...[g_m]" go through the frozen text encoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import CLIPBackbone
from .config import ModelConfig


@dataclass
class CTDSOutput:
    """Text features ``F_T`` (B, 2, E), unit norm, [normal, abnormal]; VAE terms for Eq. 2-3 (None in eval)."""

    text: Tensor
    mu: Optional[Tensor] = None
    logvar: Optional[Tensor] = None
    recon: Optional[Tensor] = None  # r, (B, m, E)
    target: Optional[Tensor] = None  # normalized x_c, (B, E)


class ClassTokenVAE(nn.Module):
    """Eq. 1: ``mu = W_mu MLP(x)``, ``log sigma^2 = W_sigma MLP(x)``, ``s = mu + eps * sigma``; decoder MLP -> r."""

    def __init__(self, dim: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU())
        self.w_mu = nn.Linear(hidden, latent)
        self.w_logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.latent = latent

    def encode(self, x: Tensor):
        h = self.trunk(x)
        return self.w_mu(h), self.w_logvar(h)

    def decode(self, s: Tensor) -> Tensor:
        return self.decoder(s)


class CTDS(nn.Module):
    """Prompt learner with VAE-sampled global semantics (Eq. 1-4).

    In training each of the m prompt positions gets its own reparameterized sample (Eq. 1). In evaluation
    the prompts use the posterior mean (deterministic, per image) or, with ``prompt_mode="prior"``, text
    features averaged over samples of the prior ``N(0, I)``: image-independent and computed once.
    With ``use_ctds=False`` (Table 2, row 1) the prompts hold the learnable vectors alone.
    """

    def __init__(self, cfg: ModelConfig, backbone: CLIPBackbone) -> None:
        super().__init__()
        self.cfg = cfg
        E, W, m = backbone.embed_dim, backbone.token_dim, cfg.n_ctx
        self.vae = ClassTokenVAE(E, cfg.vae_hidden, cfg.latent_dim) if cfg.use_ctds else None
        # r lives in the joint space (E), prompt vectors in the token space (W); equal for ViT-L-14 (768).
        self.to_token = nn.Identity() if (E == W or not cfg.use_ctds) else nn.Linear(E, W, bias=False)
        self.ctx = nn.Parameter(torch.randn(2, m, W) * 0.02)  # [normal, abnormal] x m x W: v^n_i, v^a_i

        # Fixed prompt tokens: [SOT] a photo of a good|damaged [v_1..v_m] [EOT], padded to a common length.
        prefixes = [backbone.prompt_tokens(f"a photo of a {w}") for w in (cfg.normal_word, cfg.abnormal_word)]
        L = max(len(p) for p in prefixes) + m + 1
        ids = torch.zeros(2, L, dtype=torch.long)
        ctx_pos = torch.zeros(2, m, dtype=torch.long)
        eot = torch.zeros(2, dtype=torch.long)
        for s, p in enumerate(prefixes):
            n = len(p)
            ids[s, :n] = torch.tensor(p)
            ctx_pos[s] = torch.arange(n, n + m)
            ids[s, n + m] = backbone.eot_token_id
            eot[s] = n + m
        self.register_buffer("prompt_ids", ids, persistent=False)
        self.register_buffer("ctx_pos", ctx_pos, persistent=False)
        self.register_buffer("eot_index", eot, persistent=False)
        self._backbone = [backbone]  # not a submodule: the backbone is owned (and frozen) by the model
        self._prior_cache: Optional[Tensor] = None

    @property
    def backbone(self) -> CLIPBackbone:
        return self._backbone[0]

    def train(self, mode: bool = True) -> "CTDS":
        self._prior_cache = None  # parameters may change: recompute cached prior text features
        return super().train(mode)

    def encode_prompts(self, r: Optional[Tensor]) -> Tensor:
        """Text features for fused vectors: ``r`` (B, m, E) or None -> ``F_T`` (B or 1, 2, E), unit norm (Eq. 4)."""
        bb = self.backbone
        base = bb.token_embedding(self.prompt_ids).to(self.ctx.dtype)  # (2, L, W)
        ctx = self.ctx
        if r is not None:
            ctx = ctx.unsqueeze(0) + self.to_token(r).unsqueeze(1).to(ctx.dtype)  # (B, 2, m, W): g = r_i + v_i
        else:
            ctx = ctx.unsqueeze(0)
        B = ctx.shape[0]
        emb = base.unsqueeze(0).expand(B, -1, -1, -1).clone()
        idx = self.ctx_pos.unsqueeze(0).unsqueeze(-1).expand(B, -1, -1, emb.shape[-1])
        emb = emb.scatter(2, idx, ctx)  # inject g(r_i, v_i) at the placeholder positions
        L, Wd = emb.shape[2], emb.shape[3]
        feats = bb.encode_text_embeddings(emb.reshape(B * 2, L, Wd), self.eot_index.repeat(B))
        return F.normalize(feats.reshape(B, 2, -1), dim=-1)

    def forward(self, x_c: Tensor) -> CTDSOutput:
        B = x_c.shape[0]
        m = self.cfg.n_ctx
        if self.vae is None:
            return CTDSOutput(text=self.encode_prompts(None).expand(B, -1, -1))
        x = F.normalize(x_c.float(), dim=-1).to(self.ctx.dtype)
        mu, logvar = self.vae.encode(x)
        if self.training:
            eps = torch.randn(B, m, mu.shape[-1], device=mu.device, dtype=mu.dtype)
            s = mu.unsqueeze(1) + eps * torch.exp(0.5 * logvar).unsqueeze(1)  # Eq. 1, one sample per token
            r = self.vae.decode(s)  # (B, m, E)
            return CTDSOutput(text=self.encode_prompts(r), mu=mu, logvar=logvar, recon=r, target=x)
        if self.cfg.prompt_mode == "prior":
            return CTDSOutput(text=self.prior_text_features().expand(B, -1, -1))
        r = self.vae.decode(mu).unsqueeze(1).expand(B, m, -1)  # posterior mean: deterministic
        return CTDSOutput(text=self.encode_prompts(r))

    @torch.no_grad()
    def prior_text_features(self) -> Tensor:
        """``F_T`` averaged over ``prior_samples`` draws of ``s ~ N(0, I)`` (1, 2, E); cached until ``train()``."""
        if self._prior_cache is None:
            assert self.vae is not None
            K, m = self.cfg.prior_samples, self.cfg.n_ctx
            g = torch.Generator(device="cpu").manual_seed(0)  # fixed draws: the same features every time
            s = torch.randn(K, m, self.vae.latent, generator=g).to(self.ctx.device, self.ctx.dtype)
            feats = self.encode_prompts(self.vae.decode(s))  # (K, 2, E)
            self._prior_cache = F.normalize(feats.mean(0, keepdim=True), dim=-1)
        return self._prior_cache
