"""How the normal-reference map joins the zero-shot map (ours; docs/paper_mapping.md "Normal-reference mode").

The two maps live on different scales: the zero-shot map ``M`` is an abnormal-state probability in [0, 1], the
reference map ``D`` a nearest-neighbour distance in feature units. Each is therefore first put in units of its own
spread on the product's good images (a z-score), then the two are mixed with one weight ``w``::

    z_M(p) = (M(p) - mu_M) / sigma_M            mu, sigma: over all pixels of the good images (R1)
    z_D(p) = (D(p) - mu_D) / sigma_D            (D of a good image measured against the memory without it)
    F(p)   = (1 - w) z_M(p) + w z_D(p)          the fused map, in standard deviations of a good part   (R2)
    s      = (1 - w) s_txt / sigma_M + max_p F(p)                                                      (R3)

With the three-level reconstruction experts (:mod:`wmoe.reference.experts`, ``wmoe fit-normal --experts``), the
reference map is the memory map and the experts' map ``z_E`` (already in standard deviations of a good part) mixed
with a second weight ``v``, and put in units of its own spread on the good images again::

    R(p)   = (1 - v) z_D(p) + v z_E(p)                    (R4)
    D := R, mu_D, sigma_D := mean and spread of R on the good images, then R1-R3 unchanged

(the good images' ``R`` from their leave-one-out memory maps and their experts' maps). ``v = 0`` is the memory alone.

At ``w = 0``, ``s = (s_txt + max M - mu_M) / sigma_M``: an increasing affine function of WMoE-CLIP's own image score
``s_hat = s_txt + max(M)`` (Sec. 2.3), so zero-shot decisions and AUROCs are unchanged. At ``w = 1``, ``s = max z_D``,
PatchCore's image score. The weight is measured on labelled data of other categories, never on the test set
(:data:`DEFAULT_FUSION_WEIGHT`, ``bench/results/reference_cpu.md``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, Mapping

from ..errors import WMoEError

if TYPE_CHECKING:  # torch-free at import: the command line reads the default weight
    from torch import Tensor

#: The fused map's weight on the reference map, measured by ``python -m wmoe.bench.reference`` on the demo set's
#: auxiliary categories (brick, grass, coins: labelled, and not the held-out evaluation categories), k = 4: the weight
#: of the grid 0, 0.1, ..., 1 with the best mean of pixel and image AUROC over the seeds of
#: bench/results/reference_cpu.md (0.7 was set before the measurement; the measurement picked it).
DEFAULT_FUSION_WEIGHT = 0.7

#: The experts' share ``v`` of the reference map (R4), a fixed equal mix of the two normal models (not tuned;
#: bench/results/reference_cpu.md measures v = 0, this and 1 side by side).
DEFAULT_EXPERTS_WEIGHT = 0.5

#: What a reference-mode score means (stored in the decision, so a deployed model is self-describing).
FUSED_SCORE_MEANING = ("normal-reference mode: s = (1-w) s_txt / sigma_M + max(F), F = (1-w) z(zero-shot map) + "
                       "w z(nearest-neighbour map), z in standard deviations of the product's good images; higher = "
                       "more anomalous; maps are F (0 = a typical good pixel)")


class ReferenceError(WMoEError, ValueError):
    """A normal reference cannot be built, read or used (the message names the file or option)."""


def check_weight(w: float, what: str = "fusion weight") -> float:
    w = float(w)
    if not math.isfinite(w) or not 0.0 <= w <= 1.0:
        raise ReferenceError(f"{what} must be in [0, 1], got {w!r}")
    return w


@dataclass
class FusionStats:
    """Per product: the good images' pixel statistics of the zero-shot map (``zs_*``) and of the reference map
    (``ref_*``), as R1 needs them. Standard deviations are floored at ``1e-6`` so that a constant map cannot divide
    by zero (a degenerate reference then scores by the other map alone)."""

    zs_mean: float
    zs_std: float
    ref_mean: float
    ref_std: float

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not math.isfinite(float(v)):
                raise ReferenceError(f"fusion statistic {k} is {v}: the good images gave non-finite maps")
            setattr(self, k, float(v))
        self.zs_std = max(self.zs_std, 1e-6)
        self.ref_std = max(self.ref_std, 1e-6)

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FusionStats":
        return cls(**{k: float(d[k]) for k in ("zs_mean", "zs_std", "ref_mean", "ref_std")})


def combine_reference(memory_map: Tensor, experts_map: Tensor, memory_stats: FusionStats, weight: float) -> Tensor:
    """R4 before its own z-score: ``(1 - v) z_D + v z_E`` from the memory map ``D`` and the experts' ``z_E``."""
    return (1.0 - weight) * (memory_map - memory_stats.ref_mean) / memory_stats.ref_std + weight * experts_map


def fuse(zs_map: Tensor, text_score: Tensor, ref_map: Tensor, stats: FusionStats, weight: float
         ) -> "tuple[Tensor, Tensor]":
    """R1-R3: ``(scores (B,), fused maps (B, S, S))`` from the zero-shot map ``M`` (B, S, S), ``s_txt`` (B,) and the
    reference distance map ``D`` (B, S, S)."""
    z_m = (zs_map - stats.zs_mean) / stats.zs_std
    z_d = (ref_map - stats.ref_mean) / stats.ref_std
    fused = (1.0 - weight) * z_m + weight * z_d
    scores = (1.0 - weight) * text_score / stats.zs_std + fused.flatten(1).amax(dim=1)
    return scores, fused
