"""``ReferenceModel``: WMoE-CLIP with one product's normal reference — the same inputs and outputs as the model.

Forward for normalized images ``(B, 3, S, S)``:

1. the zero-shot model (Fig. 1) -> ``M``, ``s_txt``;
2. the frozen backbone's patch embedding, averaged over the neighbourhood -> per patch the distance to the nearest
   memory row, bilinearly upsampled to S x S -> ``D`` (:mod:`wmoe.reference.memory`);
3. the fusion R1-R3 (:mod:`wmoe.reference.fusion`) -> ``scores``, ``maps``.

The memory is a buffer: an ONNX export holds it as a constant initializer, so the exported graph keeps the model's
one input and three outputs and every backend (ONNX Runtime, TensorRT, Triton, the camera loop) runs it unchanged.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmoe.kernels import ChoiceLike

from ..model import WMoECLIP, WMoEOutput
from .fusion import check_weight, fuse
from .memory import local_features, nn_distance
from .store import ClassReference, ReferenceConfig


class ReferenceModel(nn.Module):
    """A :class:`WMoECLIP` plus one product's reference. ``weight`` overrides the reference's fusion weight."""

    def __init__(self, model: WMoECLIP, ref: ClassReference, config: ReferenceConfig,
                 weight: Optional[float] = None) -> None:
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

    def distance_map(self, images: Tensor) -> Tensor:
        """``D`` (B, S, S): each patch's distance to its nearest good patch, bilinearly upsampled."""
        with torch.no_grad():
            emb = self.model.backbone.patch_embedding(images)
        f = local_features(emb.to(self.bank.dtype), self.neighbourhood)
        B, G, _, C = f.shape
        d = nn_distance(f.reshape(B, G * G, C), self.bank, self.bank_sq).reshape(B, 1, G, G)
        S = self.image_size
        return F.interpolate(d, size=(S, S), mode="bilinear", align_corners=False)[:, 0]

    def forward(self, images: Tensor) -> WMoEOutput:
        out = self.model(images)
        d = self.distance_map(images).to(out.maps.dtype)
        scores, maps = fuse(out.maps, out.text_scores, d, self.ref.stats, self.weight)
        return WMoEOutput(scores=scores, maps=maps, layer_maps=out.layer_maps, text_scores=out.text_scores,
                          moe_context=out.moe_context)
