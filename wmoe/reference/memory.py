"""The few-shot memory of the normal-reference mode: patch features of good images, their greedy coreset and the
nearest-neighbour distance (PatchCore-style; the design is ours, docs/paper_mapping.md "Normal-reference mode").

- :func:`local_features` — the per-patch feature the memory holds: the backbone's patch embedding (``conv1``), averaged
  over a ``neighbourhood x neighbourhood`` window (PatchCore's local aggregation, so a feature sees its surroundings).
- :func:`greedy_coreset` — greedy k-center selection (Sener & Savarese 2018; PatchCore Alg. 1): each step adds the
  point farthest from the rows chosen so far, so the kept rows cover the memory with the smallest radius.
- :func:`nn_distance` — ``min_j ||q - b_j||`` over the memory, in the matmul form ``|q|^2 - 2 q.b + |b|^2``, which
  exports to ONNX as MatMul + ReduceMin (no data-dependent shapes) and runs the same in PyTorch and ONNX Runtime.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def local_features(embedding: Tensor, neighbourhood: int) -> Tensor:
    """``(B, G, G, D)`` patch features -> the same shape, each averaged over its ``n x n`` window (zero padded at the
    border, ``count_include_pad=False`` so border patches are a plain mean of what exists)."""
    if neighbourhood <= 1:
        return embedding
    x = embedding.permute(0, 3, 1, 2)
    x = F.avg_pool2d(x, neighbourhood, stride=1, padding=neighbourhood // 2, count_include_pad=False)
    return x.permute(0, 2, 3, 1)


def squared_distances(queries: Tensor, bank: Tensor, bank_sq: Optional[Tensor] = None) -> Tensor:
    """``||q_i - b_j||^2`` for ``queries`` (..., Q, D) and ``bank`` (M, D) -> (..., Q, M), clamped at 0."""
    if bank_sq is None:
        bank_sq = (bank * bank).sum(-1)
    q_sq = (queries * queries).sum(-1, keepdim=True)
    return (q_sq - 2.0 * (queries @ bank.transpose(0, 1)) + bank_sq).clamp_min(0.0)


def nn_distance(queries: Tensor, bank: Tensor, bank_sq: Optional[Tensor] = None, chunk: int = 4096) -> Tensor:
    """Distance of each query (..., Q, D) to its nearest memory row -> (..., Q).

    In eager mode the bank is visited in chunks of ``chunk`` rows (bounded memory for large banks); under export
    (tracing) it is one MatMul + ReduceMin.
    """
    if bank_sq is None:
        bank_sq = (bank * bank).sum(-1)
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or bank.shape[0] <= chunk:
        return squared_distances(queries, bank, bank_sq).amin(-1).sqrt()
    best = None
    for s in range(0, bank.shape[0], chunk):
        d = squared_distances(queries, bank[s:s + chunk], bank_sq[s:s + chunk]).amin(-1)
        best = d if best is None else torch.minimum(best, d)
    return best.sqrt()


def greedy_coreset(features: Tensor, n: int, seed: int = 0, projection_dim: Optional[int] = 128) -> Tensor:
    """Indices (n,) of a greedy k-center coreset of ``features`` (M, D), in selection order.

    Distances are taken after a fixed random projection to ``projection_dim`` (PatchCore's speed-up; Johnson-
    Lindenstrauss keeps them within a small factor) when ``D`` is larger. Deterministic for a given ``seed``: the
    first row is drawn from it, ties go to the lowest index.
    """
    m = features.shape[0]
    if n >= m:
        return torch.arange(m)
    if n <= 0:
        raise ValueError(f"coreset size must be positive, got {n}")
    x = features.float()
    g = torch.Generator().manual_seed(seed)
    if projection_dim is not None and x.shape[1] > projection_dim:
        proj = torch.randn(x.shape[1], projection_dim, generator=g) / projection_dim ** 0.5
        x = x @ proj
    first = int(torch.randint(m, (1,), generator=g))
    chosen = torch.empty(n, dtype=torch.long)
    chosen[0] = first
    x_sq = (x * x).sum(-1)
    # matrix-vector form with in-place updates: ~10x faster than forming (x - c)^2 at each of the n steps
    mind = x_sq - 2.0 * (x @ x[first]) + x_sq[first]
    for i in range(1, n):
        nxt = int(torch.argmax(mind))
        chosen[i] = nxt
        torch.minimum(mind, x_sq - 2.0 * (x @ x[nxt]) + x_sq[nxt], out=mind)
    return chosen
