"""Training objective, Sec. 2.4, Eq. 9-11 (with the KL and reconstruction terms of Eq. 2-3).

Pixel losses follow AnomalyCLIP's conventions: the focal loss takes probabilities of the two states
(normal = 1 - p, abnormal = p), gamma = 2; the dice loss (smooth = 1) is applied to the abnormal channel
against the mask and to the normal channel against its complement, averaged over the batch.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.wmoe_clip import WMoEOutput

_EPS = 1e-6


def kl_loss(mu: Tensor, logvar: Tensor) -> Tensor:
    """Eq. 2: ``-1/2 sum_i (1 + log sigma_i^2 - mu_i^2 - sigma_i^2)``, summed over latents, mean over batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()


def reconstruction_loss(recon: Tensor, target: Tensor) -> Tensor:
    """Eq. 3: ``||r - x_c||^2`` for each of the m samples ``r`` (B, m, E) vs ``x_c`` (B, E); mean over B and m."""
    return (recon - target.unsqueeze(1)).pow(2).sum(-1).mean()


def global_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Eq. 9: ``BCE(S_gt, s_hat)``. ``s_hat = s_txt + max(M)`` lies in [0, 2]; BCE takes ``s_hat / 2``.

    Halving keeps the ranking (and so every image metric) and makes ``s_hat`` a probability.
    """
    p = (scores.float() / 2).clamp(_EPS, 1 - _EPS)
    return F.binary_cross_entropy(p, labels.float())


def focal_loss(prob: Tensor, mask: Tensor, gamma: float = 2.0) -> Tensor:
    """Binary focal loss on abnormal probabilities ``prob`` vs ``mask`` (same shape), mean over pixels."""
    p = prob.float().clamp(_EPS, 1 - _EPS)
    m = mask.float()
    p_t = p * m + (1 - p) * (1 - m)
    return (-(1 - p_t).pow(gamma) * p_t.log()).mean()


def dice_loss(prob: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """``1 - (2|P.G| + s) / (|P| + |G| + s)`` per sample, mean over the batch."""
    p = prob.float().flatten(1)
    g = target.float().flatten(1)
    dice = (2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return (1 - dice).mean()


def local_loss(layer_maps: Tensor, masks: Tensor) -> Tensor:
    """Eq. 10: ``sum_l Focal(M_l, M_gt) + sum_l Dice(M_l, M_gt)`` for ``layer_maps`` (B, L, S, S), ``masks`` (B, S, S)."""
    if masks.dim() == 4:
        masks = masks[:, 0]
    total = layer_maps.new_zeros((), dtype=torch.float32)
    for l in range(layer_maps.shape[1]):
        p = layer_maps[:, l]
        total = total + focal_loss(p, masks)
        total = total + dice_loss(p, masks) + dice_loss(1 - p, 1 - masks)
    return total


def total_loss(out: WMoEOutput, labels: Tensor, masks: Tensor,
               regularizers: Optional[Dict[str, Tuple[float, Tensor]]] = None) -> Dict[str, Tensor]:
    """Eq. 11: ``L = L_global + L_local + L_KL + L_rec``, plus ``sum_i w_i R_i`` for optional regularizers.

    ``regularizers`` maps a name to ``(weight, term)`` (SA-MoE's ESB/EIR, :mod:`wmoe.model.expert_health`). Every
    term is returned (for the logs); one with weight 0 is not added, so the default objective is exactly Eq. 11.
    Returns the terms and ``"loss"``.
    """
    terms = {"global": global_loss(out.scores, labels), "local": local_loss(out.layer_maps, masks)}
    if out.mu is not None and out.logvar is not None:
        terms["kl"] = kl_loss(out.mu.float(), out.logvar.float())
    if out.recon is not None and out.target is not None:
        terms["rec"] = reconstruction_loss(out.recon.float(), out.target.float())
    loss = sum(terms.values())
    for name, (weight, term) in (regularizers or {}).items():
        terms[name] = term
        if weight:
            loss = loss + weight * term
    terms["loss"] = loss
    return terms
