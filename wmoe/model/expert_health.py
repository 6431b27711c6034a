"""Expert health of SA-MoE (Sec. 2.3, Eq. 8): utilization statistics and AnomalyMoE's two regularizers.

SA-MoE routes one token per image, ``x_a``, to the top-k of N experts. Nothing in the paper keeps the router from
collapsing onto a few experts. AnomalyMoE (Gu et al.) names two remedies, Expert Selection Balancing (ESB) and
Expert Information Repulsion (EIR), but its abstract gives no formulas. We use well-known forms (ours):

- ESB, Switch Transformer's load-balancing loss (Fedus et al. 2021, Eq. 4-6) for top-k routing::

      L_ESB = N * sum_n f_n * P_n,
      f_n = (1 / (B k)) * #{(b, j): expert_j(b) = n}     (share of the B*k routing slots; no gradient)
      P_n = (1 / B) * sum_b softmax(G(x_a^b))_n           (mean router probability; differentiable)

  It is 1 when routing is uniform and approaches N / k when every image picks the same k experts.
  (HF transformers' Mixtral loss is k times this.)
- EIR, the mean pairwise cosine similarity between the N experts' outputs on the same token::

      L_EIR = 1 / (B N (N-1)) * sum_b sum_{n != m} cos(E_n(x_a^b), E_m(x_a^b))

  computed densely over all N experts (not only the chosen k), so no expert can hide from it.

Both are computed on ``x_a.detach()``: the gradient of ESB reaches only the router, that of EIR only the expert
MLPs; the adapters, CTDS and WCMA are trained by the paper's loss alone. Their weights are
``ModelConfig.moe_balance`` / ``moe_repulsion`` (``--moe-balance`` / ``--moe-repulsion``), 0 by default (the paper).

Utilization (:class:`ExpertUsage`): per-expert selection frequency ``f_n``, mean gate weight (the average
``w_k`` an expert receives in Eq. 8, 0 when not chosen; sums to 1 over experts), mean router probability, the
entropy of ``f`` (nats; evenness = H / ln N, 1 = all experts equally used) and the mean pairwise cosine
similarity of the experts' outputs (the EIR term, as a statistic).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..atomic import atomic_write_text
from wmoe.kernels import expert_outputs_dense_ref, moe_router_probs_ref

#: Per-epoch utilization written by ``wmoe train`` beside the checkpoint.
USAGE_FILE = "expert_usage.json"


@dataclass
class MoERouting:
    """Routing of a batch: ``probs`` (B, N) router softmax; ``weights``/``experts`` (B, k) the normalized top-k
    weights and their expert indices (Eq. 8); ``outputs`` (B, N, C) every expert's output ``E_n(x_a)``."""

    probs: Tensor
    weights: Tensor
    experts: Tensor
    outputs: Tensor


def moe_routing(samoe, x_a: Tensor, grad_router: bool = False, grad_experts: bool = False) -> MoERouting:
    """Route ``x_a`` (B, E) through ``samoe`` (a :class:`wmoe.model.samoe.SAMoE`) and run every expert on it.

    ``x_a`` is detached: with ``grad_router`` the probabilities carry a gradient to the router's weights only,
    with ``grad_experts`` the outputs to the expert MLPs only.
    """
    x = x_a.detach().float()
    with torch.set_grad_enabled(grad_router):
        probs = moe_router_probs_ref(x, samoe.router.weight, samoe.router.bias)
    with torch.set_grad_enabled(grad_experts):
        outputs = expert_outputs_dense_ref(x, samoe.w1.float(), samoe.b1.float(), samoe.w2.float(),
                                           samoe.b2.float()).transpose(0, 1)
    with torch.no_grad():
        weights, experts = samoe.route(x)  # the same top-k and tie-breaking as the forward pass
    return MoERouting(probs=probs, weights=weights, experts=experts, outputs=outputs)


def selection_frequency(experts: Tensor, n_experts: int) -> Tensor:
    """``f_n``: the share of the B*k routing slots that went to expert n (N,), sums to 1."""
    counts = torch.bincount(experts.reshape(-1), minlength=n_experts).float()
    return counts / max(experts.numel(), 1)


def balance_loss(probs: Tensor, experts: Tensor) -> Tensor:
    """ESB: ``N * sum_n f_n P_n`` (Switch Transformer's load balancing; module docstring)."""
    n = probs.shape[-1]
    return n * (selection_frequency(experts, n).to(probs) * probs.float().mean(0)).sum()


def expert_similarity(outputs: Tensor) -> Tensor:
    """Cosine similarity between the experts' outputs on each token: (B, N, C) -> (B, N, N)."""
    y = F.normalize(outputs.float(), dim=-1)
    return y @ y.transpose(1, 2)


def _off_diagonal_mean(sim: Tensor) -> Tensor:
    n = sim.shape[-1]
    if n < 2:
        return sim.new_zeros(sim.shape[:-2])
    off = sim.sum((-2, -1)) - sim.diagonal(dim1=-2, dim2=-1).sum(-1)
    return off / (n * (n - 1))


def repulsion_loss(outputs: Tensor) -> Tensor:
    """EIR: mean over tokens and ordered expert pairs n != m of ``cos(E_n(x_a), E_m(x_a))``."""
    return _off_diagonal_mean(expert_similarity(outputs)).mean()


class ExpertUsage:
    """Running utilization statistics over any number of batches (an epoch, a class, a data set)."""

    def __init__(self, n_experts: int, top_k: int) -> None:
        self.n_experts, self.top_k = n_experts, top_k
        self.n_images = 0
        self.counts = np.zeros(n_experts)
        self.gate = np.zeros(n_experts)
        self.prob = np.zeros(n_experts)
        self.sim = np.zeros((n_experts, n_experts))

    @torch.no_grad()
    def update(self, r: MoERouting) -> None:
        n = self.n_experts
        ex = r.experts.reshape(-1).cpu()
        self.n_images += int(r.experts.shape[0])
        self.counts += torch.bincount(ex, minlength=n).double().numpy()
        self.gate += torch.zeros(n, dtype=torch.float64).index_add_(0, ex, r.weights.reshape(-1).double().cpu()).numpy()
        self.prob += r.probs.double().sum(0).cpu().numpy()
        self.sim += expert_similarity(r.outputs).double().sum(0).cpu().numpy()

    def merge(self, other: "ExpertUsage") -> "ExpertUsage":
        self.n_images += other.n_images
        for k in ("counts", "gate", "prob", "sim"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        return self

    def all_reduce(self) -> None:
        """Sum the statistics over the processes of a torch.distributed group (every rank must call it)."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return
        flat = torch.tensor(np.concatenate([[self.n_images], self.counts, self.gate, self.prob, self.sim.ravel()]))
        if dist.get_backend() == "nccl":  # NCCL reduces only CUDA tensors (gloo takes CPU ones)
            flat = flat.cuda(torch.cuda.current_device())
        dist.all_reduce(flat)
        v = flat.cpu().numpy()
        n = self.n_experts
        self.n_images = int(round(v[0]))
        self.counts, self.gate, self.prob = v[1:1 + n], v[1 + n:1 + 2 * n], v[1 + 2 * n:1 + 3 * n]
        self.sim = v[1 + 3 * n:].reshape(n, n)

    def summary(self, matrix: bool = False) -> Dict[str, Any]:
        """The statistics as JSON-ready numbers (module docstring); ``matrix`` adds the N x N similarity."""
        n, k, m = self.n_experts, self.top_k, max(self.n_images, 1)
        f = self.counts / max(self.counts.sum(), 1)
        nz = f[f > 0]
        h = float(-(nz * np.log(nz)).sum())
        sim = self.sim / m
        out: Dict[str, Any] = {
            "n_images": self.n_images,
            "selection_frequency": [round(float(v), 6) for v in f],
            "mean_gate_weight": [round(float(v), 6) for v in self.gate / m],
            "mean_router_prob": [round(float(v), 6) for v in self.prob / m],
            "usage_entropy": round(h, 6),
            "usage_evenness": round(h / math.log(n), 6) if n > 1 else 1.0,
            "effective_experts": round(math.exp(h), 4),
            "output_similarity": round(float(_off_diagonal_mean(torch.from_numpy(sim))), 6),
            "unused_experts": [i for i in range(n) if self.counts[i] == 0],
            "top_k": k,
        }
        if matrix:
            out["output_similarity_matrix"] = [[round(float(v), 4) for v in row] for row in sim]
        return out

    def state(self) -> Dict[str, Any]:
        return {"n_experts": self.n_experts, "top_k": self.top_k, "n_images": self.n_images,
                "counts": self.counts.tolist(), "gate": self.gate.tolist(), "prob": self.prob.tolist(),
                "sim": self.sim.tolist()}

    @classmethod
    def from_state(cls, d: Dict[str, Any]) -> "ExpertUsage":
        u = cls(int(d["n_experts"]), int(d["top_k"]))
        u.n_images = int(d["n_images"])
        u.counts, u.gate, u.prob = (np.asarray(d[k], dtype=np.float64) for k in ("counts", "gate", "prob"))
        u.sim = np.asarray(d["sim"], dtype=np.float64)
        return u


def usage_line(s: Dict[str, Any]) -> str:
    """One log line: selection % per expert, evenness, entropy, output similarity."""
    sel = " ".join(f"{100 * v:4.1f}" for v in s["selection_frequency"])
    return (f"experts selected % [{sel}]  evenness {s['usage_evenness']:.3f} (H={s['usage_entropy']:.3f} nats, "
            f"{s['effective_experts']:.2f} effective)  output cos-sim {s['output_similarity']:+.3f}")


def usage_markdown(s: Dict[str, Any], per_class: Optional[Dict[str, Dict[str, Any]]] = None) -> str:
    """The evaluation report's section: one row per expert, then the summary numbers (and per class)."""
    lines = ["## SA-MoE expert utilization", "",
             f"{s['n_images']} images, top-{s['top_k']} routing. Usage entropy {s['usage_entropy']:.3f} nats "
             f"(evenness {s['usage_evenness']:.3f}, {s['effective_experts']:.2f} effective experts); mean "
             f"cosine similarity between experts' outputs {s['output_similarity']:+.3f}.", "",
             "| expert | selected (%) | mean gate weight | mean router prob |", "|---:|---:|---:|---:|"]
    for i, (f, g, p) in enumerate(zip(s["selection_frequency"], s["mean_gate_weight"], s["mean_router_prob"])):
        lines.append(f"| {i} | {100 * f:.1f} | {g:.3f} | {p:.3f} |")
    if per_class:
        lines += ["", "| class | evenness | effective experts | most selected |", "|---|---:|---:|---|"]
        for cls, c in per_class.items():
            order = np.argsort(c["selection_frequency"])[::-1][:c["top_k"]]
            top = ", ".join(f"{int(i)} ({100 * c['selection_frequency'][i]:.0f}%)" for i in order)
            lines.append(f"| {cls} | {c['usage_evenness']:.3f} | {c['effective_experts']:.2f} | {top} |")
    return "\n".join(lines) + "\n"


class TrainingHealth:
    """What the training loop needs: the regularizer terms per step and the utilization per epoch."""

    def __init__(self, samoe, balance: float = 0.0, repulsion: float = 0.0) -> None:
        self.samoe = samoe
        self.balance, self.repulsion = float(balance), float(repulsion)
        self.epochs: List[Dict[str, Any]] = []
        self.usage = ExpertUsage(samoe.w1.shape[0], samoe.top_k) if samoe is not None else None

    def regularizers(self, x_a: Optional[Tensor]) -> Dict[str, Tuple[float, Tensor]]:
        """``{"esb": (weight, L_ESB), "eir": (weight, L_EIR)}`` for the batch (terms are logged even at weight 0)."""
        if self.samoe is None or x_a is None:
            return {}
        r = moe_routing(self.samoe, x_a, grad_router=self.balance > 0, grad_experts=self.repulsion > 0)
        self.usage.update(r)
        return {"esb": (self.balance, balance_loss(r.probs, r.experts)),
                "eir": (self.repulsion, repulsion_loss(r.outputs))}

    def end_epoch(self, epoch: int, step: int) -> Optional[Dict[str, Any]]:
        """Close an epoch (all ranks call it): its record, appended to :attr:`epochs`; None without SA-MoE."""
        if self.usage is None:
            return None
        self.usage.all_reduce()
        rec = {"epoch": epoch, "step": step, **self.usage.summary()}
        self.epochs.append(rec)
        self.usage = ExpertUsage(self.usage.n_experts, self.usage.top_k)
        return rec

    def state(self) -> Dict[str, Any]:
        """The per-epoch records and the open epoch's running sums (saved with the optimizer state for resume)."""
        return {"epochs": self.epochs, "current": self.usage.state() if self.usage is not None else None}

    def load_state(self, d: Optional[Dict[str, Any]]) -> None:
        if not d:
            return
        self.epochs = list(d.get("epochs", []))
        if d.get("current") and self.usage is not None:
            self.usage = ExpertUsage.from_state(d["current"])

    def write(self, path: Path) -> None:
        doc = {"moe_balance": self.balance, "moe_repulsion": self.repulsion, "epochs": self.epochs}
        if self.usage is not None and self.usage.n_images:
            doc["current_epoch_so_far"] = self.usage.summary()
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
