"""Frozen open_clip CLIP backbone: class token, multi-layer patch grids and an EOT-truncated text encoder.

Both towers stay frozen (no gradients, always in eval mode). Every feature is mapped into the joint
image-text space through ``ln_post`` and ``proj`` (AnomalyCLIP's choice, design notes), so the class token
``x_c``, the patch grids ``F_I`` of the four feature layers and the text features all have ``embed_dim``
channels.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TINY_BACKBONE
from ..errors import WMoEError

_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # wmoe/configs
_registered = False


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class BackboneError(WMoEError, ValueError):
    """A backbone or its weights file cannot be used (named in the message)."""


def register_configs() -> None:
    """Make the project's own open_clip model configs (``wmoe-tiny``) known to open_clip."""
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def default_feature_layers(depth: int) -> Tuple[int, ...]:
    """1-based layers at 1/4, 1/2, 3/4 and all of the depth: (6, 12, 18, 24) for 24 layers."""
    if depth < 4:
        raise BackboneError(f"the vision tower has {depth} layers; WMoE-CLIP needs at least 4")
    return tuple(max(1, round(depth * q / 4)) for q in (1, 2, 3, 4))


def _load_state_dict(path: Path) -> Dict[str, Tensor]:
    """Read a CLIP state dict without unpickling arbitrary objects.

    Accepts safetensors, ``torch.save``d state dicts (read with ``weights_only=True``) and OpenAI's TorchScript
    archives (``ViT-L-14-336px.pt``), whose tensors are read through ``torch.jit.load``, which runs no pickled
    Python code.
    """
    if not path.is_file():
        raise BackboneError(f"backbone weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                is_jit = any(n.endswith("constants.pkl") for n in z.namelist())
            if is_jit:
                sd = torch.jit.load(str(path), map_location="cpu").state_dict()
                for key in ("input_resolution", "context_length", "vocab_size"):
                    sd.pop(key, None)
                return sd
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except BackboneError:
        raise
    except Exception as e:  # noqa: BLE001 - every reader error becomes one clear message
        raise BackboneError(f"cannot read backbone weights {path}: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise BackboneError(f"{path} does not hold a state dict of tensors")
    if obj and next(iter(obj)).startswith("module."):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _resize_grid_pos_embed(pos: Tensor, grid: Tuple[int, int]) -> Tensor:
    """Bicubic resize of a ViT position embedding (class slot + square grid) to ``grid``."""
    n_old = pos.shape[0] - 1
    side = int(round(n_old ** 0.5))
    if side * side != n_old:
        raise BackboneError(f"position embedding with {n_old} patch slots is not a square grid")
    if (side, side) == tuple(grid):
        return pos
    cls, g = pos[:1], pos[1:]
    g = g.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=grid, mode="bicubic", align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls, g], dim=0)


class CLIPBackbone(nn.Module):
    """A frozen open_clip ViT CLIP.

    Args:
        name: open_clip model config name (``ViT-L-14-336-quickgelu`` for OpenAI weights; ``wmoe-tiny`` for tests).
        image_size: input side in pixels; the position embedding is resized for sizes other than the config's.
        feature_layers: 1-based layer indices of the patch grids (default: depth/4, /2, 3/4, depth).
        pretrained: local weights file; None builds a random-init backbone from ``seed``.
        seed: seed of the random init (so that a random-init backbone can be rebuilt exactly).
    """

    def __init__(self, name: str, image_size: int, feature_layers: Optional[Sequence[int]] = None,
                 pretrained: Optional[str] = None, seed: int = 0) -> None:
        super().__init__()
        register_configs()
        if name not in open_clip.list_models():
            raise BackboneError(f"unknown open_clip model {name!r}; see open_clip.list_models()")
        if name.startswith("ViT-") and pretrained and "quickgelu" not in name.lower():
            # OpenAI weights were trained with QuickGELU; the plain config builds GELU and only warns.
            warnings.warn(f"{name} builds nn.GELU; OpenAI weights need the '-quickgelu' variant "
                          f"(e.g. ViT-L-14-336-quickgelu)", stacklevel=2)
        with torch.random.fork_rng(devices=[]), _quiet_root_logger():
            torch.manual_seed(seed)
            # open_clip warns "no pretrained weights" on the root logger; we load them ourselves below.
            model = open_clip.create_model(name, pretrained=None, force_image_size=image_size)
        visual = model.visual
        if not hasattr(visual, "conv1") or getattr(visual, "attn_pool", None) is not None:
            raise BackboneError(f"{name}: only plain ViT image towers (conv1 patchify, class token) are supported")
        self.name = name
        self.image_size = int(image_size)
        self.patch_size = int(visual.patch_size[0])
        if self.image_size % self.patch_size:
            raise BackboneError(f"image size {image_size} is not a multiple of the patch size {self.patch_size}")
        self.grid = self.image_size // self.patch_size
        self.depth = len(visual.transformer.resblocks)
        layers = tuple(feature_layers) if feature_layers else default_feature_layers(self.depth)
        if any(not 1 <= i <= self.depth for i in layers):
            raise BackboneError(f"feature layers {layers} out of range 1..{self.depth} for {name}")
        self.feature_layers = layers
        self.pretrained_path = str(pretrained) if pretrained else None
        self.weights_sha256 = "random-init"
        if pretrained:
            path = Path(pretrained)
            sd = _load_state_dict(path)
            if "visual.positional_embedding" in sd:
                sd["visual.positional_embedding"] = _resize_grid_pos_embed(
                    sd["visual.positional_embedding"], (self.grid, self.grid))
            try:
                model.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise BackboneError(f"{path} does not match the {name} architecture: {str(e)[:600]}") from e
            from ..contract import sha256_file
            self.weights_sha256 = sha256_file(path)
        self.clip = model
        self.clip.requires_grad_(False)
        self.clip.eval()
        self.embed_dim = int(visual.output_dim)
        self.token_dim = int(model.token_embedding.weight.shape[1])
        self.tokenizer = open_clip.get_tokenizer(name)
        self.seed = seed

    def train(self, mode: bool = True) -> "CLIPBackbone":
        # Frozen: dropout and friends stay off whatever the wrapping model does.
        super().train(False)
        return self

    # ----------------------------------------------------------------------------------------- image tower
    def forward(self, images: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """Encode normalized images ``(B, 3, S, S)``.

        Returns:
            ``x_c`` ``(B, E)`` and one patch grid ``(B, G, G, E)`` per feature layer, all in the joint space.
        """
        v = self.clip.visual
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"backbone expects (B, 3, {self.image_size}, {self.image_size}) images, "
                             f"got {tuple(images.shape)}")
        x = v.conv1(images.to(v.conv1.weight.dtype))
        B, W = x.shape[0], x.shape[1]
        x = x.reshape(B, W, -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).reshape(1, 1, W).expand(B, 1, W)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        wanted = {i - 1 for i in self.feature_layers}
        feats: List[Tensor] = []
        for i, blk in enumerate(v.transformer.resblocks):
            x = blk(x)
            if i in wanted:
                feats.append(x.transpose(0, 1) if not batch_first else x)
            if i >= max(wanted):
                break  # later blocks feed nothing we use (x_c comes from the last feature layer, the top one)
        last = feats[-1]
        if max(self.feature_layers) != self.depth:
            # x_c is defined on the final layer; run the remaining blocks when the top feature layer is lower.
            y = last if batch_first else last.transpose(0, 1)
            for blk in list(v.transformer.resblocks)[max(wanted) + 1:]:
                y = blk(y)
            last = y if batch_first else y.transpose(0, 1)
        x_c = v.ln_post(last[:, 0]) @ v.proj
        G = self.grid
        grids = [(v.ln_post(f[:, 1:]) @ v.proj).reshape(B, G, G, -1) for f in feats]
        return x_c, grids

    def patch_embedding(self, images: Tensor) -> Tensor:
        """The patch embedding ``conv1(images)`` as a grid ``(B, G, G, width)``, before the position embedding.

        The normal-reference mode's memory holds these (:mod:`wmoe.reference.memory`): on the demo data they keep the
        local structure best (nearest-neighbour pixel AUROC 0.93-0.98 with the tiny random backbone, against
        0.68-0.95 for the later, normalized layers; ``bench/results/reference_cpu.md``). The position embedding is
        left out so that a patch is compared with good patches anywhere in the image, not only at its own place.
        """
        v = self.clip.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        return x.permute(0, 2, 3, 1)

    # ------------------------------------------------------------------------------------------ text tower
    def prompt_tokens(self, words: str) -> List[int]:
        """Token ids ``[SOT, words...]`` (without EOT) of a prompt prefix."""
        ids = self.tokenizer([words])[0].tolist()
        eot = self.eot_token_id
        return ids[: ids.index(eot)]

    @property
    def eot_token_id(self) -> int:
        ids = self.tokenizer([""])[0].tolist()
        return int(ids[1])

    def token_embedding(self, ids: Tensor) -> Tensor:
        return self.clip.token_embedding(ids)

    def encode_text_embeddings(self, emb: Tensor, eot_index: Tensor) -> Tensor:
        """Run the text transformer on token embeddings ``(P, L, W)`` and pool at ``eot_index`` ``(P,)``.

        ``L`` is the prompt length up to and including the last EOT, not the 77-token context: the encoder is
        causal, so the EOT output depends only on the tokens before it (identical features, ~8x less work).
        """
        m = self.clip
        L = emb.shape[1]
        if L > m.positional_embedding.shape[0]:
            raise ValueError(f"prompt of {L} tokens exceeds the context length {m.positional_embedding.shape[0]}")
        x = emb + m.positional_embedding[:L].to(emb.dtype)
        mask = torch.full((L, L), float("-inf"), device=emb.device, dtype=emb.dtype).triu_(1)
        batch_first = getattr(m.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for blk in m.transformer.resblocks:
            x = blk(x, attn_mask=mask)
        if not batch_first:
            x = x.transpose(0, 1)
        x = m.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot_index]
        proj = m.text_projection
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj

    def encode_text_full(self, ids: Tensor) -> Tensor:
        """open_clip's own full-context text encoder (the oracle for the truncated path)."""
        return self.clip.encode_text(ids)
