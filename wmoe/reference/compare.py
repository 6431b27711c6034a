"""Zero-shot, reference-only and fused scores of one category's test split, side by side (the demo report's section
and ``python -m wmoe.bench.reference``).

The model's outputs and each reference's distance map are computed once per image, then fused for every weight
(:func:`wmoe.reference.fusion.fuse`; w = 0 ranks as zero-shot, w = 1 is the reference alone). Metrics are those of
``wmoe eval`` (σ = 4 smoothing; image and pixel AUROC).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import numpy as np
import torch

from ..data import AnomalyDataset, collate, read_meta
from ..evaluation.metrics import evaluate_class, smooth_maps
from ..model.wmoe_clip import WMoECLIP
from .fusion import FusionStats, fuse
from .model import ReferenceModel
from .store import ClassReference, ReferenceConfig


@torch.no_grad()
def score_test_split(model: WMoECLIP, root: Path, cls: str, refs: Mapping[str, ClassReference],
                     cfg: ReferenceConfig, weights: Sequence[float], batch_size: int = 10, sigma: float = 4.0,
                     experts_weights: Sequence[float] = ()) -> Dict[str, Dict[float, Dict[str, float]]]:
    """``{ref key: {w: {"image_auroc", "pixel_auroc"}}}`` on the test split of ``cls`` in data root ``root``.

    Each reference is scored as its config says (with its experts when it has them); for a reference with experts,
    every ``v`` of ``experts_weights`` is scored too, under the key ``"<key> v=<v>"`` (v = 0: the memory alone)."""
    ds = AnomalyDataset(root, read_meta(root / "meta.json"), split="test", classes=[cls], image_size=model.image_size)
    rms = {key: ReferenceModel(model, ref, cfg).eval() for key, ref in refs.items()}
    for key, ref in refs.items():
        if ref.experts is not None:
            rms.update({f"{key} v={float(v)}": ReferenceModel(model, ref, cfg, experts_weight=float(v)).eval()
                        for v in experts_weights})
    labels, masks, zs_maps, txt = [], [], [], []
    dmaps: Dict[str, List[torch.Tensor]] = {k: [] for k in rms}
    stats: Dict[str, FusionStats] = {}
    for s in range(0, len(ds), batch_size):
        batch, _ = collate([ds[i] for i in range(s, min(len(ds), s + batch_size))])
        if batch is None:
            continue
        x = batch["image"]
        out = model(x)
        zs_maps.append(out.maps.float())
        txt.append(out.text_scores.float())
        for key, rm in rms.items():
            r, stats[key] = rm.reference_map(x)
            dmaps[key].append(r)
        labels.append(batch["label"].numpy())
        masks.append(batch["mask"][:, 0].numpy() > 0.5)
    lab, msk = np.concatenate(labels), np.concatenate(masks)
    m, t = torch.cat(zs_maps), torch.cat(txt)
    res: Dict[str, Dict[float, Dict[str, float]]] = {}
    for key in rms:
        d = torch.cat(dmaps[key])
        res[key] = {}
        for w in weights:
            scores, fused = fuse(m, t, d, stats[key], float(w))
            r = evaluate_class(lab, scores.numpy(), msk, smooth_maps(fused.numpy().astype(np.float32), sigma),
                               pro=False)
            res[key][float(w)] = {"image_auroc": float(r["image_auroc"]), "pixel_auroc": float(r["pixel_auroc"])}
    return res
