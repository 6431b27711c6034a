"""A normal reference on disk: ``reference.json`` (manifest) + one safetensors file per product. No pickle.

Layout of ``ref/``::

    reference.json                       format, settings, the checkpoint it was fitted with, per product: its good
                                         images, memory size, fusion statistics, file name and SHA-256
    class-000.<sha12>.safetensors        per product: ``bank`` (M, D) float32, ``source`` (M, 3) int32 (image index,
                                         row, column of each kept patch) and, when trained, the experts' weights

Writing never loses a working reference: product files carry their content hash in the name (a new file never
overwrites one the current manifest names), the manifest is replaced atomically last, then files no manifest names
are removed. A reader verifies each file's SHA-256 against the manifest.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import Tensor

from ..atomic import atomic_path, atomic_write_text
from ..contract import sha256_file
from .fusion import DEFAULT_EXPERTS_WEIGHT, DEFAULT_FUSION_WEIGHT, FusionStats, ReferenceError, check_weight

REFERENCE_FILE = "reference.json"
FORMAT = "wmoe-normal-reference/1"


@dataclass
class ReferenceConfig:
    """How a reference is built. ``neighbourhood``: side of the local averaging window of patch features (odd);
    ``max_memory``: memory rows kept per product (a greedy coreset above it; bounds latency and size);
    ``fusion_weight``: ``w`` of :mod:`wmoe.reference.fusion` (the measured default); ``experts``: also train the
    three-level reconstruction experts (:mod:`wmoe.reference.experts`); ``experts_weight``: ``v``, their share of the
    reference map (R4 of :mod:`wmoe.reference.fusion`)."""

    neighbourhood: int = 3
    max_memory: int = 4096
    coreset_seed: int = 0
    fusion_weight: float = DEFAULT_FUSION_WEIGHT
    feature: str = "patch_embedding"
    experts: bool = False
    experts_weight: float = DEFAULT_EXPERTS_WEIGHT

    def __post_init__(self) -> None:
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ReferenceError(f"neighbourhood must be an odd number >= 1, got {self.neighbourhood}")
        if self.max_memory < 1:
            raise ReferenceError(f"max_memory must be >= 1, got {self.max_memory}")
        if self.feature != "patch_embedding":
            raise ReferenceError(f"unknown reference feature {self.feature!r} (this wmoe has 'patch_embedding')")
        self.fusion_weight = check_weight(self.fusion_weight)
        self.experts = bool(self.experts)
        self.experts_weight = check_weight(self.experts_weight, "experts weight")


@dataclass
class ClassReference:
    """One product's reference: its memory, where each row came from, its good images and fusion statistics."""

    name: str
    bank: Tensor
    source: Tensor
    images: List[str]
    stats: FusionStats
    n_patches: int
    extra: Dict[str, Any] = field(default_factory=dict)
    #: the trained three-level experts (:class:`wmoe.reference.experts.LevelExperts`), their record in ``extra``
    experts: Optional[Any] = None

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def memory_bytes(self) -> int:
        return int(self.bank.numel() * self.bank.element_size())

    def summary(self) -> Dict[str, Any]:
        return {"class": self.name, "k": self.n_images, "memory_rows": int(self.bank.shape[0]),
                "feature_dim": int(self.bank.shape[1]), "memory_bytes": self.memory_bytes,
                "patches_before_coreset": self.n_patches, "stats": self.stats.to_dict(), **self.extra}


@dataclass
class NormalReference:
    """All products of a reference folder, the settings they were built with and the checkpoint they belong to."""

    config: ReferenceConfig
    classes: Dict[str, ClassReference]
    checkpoint_sha256: str = ""
    model_config: str = ""

    def get(self, name: Optional[str] = None) -> ClassReference:
        """The product ``name``; without a name, the only product (an error names the choices when there are more)."""
        if name is None:
            if len(self.classes) != 1:
                raise ReferenceError(f"the reference holds {len(self.classes)} products ({', '.join(self.classes)}): "
                                     f"name one")
            return next(iter(self.classes.values()))
        if name not in self.classes:
            raise ReferenceError(f"product {name!r} is not in the reference (it has: {', '.join(self.classes)}); "
                                 f"fit it with wmoe fit-normal")
        return self.classes[name]

    # ------------------------------------------------------------------------------------------------- write
    def save(self, out: Union[str, Path]) -> Path:
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        entries = []
        for i, (name, ref) in enumerate(self.classes.items()):
            tensors = {"bank": ref.bank.detach().float().contiguous().cpu(),
                       "source": ref.source.to(torch.int32).contiguous().cpu()}
            if ref.experts is not None:
                tensors.update(ref.experts.tensors())
            tmp_name = f"class-{i:03d}.safetensors"
            with atomic_path(out / tmp_name) as tmp:
                save_file(tensors, str(tmp), metadata={"format": FORMAT, "class": name})
            digest = sha256_file(out / tmp_name)
            final = out / f"class-{i:03d}.{digest[:12]}.safetensors"
            (out / tmp_name).replace(final)  # same content: a reader of the old manifest sees its own file or this
            entries.append({**ref.summary(), "file": final.name, "sha256": digest, "images": ref.images})
        manifest = {"format": FORMAT, "config": dataclasses.asdict(self.config),
                    "checkpoint_sha256": self.checkpoint_sha256, "model_config": self.model_config,
                    "classes": entries}
        atomic_write_text(out / REFERENCE_FILE, json.dumps(manifest, indent=2) + "\n")
        keep = {e["file"] for e in entries}
        for p in out.glob("class-*.safetensors"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
        return out / REFERENCE_FILE

    # -------------------------------------------------------------------------------------------------- read
    @classmethod
    def load(cls, folder: Union[str, Path], checkpoint: Optional[Union[str, Path]] = None) -> "NormalReference":
        """Read ``folder`` (or its ``reference.json``). With ``checkpoint``, a reference fitted with another
        checkpoint is refused (its statistics belong to that model's zero-shot maps)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        path = folder if folder.is_file() else folder / REFERENCE_FILE
        folder = path.parent
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ReferenceError(f"{path}: no normal reference here (build one with wmoe fit-normal)") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ReferenceError(f"{path}: cannot read the reference manifest ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ReferenceError(f"{path}: not a {FORMAT} manifest (format {doc.get('format') if isinstance(doc, dict) else None!r})")
        try:
            config = ReferenceConfig(**doc["config"])
            classes: Dict[str, ClassReference] = {}
            for e in doc["classes"]:
                f = folder / e["file"]
                if not f.is_file():
                    raise ReferenceError(f"{f}: missing (named by {path})")
                if sha256_file(f) != e["sha256"]:
                    raise ReferenceError(f"{f}: content does not match its SHA-256 in {path} (damaged or replaced)")
                try:
                    t = load_file(str(f))
                except (SafetensorError, OSError) as err:
                    raise ReferenceError(f"{f}: not a readable safetensors file ({err})") from None
                bank, source = t["bank"].float(), t["source"]
                if bank.dim() != 2 or not torch.isfinite(bank).all() or source.shape != (bank.shape[0], 3):
                    raise ReferenceError(f"{f}: damaged memory (bank {tuple(bank.shape)}, source {tuple(source.shape)})")
                extra = {k: e[k] for k in ("experts",) if k in e}
                experts = None
                if "experts" in e:
                    from .experts import LevelExperts
                    experts = LevelExperts.from_tensors(e["experts"], t, str(f), str(path))
                    if experts.dim != bank.shape[1]:
                        raise ReferenceError(f"{f}: experts of {experts.dim}-d features beside a "
                                             f"{bank.shape[1]}-d memory")
                classes[e["class"]] = ClassReference(e["class"], bank, source, list(e["images"]),
                                                     FusionStats.from_dict(e["stats"]),
                                                     int(e["patches_before_coreset"]), extra, experts)
        except ReferenceError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise ReferenceError(f"{path}: damaged reference manifest ({type(err).__name__}: {err})") from None
        ref = cls(config, classes, doc.get("checkpoint_sha256", ""), doc.get("model_config", ""))
        if checkpoint is not None and ref.checkpoint_sha256:
            actual = sha256_file(checkpoint)
            if actual != ref.checkpoint_sha256:
                raise ReferenceError(f"{path}: fitted with another checkpoint (SHA-256 {ref.checkpoint_sha256[:12]}..., "
                                     f"{checkpoint} is {actual[:12]}...): re-run wmoe fit-normal with it")
        return ref

    def summary(self, name: str) -> Dict[str, Any]:
        """What travels in an exported model's metadata about the product ``name``."""
        c = self.get(name)
        return {"format": FORMAT, **c.summary(), "fusion_weight": self.config.fusion_weight,
                "neighbourhood": self.config.neighbourhood, "feature": self.config.feature}

