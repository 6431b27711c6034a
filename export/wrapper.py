"""The module that is exported: WMoE-CLIP as a plain tensor function, optionally with in-graph preprocessing."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmoe.contract import CLIP_MEAN, CLIP_STD
from wmoe.model import WMoECLIP


class ExportWrapper(nn.Module):
    """``images (N,3,S,S) normalized -> (scores (N,), maps (N,S,S), text_scores (N,))``.

    With ``preprocess=True`` the input is ``frames (N,H,W,3) uint8 RGB`` of a fixed camera size: squash resize
    (bicubic, antialiased, as :mod:`wmoe.preprocess`) and CLIP normalization happen inside the graph.
    """

    def __init__(self, model: WMoECLIP, preprocess: bool = False, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model.eval().to(dtype)
        self.preprocess = preprocess
        self.dtype = dtype
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if self.preprocess:
            s = self.model.image_size
            x = x.permute(0, 3, 1, 2).to(torch.float32) / 255.0
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
            x = (x - self.mean) / self.std
        # fp16 variant: fp32 at the graph's edges, fp16 weights and compute inside
        out = self.model(x.to(self.dtype))
        return out.scores.float(), out.maps.float(), out.text_scores.float()
