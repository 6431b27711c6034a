"""Configuration dataclasses for WMoE-CLIP.

Defaults follow the paper (Sec. 3.1): ViT-L-14-336 with OpenAI weights, layers 6/12/18/24, m=2 prompt tokens,
N=8 experts, top-k=2. Values the paper does not give are marked "(ours)"; docs/paper_mapping.md says why.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

#: The tiny backbone used by tests and the demo (registered with open_clip under this name).
TINY_BACKBONE = "wmoe-tiny"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a WMoE-CLIP model (stored in each checkpoint)."""

    # Backbone.
    backbone: str = "ViT-L-14-336-quickgelu"
    image_size: int = 518  # 518 -> 37x37 patches (the peers' evaluation size); 336 -> 24x24 (fast profile)
    feature_layers: Optional[Tuple[int, ...]] = None  # 1-based; None -> depth/4, depth/2, 3*depth/4, depth
    backbone_seed: int = 0  # used only when no pretrained weights are given (random-init backbone)

    # CTDS (Eq. 1-4).
    n_ctx: int = 2  # m learnable tokens per state
    vae_hidden: int = 512  # (ours) width of the VAE MLP trunk and decoder
    latent_dim: int = 128  # (ours) size of s_c
    prompt_mode: str = "posterior"  # "posterior" (mean of q(s|x_c), per image) or "prior" (cached, image-free)
    prior_samples: int = 16  # (ours) samples averaged in "prior" mode
    normal_word: str = "good"
    abnormal_word: str = "damaged"

    # WCMA (Eq. 5-7).
    freq_hidden: int = 192  # (ours) width D of the pointwise convolution delta_p
    wcma_residual: bool = True  # (ours) F'_T = F_T + attn(...) ; False: F'_T = attn(...) as Eq. 7 is written

    # SA-MoE (Eq. 8).
    n_experts: int = 8
    top_k: int = 2
    expert_hidden: Optional[int] = None  # (ours) None -> embed dim
    # Training-only regularizers from AnomalyMoE (ours; 0 = off = the paper). See wmoe/model/expert_health.py.
    moe_balance: float = 0.0  # weight of Expert Selection Balancing (Switch-style load balancing)
    moe_repulsion: float = 0.0  # weight of Expert Information Repulsion (expert output cosine similarity)

    # Maps and scores.
    temperature: float = 0.07  # CLIP's softmax temperature for text-patch similarities (AnomalyCLIP's choice)

    # Table 2 ablation switches: a module left out falls back to the natural path.
    use_ctds: bool = True
    use_wcma: bool = True
    use_samoe: bool = True

    def __post_init__(self) -> None:
        if self.feature_layers is not None:
            self.feature_layers = tuple(int(i) for i in self.feature_layers)
        if self.prompt_mode not in ("posterior", "prior"):
            raise ValueError(f"prompt_mode must be 'posterior' or 'prior', got {self.prompt_mode!r}")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be between 1 and n_experts={self.n_experts}")
        for name in ("moe_balance", "moe_repulsion"):
            w = float(getattr(self, name))
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"{name} must be a finite weight >= 0, got {getattr(self, name)!r}")
            if w > 0 and not self.use_samoe:
                raise ValueError(f"{name}={w} needs SA-MoE (use_samoe=True)")
            setattr(self, name, w)
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {self.n_ctx}")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["feature_layers"] is not None:
            d["feature_layers"] = list(d["feature_layers"])
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def tiny(cls, **overrides: Any) -> "ModelConfig":
        """A small config for tests and the CPU demo: 4-layer width-64 towers, 64-d joint space."""
        base = dict(backbone=TINY_BACKBONE, image_size=336, vae_hidden=64, latent_dim=16, freq_hidden=16,
                    expert_hidden=64)
        base.update(overrides)
        return cls(**base)
