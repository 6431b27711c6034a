"""``ReferenceModel``: WMoE-CLIP with one product's normal reference — the same inputs and outputs as the model.

Forward for normalized images ``(B, 3, S, S)``:

1. the zero-shot model (Fig. 1) -> ``M``, ``s_txt``;
2. the frozen backbone's patch embedding, averaged over the neighbourhood -> per patch the distance to the nearest
   memory row, bilinearly upsampled to S x S -> ``D`` (:mod:`wmoe.reference.memory`);
3. when the product has trained three-level experts (``wmoe fit-normal --experts``): their map ``z_E`` from the same
   patch embedding (:mod:`wmoe.reference.experts`), mixed into the reference map (R4 of :mod:`wmoe.reference.fusion`);
4. the fusion R1-R3 (:mod:`wmoe.reference.fusion`) -> ``scores``, ``maps``.

The memory and the experts' weights are buffers and parameters: an ONNX export holds them as constant
initializers, so the exported graph keeps the model's one input and three outputs and every backend (ONNX Runtime, TensorRT, Triton, the camera loop) runs it unchanged.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmoe.kernels import ChoiceLike

from ..model.wmoe_clip import WMoECLIP, WMoEOutput
from .experts import reference_std
from .fusion import FusionStats, ReferenceError, check_weight, combine_reference, fuse
from .memory import local_features, nn_distance
from .store import ClassReference, ReferenceConfig


class ReferenceModel(nn.Module):
    """A :class:`WMoECLIP` plus one product's reference. ``weight`` overrides the reference's fusion weight,
    ``experts_weight`` its experts' share of the reference map (0: the memory alone)."""

    def __init__(self, model: WMoECLIP, ref: ClassReference, config: ReferenceConfig,
                 weight: Optional[float] = None, experts_weight: Optional[float] = None) -> None:
        super().__init__()
        self.model = model
        self.ref = ref
        self.config = config
        self.neighbourhood = config.neighbourhood
        self.weight = check_weight(config.fusion_weight if weight is None else weight)
        bank = ref.bank.float()
        width = model.backbone.clip.visual.conv1.weight.shape[0]
        if bank.shape[1] != width:
            from .fusion import ReferenceError
            raise ReferenceError(f"the reference of {ref.name!r} holds {bank.shape[1]}-d features, this backbone's "
                                 f"patch embedding is {width}-d: fit it with this checkpoint")
        self.register_buffer("bank", bank.clone())
        self.register_buffer("bank_sq", (bank * bank).sum(-1))
        # the three-level experts join the reference map (R4) when the product has them and v > 0
        self.experts_weight = check_weight(config.experts_weight if experts_weight is None else experts_weight,
                                           "experts weight")
        self.experts = ref.experts if (ref.experts is not None and self.experts_weight > 0) else None
        self.experts_rho = float(ref.extra["experts"]["memory_correlation"]) if self.experts is not None else 0.0

    def reference_set(self):
        """This product's reference as a one-product :class:`~wmoe.reference.store.NormalReference`."""
        from .store import NormalReference
        return NormalReference(self.config, {self.ref.name: self.ref})

    # the attributes the exporter, the Detector and the evaluation read from a WMoECLIP
    @property
    def cfg(self):
        return self.model.cfg

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def backbone(self):
        return self.model.backbone

    @property
    def samoe(self):
        return self.model.samoe

    def set_kernels(self, kernels: ChoiceLike) -> None:
        self.model.set_kernels(kernels)

    @contextlib.contextmanager
    def using_kernels(self, kernels: ChoiceLike) -> Iterator["ReferenceModel"]:
        with self.model.using_kernels(kernels):
            yield self

    def _upsample(self, grid: Tensor) -> Tensor:
        S = self.image_size
        return F.interpolate(grid[:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]

    def distance_map(self, images: Tensor, emb: Optional[Tensor] = None) -> Tensor:
        """``D`` (B, S, S): each patch's distance to its nearest good patch, bilinearly upsampled."""
        if emb is None:
            with torch.no_grad():
                emb = self.model.backbone.patch_embedding(images)
        f = local_features(emb.to(self.bank.dtype), self.neighbourhood)
        B, G, _, C = f.shape
        return self._upsample(nn_distance(f.reshape(B, G * G, C), self.bank, self.bank_sq).reshape(B, G, G))

    def experts_map(self, images: Tensor, emb: Optional[Tensor] = None) -> Tensor:
        """``z_E`` (B, S, S): the three-level experts' map (X3 of :mod:`wmoe.reference.experts`), upsampled."""
        if self.experts is None:
            raise ReferenceError(f"the reference of {self.ref.name!r} has no trained experts "
                                 f"(wmoe fit-normal --experts)")
        if emb is None:
            with torch.no_grad():
                emb = self.model.backbone.patch_embedding(images)
        return self._upsample(self.experts(emb.float()))

    def reference_map(self, images: Tensor) -> "tuple[Tensor, FusionStats]":
        """The reference map and the statistics R1-R3 take it with: the memory map ``D`` and the product's stats, or,
        with experts, R4's mix of ``z_D`` and ``z_E`` and its spread on the good images."""
        with torch.no_grad():
            emb = self.model.backbone.patch_embedding(images)
        d = self.distance_map(images, emb)
        if self.experts is None:
            return d, self.ref.stats
        r = combine_reference(d, self.experts_map(images, emb), self.ref.stats, self.experts_weight)
        st = self.ref.stats
        return r, FusionStats(st.zs_mean, st.zs_std, 0.0, reference_std(self.experts_rho, self.experts_weight))

    def forward(self, images: Tensor) -> WMoEOutput:
        out = self.model(images)
        r, stats = self.reference_map(images)
        scores, maps = fuse(out.maps, out.text_scores, r.to(out.maps.dtype), stats, self.weight)
        return WMoEOutput(scores=scores, maps=maps, layer_maps=out.layer_maps, text_scores=out.text_scores,
                          moe_context=out.moe_context)
