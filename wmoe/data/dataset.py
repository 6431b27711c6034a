"""The evaluation/training data set over a meta.json index, and a collate that counts skipped files.

Skipping is designed for DataLoader workers: a worker cannot append to a list the main process sees, so an
unreadable sample travels *as data* — ``__getitem__`` returns a small marker dict — and :func:`collate` (which
runs in the worker too, but whose output is shipped back) separates the good samples from the ``(path, reason)``
pairs. The main process adds those pairs up, e.g. in a :class:`SkippedFiles`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..atomic import atomic_write_text
from .images import CLIP_MEAN, CLIP_STD, DataError, load_image, load_mask, preprocess, resize_mask
from .meta import SPLITS, Meta, read_meta, validate_meta

PathLike = Union[str, "os.PathLike[str]"]
Skip = Tuple[str, str]

SKIPPED = "skipped"  # key marking a skipped item


@dataclass(frozen=True)
class Sample:
    """One meta.json entry, with paths already joined to the data root."""

    img_path: str
    mask_path: str  # "" when there is no mask
    cls_name: str
    specie_name: str
    anomaly: int


def is_skipped(item: Optional[Mapping[str, Any]]) -> bool:
    """True for the marker :meth:`AnomalyDataset.__getitem__` returns in place of an unreadable sample."""
    return item is None or bool(item.get(SKIPPED, False))


class AnomalyDataset(Dataset):
    """Images, masks and labels of one split of a meta.json-indexed data set.

    Item (a dict): ``image`` float32 3xSxS (squash-resized with the contract's bilinear-box, CLIP-normalized), ``mask`` float32 1xSxS in
    {0, 1}, ``label`` int (0 normal / 1 anomalous), ``has_mask`` bool (False for normal images and for anomalous
    images of sets without pixel labels; their mask is all zeros), ``cls_name``, ``specie_name``, ``img_path``
    (absolute str), ``orig_size`` (H, W) and ``index``.

    ``on_error="skip"``: an unreadable image or mask (missing, empty, truncated, not an image, mask size differs
    from the image) yields ``{"skipped": True, "img_path", "reason", "index"}`` instead; use :func:`collate`.
    ``on_error="raise"``: the DataError propagates. ``mask_threshold``: see :func:`load_mask` (default 0: ``> 0``).
    """

    def __init__(
        self,
        root: PathLike,
        meta: Union[None, PathLike, Mapping[str, Any]] = None,
        split: str = "test",
        classes: Optional[Sequence[str]] = None,
        image_size: int = 518,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        on_error: str = "skip",
        mask_threshold: int = 0,
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data root not found: {self.root}")
        if meta is None or isinstance(meta, (str, os.PathLike)):
            meta_path = Path(meta) if meta is not None else self.root / "meta.json"
            source = str(meta_path)
            meta_dict: Meta = read_meta(meta_path)
        else:
            source = "meta dict"
            meta_dict = validate_meta(dict(meta), source)
        if split not in meta_dict:
            raise DataError(f"{source}: has no '{split}' split (splits: {sorted(meta_dict)})")
        by_class = meta_dict[split]
        available = sorted(by_class)
        if classes is not None:
            unknown = [c for c in classes if c not in by_class]
            if unknown:
                raise DataError(f"{source}: classes {unknown} not in split '{split}' (available: {available})")
            chosen = list(classes)
        else:
            chosen = available
        self.split = split
        self.image_size = int(image_size)
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)
        self.on_error = on_error
        self.mask_threshold = int(mask_threshold)
        self.samples: List[Sample] = []
        for cls in chosen:
            for e in by_class[cls]:
                mask_rel = str(e.get("mask_path") or "")
                self.samples.append(
                    Sample(
                        img_path=os.path.abspath(self.root / str(e["img_path"])),
                        mask_path=os.path.abspath(self.root / mask_rel) if mask_rel else "",
                        cls_name=str(e.get("cls_name") or cls),
                        specie_name=str(e.get("specie_name") or ("good" if not e["anomaly"] else "anomaly")),
                        anomaly=int(e["anomaly"]),
                    )
                )
        if not self.samples:
            raise DataError(f"{source}: split '{split}' has no samples for classes {chosen}")

    # ------------------------------------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.samples)

    @property
    def classes(self) -> List[str]:
        """Class names in sample order (first appearance)."""
        return list(dict.fromkeys(s.cls_name for s in self.samples))

    @property
    def labels(self) -> List[int]:
        return [s.anomaly for s in self.samples]

    def load(self, index: int) -> Dict[str, Any]:
        """The item at ``index``; raises DataError on an unreadable file whatever ``on_error`` says."""
        s = self.samples[index]
        image = load_image(s.img_path)
        h, w = image.shape[:2]
        if s.mask_path:
            mask = load_mask(s.mask_path, self.mask_threshold)
            if mask.shape != (h, w):
                raise DataError(
                    f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image size {w}x{h}: "
                    f"mask {s.mask_path} for image {s.img_path}"
                )
            has_mask = True
        else:
            mask = np.zeros((h, w), dtype=bool)
            has_mask = False
        return {
            "image": preprocess(image, self.image_size, self.mean, self.std),  # type: ignore[arg-type]
            "mask": resize_mask(mask, self.image_size),
            "label": s.anomaly,
            "has_mask": has_mask,
            "cls_name": s.cls_name,
            "specie_name": s.specie_name,
            "img_path": s.img_path,
            "orig_size": (h, w),
            "index": index,
        }

    def __getitem__(self, index: int) -> Dict[str, Any]:
        try:
            return self.load(index)
        except DataError as e:
            if self.on_error == "raise":
                raise
            return {SKIPPED: True, "img_path": self.samples[index].img_path, "reason": str(e), "index": index}


# -------------------------------------------------------------------------------------------------- collate
def collate(batch: Sequence[Optional[Mapping[str, Any]]]) -> Tuple[Optional[Dict[str, Any]], List[Skip]]:
    """Stack the good items of ``batch``; return ``(batch_dict or None, [(img_path, reason), ...])``.

    ``batch_dict``: ``image`` Bx3xSxS, ``mask`` Bx1xSxS, ``label`` long B, ``has_mask`` bool B, ``orig_size``
    long Bx2 (H, W), ``index`` long B, and lists ``cls_name``, ``specie_name``, ``img_path``. It is None when every
    item of the batch was skipped.
    """
    good: List[Mapping[str, Any]] = []
    skipped: List[Skip] = []
    for item in batch:
        if item is None:
            skipped.append(("<unknown>", "dataset returned None"))
        elif item.get(SKIPPED, False):
            skipped.append((str(item["img_path"]), str(item["reason"])))
        else:
            good.append(item)
    if not good:
        return None, skipped
    out: Dict[str, Any] = {
        "image": torch.stack([g["image"] for g in good]),
        "mask": torch.stack([g["mask"] for g in good]),
        "label": torch.tensor([int(g["label"]) for g in good], dtype=torch.long),
        "has_mask": torch.tensor([bool(g["has_mask"]) for g in good], dtype=torch.bool),
        "orig_size": torch.tensor([list(g["orig_size"]) for g in good], dtype=torch.long),
        "index": torch.tensor([int(g["index"]) for g in good], dtype=torch.long),
        "cls_name": [g["cls_name"] for g in good],
        "specie_name": [g["specie_name"] for g in good],
        "img_path": [g["img_path"] for g in good],
    }
    return out, skipped


class SkippedFiles:
    """Main-process tally of skipped files, fed with the second element of each :func:`collate` result."""

    def __init__(self) -> None:
        self.items: List[Skip] = []

    def add(self, skipped: Iterable[Skip]) -> None:
        self.items.extend((str(p), str(r)) for p, r in skipped)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.items)

    def summary(self, limit: int = 10) -> str:
        """One line with the count, then up to ``limit`` ``path: reason`` lines."""
        if not self.items:
            return "skipped 0 files"
        lines = [f"skipped {len(self.items)} file(s):"]
        lines += [f"  {r}" for _, r in self.items[:limit]]
        if len(self.items) > limit:
            lines.append(f"  ... and {len(self.items) - limit} more")
        return "\n".join(lines)

    def write(self, path: PathLike) -> Path:
        """Write ``[{"img_path", "reason"}, ...]`` atomically as JSON (for an evaluation's output folder)."""
        data = [{"img_path": p, "reason": r} for p, r in self.items]
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
        return Path(path)
