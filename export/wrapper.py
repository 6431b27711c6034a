"""The module that is exported: WMoE-CLIP as a plain tensor function, optionally with in-graph preprocessing."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from wmoe.contract import PreprocessSpec
from wmoe.model.wmoe_clip import WMoECLIP
from wmoe.model.preprocess import frames_to_images


class ExportWrapper(nn.Module):
    """``images (N,3,S,S) normalized -> (scores (N,), maps (N,S,S), text_scores (N,))``.

    With ``preprocess=True`` the input is ``frames (N,H,W,3) uint8 RGB`` of a fixed camera size: squash resize
    and CLIP normalization happen inside the graph — the same functions as every torch path
    (:mod:`wmoe.model.preprocess`), traced to ONNX ``Resize(linear, half_pixel)`` + ``AveragePool``, which ONNX
    Runtime, TensorRT and OpenVINO compute alike.
    """

    def __init__(self, model: WMoECLIP, preprocess: bool = False, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model.eval().to(dtype)
        self.preprocess = preprocess
        self.dtype = dtype
        self.spec = PreprocessSpec(model.image_size)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        if self.preprocess:
            x = frames_to_images(x, self.spec)
        # fp16 variant: fp32 at the graph's edges, fp16 weights and compute inside
        out = self.model(x.to(self.dtype))
        return out.scores.float(), out.maps.float(), out.text_scores.float()
