"""``wmoe fit-normal``: build a normal reference from good images of each product (ours; docs/paper_mapping.md).

Per product, from its good images (the first ``k`` in name order, or all):

1. memory: the local patch features of every image (:func:`wmoe.reference.memory.local_features`), greedy-coreset
   subsampled to ``max_memory`` rows when there are more;
2. fusion statistics (:class:`wmoe.reference.fusion.FusionStats`): mean and spread over all pixels of the good images
   of the zero-shot map, and of the reference map of each good image measured *without its own rows* (leave one
   image out; with a single image, without the rows of its own neighbourhood), so they describe an unseen good part;
3. with ``ReferenceConfig.experts`` (``--experts``): the three-level reconstruction experts trained on the good images'
   patch embeddings (:func:`wmoe.reference.experts.fit_experts`) and the correlation of their map with the memory
   map on the good images (what R4 of :mod:`wmoe.reference.fusion` needs).

Where the good images come from (:func:`find_good_images`): a data root with ``meta.json`` (each class's good images of
the ``train`` split), a folder of images (one product, named after the folder), or a folder of product folders (each
either holding images or in the MVTec layout ``<class>/train/good``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..contract import is_image_name, sha256_file
from ..model.wmoe_clip import WMoECLIP
from .experts import ExpertsConfig, fit_experts
from .fusion import FusionStats, ReferenceError
from .memory import greedy_coreset, local_features, squared_distances
from .store import ClassReference, NormalReference, ReferenceConfig


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p.name))


def find_good_images(good_dir: Union[str, Path], classes: Optional[Sequence[str]] = None,
                     k: Optional[int] = None) -> Dict[str, List[Path]]:
    """``{product: [good image paths]}`` (sorted by name, the first ``k`` when given) from ``good_dir``."""
    root = Path(good_dir)
    if not root.is_dir():
        raise ReferenceError(f"{root}: not a folder of good images")
    found: Dict[str, List[Path]] = {}
    if (root / "meta.json").is_file():
        from ..data import read_meta
        meta = read_meta(root / "meta.json")
        for cls, items in sorted(meta.get("train", {}).items()):
            found[cls] = sorted(root / it["img_path"] for it in items if not int(it.get("anomaly", 0)))
    elif _images_in(root):
        found[root.name] = _images_in(root)
    else:
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            src = d / "train" / "good" if (d / "train" / "good").is_dir() else d
            imgs = _images_in(src)
            if imgs:
                found[d.name] = imgs
    if classes:
        missing = [c for c in classes if c not in found]
        if missing:
            raise ReferenceError(f"{root}: no good images of {', '.join(missing)} (found: {', '.join(found) or 'none'})")
        found = {c: found[c] for c in classes}
    found = {c: v for c, v in found.items() if v}
    if not found:
        raise ReferenceError(f"{root}: no good images found (a folder of images, a folder of product folders, or a "
                             f"data root with meta.json)")
    if k is not None:
        short = {c: len(v) for c, v in found.items() if len(v) < k}
        if short:
            raise ReferenceError(f"{root}: fewer than k={k} good images for {short}")
        found = {c: v[:k] for c, v in found.items()}
    return found


def _load_batch(paths: Sequence[Path], size: int) -> torch.Tensor:
    from ..data.images import load_image, preprocess
    return torch.stack([preprocess(load_image(p), size) for p in paths])


@torch.no_grad()
def _features(model: WMoECLIP, paths: Sequence[Path], cfg: ReferenceConfig, batch_size: int, device: str
              ) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]":
    """Patch embeddings and their local averages (N, G, G, D), zero-shot maps (N, S, S) and s_txt (N,) of the good
    images."""
    embs, maps, txt = [], [], []
    for s in range(0, len(paths), batch_size):
        x = _load_batch(paths[s:s + batch_size], model.image_size).to(device)
        embs.append(model.backbone.patch_embedding(x).float().cpu())
        out = model(x)
        maps.append(out.maps.float().cpu())
        txt.append(out.text_scores.float().cpu())
    emb = torch.cat(embs)
    return emb, local_features(emb, cfg.neighbourhood), torch.cat(maps), torch.cat(txt)


def _held_out_distances(feats: torch.Tensor, bank: torch.Tensor, source: torch.Tensor, radius: int) -> torch.Tensor:
    """Per good image, each patch's distance to the memory without that image's rows (N, G, G); with one image,
    without the rows within ``radius`` patches of the query (its own neighbourhood-averaged copies)."""
    n, g = feats.shape[0], feats.shape[1]
    bank_sq = (bank * bank).sum(-1)
    ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    out = torch.empty(n, g, g)
    for i in range(n):
        d2 = squared_distances(feats[i].reshape(g * g, -1), bank, bank_sq)  # (G*G, M)
        own = source[:, 0] == i
        if n > 1:
            d2[:, own] = float("inf")
        else:
            near = ((ys.reshape(-1, 1) - source[:, 1].reshape(1, -1)).abs() <= radius) & \
                   ((xs.reshape(-1, 1) - source[:, 2].reshape(1, -1)).abs() <= radius) & own.reshape(1, -1)
            d2 = d2.masked_fill(near, float("inf"))
        out[i] = d2.amin(-1).sqrt().reshape(g, g)
    return out


def fit_class(model: WMoECLIP, name: str, paths: Sequence[Path], cfg: ReferenceConfig, batch_size: int = 8,
              device: str = "cpu", experts_cfg: Optional[ExpertsConfig] = None) -> ClassReference:
    """One product's :class:`ClassReference` from its good images ``paths`` (with ``cfg.experts``, also its
    three-level experts, trained with ``experts_cfg`` or the defaults)."""
    if not paths:
        raise ReferenceError(f"product {name!r}: no good images")
    emb, feats, zs_maps, _ = _features(model, paths, cfg, batch_size, device)
    n, g, _, d = feats.shape
    rows = feats.reshape(-1, d)
    ii, yy, xx = torch.meshgrid(torch.arange(n), torch.arange(g), torch.arange(g), indexing="ij")
    source = torch.stack([ii.reshape(-1), yy.reshape(-1), xx.reshape(-1)], 1).to(torch.int32)
    keep = greedy_coreset(rows, cfg.max_memory, seed=cfg.coreset_seed) if rows.shape[0] > cfg.max_memory else None
    bank, src = (rows, source) if keep is None else (rows[keep], source[keep])
    held = _held_out_distances(feats, bank, src.long(), radius=cfg.neighbourhood)
    S = model.image_size
    ref_maps = F.interpolate(held[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    stats = FusionStats(zs_mean=float(zs_maps.mean()), zs_std=float(zs_maps.std()),
                        ref_mean=float(ref_maps.mean()), ref_std=float(ref_maps.std()))
    extra, module = {}, None
    if cfg.experts:
        module, info, z_e = fit_experts(emb, experts_cfg, upsample=S)
        # R4: the correlation of the good images' held-out z_D and z_E over their pixels
        z_d = (ref_maps - stats.ref_mean) / stats.ref_std
        rho = float(torch.corrcoef(torch.stack([z_d.flatten(), z_e.flatten()]))[0, 1])
        info["memory_correlation"] = rho if math.isfinite(rho) else 0.0
        extra["experts"] = info
    return ClassReference(name, bank.contiguous(), src.contiguous(), [str(p) for p in paths], stats,
                          n_patches=int(rows.shape[0]), extra=extra, experts=module)


def fit_normal(model_or_ckpt: Union[WMoECLIP, str, Path], good_dir: Union[str, Path], out: Optional[Union[str, Path]],
               cfg: Optional[ReferenceConfig] = None, classes: Optional[Sequence[str]] = None,
               k: Optional[int] = None, batch_size: int = 8, device: Optional[str] = None,
               pretrained: Optional[str] = None, progress: bool = True,
               experts_cfg: Optional[ExpertsConfig] = None) -> NormalReference:
    """Fit every product found in ``good_dir`` and write the reference to ``out`` (when given)."""
    cfg = cfg or ReferenceConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt_sha = ""
    if isinstance(model_or_ckpt, WMoECLIP):
        model = model_or_ckpt
    else:
        from ..model.checkpoint import load_model
        model = load_model(model_or_ckpt, pretrained=pretrained)
        ckpt_sha = sha256_file(model_or_ckpt)
    model = model.to(device).eval()
    found = find_good_images(good_dir, classes, k)
    if out is not None:
        from ..atomic import ensure_output_dir
        ensure_output_dir(out)  # before the work
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(len(v) for v in found.values()), desc="fit-normal", unit="img", dynamic_ncols=True)
    fitted: Dict[str, ClassReference] = {}
    for name, paths in found.items():
        if bar is not None:
            bar.set_postfix_str(name)
        fitted[name] = fit_class(model, name, paths, cfg, batch_size, device, experts_cfg)
        if bar is not None:
            bar.update(len(paths))
    if bar is not None:
        bar.close()
    ref = NormalReference(cfg, fitted, ckpt_sha, model.cfg.to_json())
    if out is not None:
        ref.save(out)
    return ref


def memory_table(ref: NormalReference) -> str:
    """A markdown table of the products of ``ref``: k, memory rows and bytes, fusion statistics."""
    lines = ["| product | k | memory rows | memory KiB | zero-shot map mean/std | reference map mean/std |",
             "|---|---:|---:|---:|---|---|"]
    for c in ref.classes.values():
        s = c.stats
        lines.append(f"| {c.name} | {c.n_images} | {c.bank.shape[0]} | {c.memory_bytes / 1024:.0f} | "
                     f"{s.zs_mean:.4f} / {s.zs_std:.4f} | {s.ref_mean:.4f} / {s.ref_std:.4f} |")
    with_experts = [c for c in ref.classes.values() if "experts" in c.extra]
    if with_experts:
        lines += ["", "| product | experts: reconstruction error patch / component / global, before -> after training "
                  "| router top-1 share patch / component / global | ESB | EIR |", "|---|---|---|---:|---:|"]
        for c in with_experts:
            e = c.extra["experts"]
            b, a = e["loss_before"], e["loss_after"]
            rec = " / ".join(f"{b['rec_' + lvl]:.3f} -> {a['rec_' + lvl]:.3f}" for lvl in e["levels"])
            share = " / ".join(f"{e['router_top1_share'][lvl]:.2f}" for lvl in e["levels"])
            lines.append(f"| {c.name} | {rec} | {share} | {a['esb']:.3f} | {a['eir']:.3f} |")
    return "\n".join(lines)


__all__ = ["find_good_images", "fit_class", "fit_normal", "memory_table"]
