"""The three-level reconstruction experts of the normal-reference mode, after AnomalyMoE (Gu et al.; abstract only,
so the design below is ours: docs/paper_mapping.md "Normal-reference mode").

Three small autoencoders on the frozen backbone's patch embedding ``P`` (B, G, G, D) of a product's good images, one
per semantic level (AnomalyMoE: local structural, component-level semantic, global logical anomalies):

- **patch**: each patch token ``P(p)``;
- **component**: the ``window x window`` neighbourhood average of ``P`` around each patch (a part of the object);
- **global**: the mean of ``P`` over the grid (the image), one vector per image broadcast to every patch.

Each level's features are standardized with their per-channel mean and spread over the good images (X1), an expert
``x -> enc -> code (bottleneck) -> dec -> x_hat`` reconstructs them, and its error map is the mean squared error
over channels (X2). A router, a linear map of the three levels' standardized features at a patch, gives soft gates
``g_n(p)`` (softmax) over the three experts; the experts' map is the gated sum of the errors, each in units of its
spread on the good images, and the whole map in units of its own spread on them (X3)::

    x_n(p)   = (f_n(p) - m_n) / s_n                                   f_n: level n's feature at patch p     (X1)
    e_n(p)   = mean_c (x_n(p) - dec_n(enc_n(x_n(p))))_c^2                                                    (X2)
    E(p)     = sum_n g_n(p) (e_n(p) - mu_n) / sigma_n,  g = softmax(router([x_1, x_2, x_3](p)))
    z_E(p)   = (E(p) - mu_E) / sigma_E                                                                       (X3)

Training (:func:`fit_experts`: Adam, 8 good images per step, a fixed seed for the initialization and the batches,
so the fit is deterministic)::

    L = sum_n mean_p e_n(p)                             each expert reconstructs its level (all tokens)
      + mean_p sum_n g_n(p) e_n(p).detach()             the router prefers the expert that explains the patch
      + lambda_ESB * L_ESB(g, argmax g)                 Expert Selection Balancing (expert_health.balance_loss)
      + lambda_EIR * L_EIR(code_1, code_2, code_3)      Expert Information Repulsion (expert_health.repulsion_loss)

ESB keeps the router from collapsing onto one level; EIR (mean pairwise cosine similarity of the three experts'
bottleneck codes at the same patch) keeps the experts' representations apart. Both are the SA-MoE regularizers of
:mod:`wmoe.model.expert_health`, reused unchanged. Everything in :meth:`LevelExperts.forward` is plain tensor algebra
(Linear, GELU, AvgPool, Softmax), so the experts export into the same ONNX graph as the memory.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.expert_health import balance_loss, repulsion_loss
from .fusion import ReferenceError
from .memory import local_features

#: The three levels, in the order of the router's gates.
LEVELS = ("patch", "component", "global")
#: Prefix of the experts' tensors in a product's safetensors file.
PREFIX = "experts."
#: Floor of sigma_n (X3): errors are in units of the standardized features' variance, so 0.01 = 1 % of it.
ERR_FLOOR = 1e-2


@dataclass
class ExpertsConfig:
    """How the experts are built and trained. ``window``: side of the component level's neighbourhood (odd);
    ``hidden``/``bottleneck``: widths of each autoencoder; ``balance``/``repulsion``: weights of ESB/EIR;
    ``steps``/``lr``/``batch_images``: Adam on ``batch_images`` good images per step (all when fewer);
    ``seed``: initialization and the batches (the fit is deterministic)."""

    window: int = 5
    hidden: int = 64
    bottleneck: int = 8
    balance: float = 1.0
    repulsion: float = 0.1
    steps: int = 200
    lr: float = 1e-2
    batch_images: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window < 1 or self.window % 2 == 0:
            raise ReferenceError(f"experts window must be an odd number >= 1, got {self.window}")
        for k in ("hidden", "bottleneck", "steps", "batch_images"):
            if int(getattr(self, k)) < 1:
                raise ReferenceError(f"experts {k} must be >= 1, got {getattr(self, k)}")
        for k in ("balance", "repulsion", "lr"):
            v = float(getattr(self, k))
            if not math.isfinite(v) or v < 0:
                raise ReferenceError(f"experts {k} must be a finite number >= 0, got {v}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class LevelExperts(nn.Module):
    """The three experts, their router and the statistics of X1-X3 (buffers, so an ONNX export holds them)."""

    def __init__(self, dim: int, cfg: ExpertsConfig) -> None:
        super().__init__()
        self.cfg, self.dim = cfg, dim
        n = len(LEVELS)
        self.enc1 = nn.ModuleList(nn.Linear(dim, cfg.hidden) for _ in range(n))
        self.enc2 = nn.ModuleList(nn.Linear(cfg.hidden, cfg.bottleneck) for _ in range(n))
        self.dec1 = nn.ModuleList(nn.Linear(cfg.bottleneck, cfg.hidden) for _ in range(n))
        self.dec2 = nn.ModuleList(nn.Linear(cfg.hidden, dim) for _ in range(n))
        self.router = nn.Linear(n * dim, n)
        self.register_buffer("feat_mean", torch.zeros(n, dim))  # m_n (X1)
        self.register_buffer("feat_std", torch.ones(n, dim))  # s_n (X1)
        self.register_buffer("err_mean", torch.zeros(n))  # mu_n (X3)
        self.register_buffer("err_std", torch.ones(n))  # sigma_n (X3)
        self.register_buffer("map_stats", torch.tensor([0.0, 1.0]))  # mu_E, sigma_E (X3)

    # -------------------------------------------------------------------------------------------- pieces
    def levels(self, emb: Tensor) -> List[Tensor]:
        """Standardized features of the three levels: (B, G, G, D), (B, G, G, D), (B, D) (X1)."""
        comp = local_features(emb, self.cfg.window)
        glob = emb.mean(dim=(1, 2))
        return [(f - self.feat_mean[i]) / self.feat_std[i] for i, f in enumerate((emb, comp, glob))]

    def expert(self, i: int, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Expert ``i`` on standardized features ``x`` (..., D): its bottleneck code and its error ``e`` (X2)."""
        code = self.enc2[i](F.gelu(self.enc1[i](x)))
        rec = self.dec2[i](F.gelu(self.dec1[i](code)))
        return code, (x - rec).pow(2).mean(-1)

    def gates(self, xs: List[Tensor]) -> Tensor:
        """Router softmax (B, G, G, 3) from the three levels' standardized features at each patch."""
        glob = xs[2][:, None, None, :].expand_as(xs[0])
        return torch.softmax(self.router(torch.cat([xs[0], xs[1], glob], dim=-1)), dim=-1)

    def parts(self, emb: Tensor) -> Tuple[List[Tensor], List[Tensor], Tensor]:
        """Codes and errors of the three experts (patch/component: (B, G, G, ·), global broadcast to the grid) and
        the gates."""
        xs = self.levels(emb)
        codes, errs = [], []
        for i, x in enumerate(xs):
            c, e = self.expert(i, x)
            if i == 2:  # the global level: one code and error per image, the same at every patch
                c = c[:, None, None, :].expand(*xs[0].shape[:3], c.shape[-1])
                e = e[:, None, None].expand(xs[0].shape[:3])
            codes.append(c)
            errs.append(e)
        return codes, errs, self.gates(xs)

    def raw_map(self, emb: Tensor) -> Tensor:
        """``E`` (B, G, G): the gated sum of the experts' standardized errors (X3, before its own z-score)."""
        _, errs, g = self.parts(emb)
        e = (torch.stack(errs, dim=-1) - self.err_mean) / self.err_std
        return (g * e).sum(-1)

    def forward(self, emb: Tensor) -> Tensor:
        """``z_E`` (B, G, G) from the patch embedding ``emb`` (B, G, G, D), in standard deviations of a good part."""
        return (self.raw_map(emb) - self.map_stats[0]) / self.map_stats[1]

    # ------------------------------------------------------------------------------------------- storage
    def tensors(self) -> Dict[str, Tensor]:
        return {PREFIX + k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, info: Mapping[str, Any], tensors: Mapping[str, Tensor], where: str,
                     manifest: str = "the manifest") -> "LevelExperts":
        """Rebuild from a manifest's ``experts`` entry and a product file's tensors; errors name the manifest
        (``manifest``) or the file (``where``) at fault."""
        try:
            cfg = ExpertsConfig(**info["config"])
            dim = int(info["dim"])
            rho = float(info["memory_correlation"])
            if not -1.0 <= rho <= 1.0:
                raise ValueError(f"memory_correlation is {rho}")
        except (KeyError, TypeError, ValueError) as e:
            raise ReferenceError(f"{manifest}: damaged experts entry of {where} ({type(e).__name__}: {e})") from None
        m = cls(dim, cfg)
        state = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        if not state:
            raise ReferenceError(f"{where}: the manifest names trained experts but the file holds no expert weights")
        want = m.state_dict()
        missing = sorted(set(want) - set(state))
        unexpected = sorted(set(state) - set(want))
        bad = [k for k in want if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
        if missing or unexpected or bad:
            raise ReferenceError(f"{where}: expert weights do not match their config (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]}, wrong shape {bad[:3]})")
        if not all(torch.isfinite(v).all() for v in state.values()):
            raise ReferenceError(f"{where}: expert weights are not finite")
        m.load_state_dict({k: v.float() for k, v in state.items()})
        return m.eval()


def _init(module: LevelExperts, seed: int) -> None:
    """Deterministic initialization from ``seed`` (PyTorch's default schemes, drawn from a private generator)."""
    g = torch.Generator().manual_seed(seed)
    for lin in module.modules():
        if isinstance(lin, nn.Linear):
            bound = 1.0 / math.sqrt(lin.in_features)
            with torch.no_grad():
                lin.weight.uniform_(-bound, bound, generator=g)
                lin.bias.uniform_(-bound, bound, generator=g)


def objective(m: LevelExperts, emb: Tensor) -> Dict[str, Tensor]:
    """The training loss and its terms on good patch embeddings ``emb`` (N, G, G, D) (module docstring)."""
    codes, errs, g = m.parts(emb)
    cfg = m.cfg
    n = len(LEVELS)
    terms: Dict[str, Tensor] = {f"rec_{lvl}": errs[i].mean() for i, lvl in enumerate(LEVELS)}
    e = torch.stack(errs, dim=-1).detach()
    probs = g.reshape(-1, n)
    terms["router"] = (g * e).sum(-1).mean()
    terms["esb"] = balance_loss(probs, probs.argmax(-1, keepdim=True))
    terms["eir"] = repulsion_loss(torch.stack(codes, dim=-2).reshape(-1, n, codes[0].shape[-1]))
    terms["loss"] = (sum(terms[f"rec_{lvl}"] for lvl in LEVELS) + terms["router"]
                     + cfg.balance * terms["esb"] + cfg.repulsion * terms["eir"])
    return terms


def _stats(x: Tensor, floor: float = 1e-6) -> Tuple[float, float]:
    """Mean and spread, the spread floored: a level that reconstructs its few good images perfectly (the global one
    with k = 1) must not turn a tiny deviation into a huge z-score."""
    return float(x.mean()), max(float(x.std()) if x.numel() > 1 else 0.0, floor)


def reference_std(rho: float, weight: float) -> float:
    """Spread on the good images of R4's ``(1 - v) z_D + v z_E`` (mean 0): both z-scores have spread 1 there, and
    ``rho`` is their correlation over the good images' pixels."""
    v = float(weight)
    var = (1 - v) ** 2 + v ** 2 + 2 * v * (1 - v) * float(rho)
    return max(math.sqrt(max(var, 0.0)), 1e-6)


def _train(emb: Tensor, cfg: ExpertsConfig) -> Tuple[LevelExperts, Dict[str, float], Dict[str, float]]:
    """Experts trained on ``emb`` (N, G, G, D) with X1's statistics of those images; the loss terms before and after."""
    m = LevelExperts(emb.shape[-1], cfg)
    _init(m, cfg.seed)
    with torch.no_grad():  # X1: per-level, per-channel statistics of the good images
        raw = [emb, local_features(emb, cfg.window), emb.mean(dim=(1, 2))]
        for i, f in enumerate(raw):
            flat = f.reshape(-1, f.shape[-1])
            m.feat_mean[i] = flat.mean(0)
            m.feat_std[i] = flat.std(0).clamp_min(1e-6) if flat.shape[0] > 1 else torch.ones(f.shape[-1])
        before = {k: float(v) for k, v in objective(m, emb).items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=cfg.lr)
    m.train()
    g = torch.Generator().manual_seed(cfg.seed + 1)
    n = emb.shape[0]
    for _ in range(cfg.steps):
        batch = emb if n <= cfg.batch_images else emb[torch.randperm(n, generator=g)[:cfg.batch_images]]
        opt.zero_grad(set_to_none=True)
        loss = objective(m, batch)["loss"]
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        after = {k: float(v) for k, v in objective(m, emb).items()}
    return m, before, after


def _upsampled(x: Tensor, size: Optional[int]) -> Tensor:
    if not size:
        return x
    return F.interpolate(x[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


@torch.no_grad()
def fit_experts(emb: Tensor, cfg: Optional[ExpertsConfig] = None, upsample: Optional[int] = None
                ) -> Tuple[LevelExperts, Dict[str, Any], Tensor]:
    """Train the experts on the good images' patch embeddings ``emb`` (N, G, G, D) and set the statistics of X3.

    The statistics describe an *unseen* good part, as the memory map's leave-one-out ones do: with two or more
    images, a two-fold cross-fit (experts trained on the even-numbered images score the odd ones and the other way
    round) gives each good image's errors and map without having trained on it; ``mu_n``/``sigma_n`` and ``mu_E``/
    ``sigma_E`` (over the pixels of the maps upsampled to ``upsample``, as the memory map's) are theirs. The experts
    kept are then trained on all images. With one image there is nothing to hold out: in-sample statistics, the
    spreads floored (:data:`ERR_FLOOR`).

    Returns the module (eval mode), what the manifest records (config, feature width, the loss terms before and after
    training, the router's use of each level on the good images) and the good images' held-out ``z_E`` maps."""
    threads = torch.get_num_threads()
    # matrices of a few thousand x 64: one thread is many times faster than several on a shared CPU (0.7 s against
    # 19 s for a test-sized fit on the shared 2-core machine), and one fixed count keeps the fit bit-reproducible
    torch.set_num_threads(1)
    try:
        return _fit_experts(emb.detach().float().cpu(), cfg or ExpertsConfig(), upsample)
    finally:
        torch.set_num_threads(threads)


def _fit_experts(emb: Tensor, cfg: ExpertsConfig, upsample: Optional[int]) -> Tuple[LevelExperts, Dict[str, Any], Tensor]:
    n = emb.shape[0]
    with torch.enable_grad():
        m, before, after = _train(emb, cfg)
    idx = torch.arange(n)
    folds = [(idx[idx % 2 == f], idx[idx % 2 != f]) for f in (0, 1)] if n > 1 else [(idx, idx)]
    errs_h: List[Tensor] = [torch.empty(0)] * n
    gates_h: List[Tensor] = [torch.empty(0)] * n
    for train_idx, test_idx in folds:
        if n > 1:
            with torch.enable_grad():
                fm = _train(emb[train_idx], cfg)[0]
        else:
            fm = m
        _, errs, g = fm.parts(emb[test_idx])
        e = torch.stack(errs, dim=-1)
        for j, i in enumerate(test_idx.tolist()):
            errs_h[i], gates_h[i] = e[j], g[j]
    e, g = torch.stack(errs_h), torch.stack(gates_h)  # (N, G, G, 3), held out
    for i in range(len(LEVELS)):
        m.err_mean[i], m.err_std[i] = _stats(e[..., i] if i < 2 else e[:, 0, 0, i], floor=ERR_FLOOR)
    held = _upsampled(((e - m.err_mean) / m.err_std * g).sum(-1), upsample)
    m.map_stats[0], m.map_stats[1] = _stats(held)
    z_held = (held - m.map_stats[0]) / m.map_stats[1]
    _, _, g_all = m.parts(emb)
    usage = torch.bincount(g_all.reshape(-1, len(LEVELS)).argmax(-1), minlength=len(LEVELS)).float()
    usage = (usage / usage.sum()).tolist()
    info = {"config": cfg.to_dict(), "dim": int(emb.shape[-1]), "levels": list(LEVELS), "n_images": n,
            "statistics": "two-fold cross-fit" if n > 1 else "in-sample (one image)",
            "loss_before": before, "loss_after": after,
            "router_top1_share": {lvl: round(u, 4) for lvl, u in zip(LEVELS, usage)},
            "error_mean": [round(float(v), 6) for v in m.err_mean], "error_std": [round(float(v), 6) for v in m.err_std],
            "map_mean": float(m.map_stats[0]), "map_std": float(m.map_stats[1])}
    return m, info, z_held


__all__ = ["ExpertsConfig", "LEVELS", "LevelExperts", "fit_experts", "objective", "reference_std"]
