"""ONNX export of a trained WMoE-CLIP: one graph from an image batch to image scores and anomaly maps.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export based; the TorchScript exporter is deprecated
upstream) with opset 18. The TorchScript exporter was tried and rejected: after it runs, the in-memory model's
outputs change by ~0.1 (``allow_torchscript=True`` keeps it reachable for investigation; a test pins this). Known traps handled:
``nn.MultiheadAttention``'s fast path (``aten::_native_multi_head_attention``) has no ONNX form, so it is switched
off during export; the SA-MoE uses its dense masked form and the router ``TopK`` (no data-dependent shapes).
Outputs are the Detector's fields ``scores`` (N,), ``maps`` (N,S,S), ``text_scores`` (N,) with a dynamic batch.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Tuple, Union, overload

import torch

from wmoe import __version__
from wmoe.atomic import atomic_path
from wmoe.model.checkpoint import CheckpointError, load_model
from wmoe.errors import ExportError  # noqa: F401  (re-exported: its old home; new code imports wmoe.errors)
from wmoe.kernels import KernelChoice, Kernels
from wmoe.contract import (FLAVORS, INPUT_FRAMES, INPUT_IMAGES, OUTPUT_NAMES, ContractError, Decision, ModelMeta,
                           decision_for_checkpoint, parse_precision, sha256_file)
from wmoe.model.wmoe_clip import WMoECLIP

from .onnx_write import write_model
from .wrapper import ExportWrapper

DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")


@contextlib.contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    mha = getattr(torch.backends, "mha", None)
    old = mha.get_fastpath_enabled() if mha else None
    if mha:
        mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        if mha:
            mha.set_fastpath_enabled(old)


@overload
def export_onnx(ckpt_or_model: Union[str, Path, WMoECLIP], out: Union[str, Path], *,
                with_meta: Literal[False] = False, **options: Any) -> Path: ...


@overload
def export_onnx(ckpt_or_model: Union[str, Path, WMoECLIP], out: Union[str, Path], *, with_meta: Literal[True],
                **options: Any) -> Tuple[Path, ModelMeta]: ...


def export_onnx(ckpt_or_model: Union[str, Path, WMoECLIP], out: Union[str, Path], *, precision: str = "fp32",
                preprocess: bool = False, frame_size: Optional["tuple[int, int]"] = None, opset: int = DEFAULT_OPSET,
                batch: int = 2, max_batch: int = 256, exporter: str = "dynamo", pretrained: Optional[str] = None,
                flavor: str = "portable", allow_torchscript: bool = False, threshold: Optional[float] = None,
                pixel_threshold: Optional[float] = None, decision: Optional[Decision] = None,
                reference=None, product: Optional[str] = None, fusion_weight: Optional[float] = None,
                with_meta: bool = False) -> Union[Path, Tuple[Path, ModelMeta]]:
    """Export to ``out`` (written atomically) and return its path (``with_meta``: ``(path, the ModelMeta written
    into it)``, so a caller reports the stored decision without reading the file back).

    Args:
        precision: ``fp32`` or ``fp16`` (weights and compute in fp16, inputs and outputs stay fp32 — what TensorRT 11's
            strongly typed networks need to build a reduced-precision engine).
        preprocess: input ``frames`` uint8 (N,H,W,3) of ``frame_size`` (H, W; default the model's SxS) instead of
            ``images``: the spec's resize and normalization run in the graph (``wmoe export onnx``'s default).
        flavor: ``portable`` (standard ONNX ops only: ONNX Runtime, OpenVINO, any TensorRT) or ``plugin`` (the two
            fused stages as ``wmoe`` custom nodes for TensorRT plugins, see :mod:`wmoe.export.plugin_graph`;
            dynamo exporter only).
        threshold, pixel_threshold, decision: the decision stored in the metadata (:class:`wmoe.contract.Decision`).
            By default the one ``wmoe eval`` wrote beside the checkpoint (``<checkpoint>.threshold.json``) is
            used; ``threshold``/``pixel_threshold`` override its values.
        reference, product, fusion_weight: the normal-reference mode (a ``wmoe fit-normal`` folder or a
            :class:`wmoe.reference.NormalReference`) of one ``product``: its memory becomes a constant of the graph,
            the inputs and outputs stay the same (:class:`wmoe.reference.ReferenceModel`). The zero-shot decision
            stored beside the checkpoint is in other units and is not used: give the threshold explicitly.
    """
    import onnx

    if flavor not in FLAVORS:
        raise ExportError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
    try:
        precision = parse_precision(precision)  # "float16" -> "fp16"
    except ValueError as e:
        raise ExportError(str(e)) from None
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"precision must be fp32 or fp16, got {precision!r}")
    if batch < 2:
        # torch.export specializes a dimension whose example size is 1: the batch axis would become static
        raise ExportError("batch (the example batch used for tracing) must be >= 2 to keep the batch axis dynamic")
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if exporter == "torchscript" and not allow_torchscript:
        # measured on torch 2.14: after the TorchScript exporter ran, the in-memory model's maps change by ~0.1
        # (state dict unchanged); the dynamo export leaves it untouched and matches ONNX Runtime within 1e-6
        raise ExportError("the TorchScript exporter disturbs this model (its eager outputs change by ~0.1 after "
                          "export on torch 2.14): use exporter='dynamo' (the default)")
    ckpt_sha = "in-memory-model"
    from wmoe.reference.model import ReferenceModel
    if isinstance(ckpt_or_model, ReferenceModel):  # a model with its reference already attached (wmoe bench)
        if reference is not None:
            raise ExportError("the model already carries a reference: do not pass reference= as well")
        ckpt_or_model, reference, product, fusion_weight = (ckpt_or_model.model, ckpt_or_model.reference_set(),
                                                            ckpt_or_model.ref.name, ckpt_or_model.weight)
    if isinstance(ckpt_or_model, WMoECLIP):
        model = ckpt_or_model
    else:
        path = Path(ckpt_or_model)
        model = load_model(path, pretrained=pretrained)  # CheckpointError names the file
        ckpt_sha = sha256_file(path)
        if decision is None and threshold is None:
            try:
                decision = decision_for_checkpoint(path, ckpt_sha)
            except ContractError as e:
                raise ExportError(str(e)) from None
    ref_summary = ""
    if reference is not None:
        import json

        from wmoe.reference import FUSED_SCORE_MEANING, NormalReference, ReferenceError, ReferenceModel
        try:
            ref = (reference if isinstance(reference, NormalReference) else
                   NormalReference.load(reference, None if isinstance(ckpt_or_model, WMoECLIP) else ckpt_or_model))
            model = ReferenceModel(model, ref.get(product), ref.config, fusion_weight)
        except ReferenceError as e:
            raise ExportError(str(e)) from None
        summary = ref.summary(model.ref.name)
        summary["fusion_weight"] = model.weight
        ref_summary = json.dumps(summary, sort_keys=True)
        if decision is None or decision.score != FUSED_SCORE_MEANING:
            decision = Decision(score=FUSED_SCORE_MEANING)  # a zero-shot threshold means nothing on fused scores
    decision = decision or Decision()
    try:
        decision = decision.with_overrides(threshold, pixel_threshold)
    except ContractError as e:
        raise ExportError(str(e)) from None
    if isinstance(ckpt_or_model, WMoECLIP) and (precision != "fp32" or model.training or any(
            t.dtype != torch.float32 or t.device.type != "cpu" for t in model.state_dict().values())):
        model = copy.deepcopy(model)  # the conversions below (and the wrapper's) must not touch the caller's model
    model = model.float().eval().cpu()
    s = model.image_size
    wrapper = ExportWrapper(model, preprocess=preprocess,
                            dtype=torch.float16 if precision == "fp16" else torch.float32)
    if preprocess:
        frame_size = tuple(frame_size) if frame_size else (s, s)  # model-sized frames: the runtime resizes others
        h, w = frame_size
        if h < 1 or w < 1:
            raise ExportError(f"frame_size must be positive (H, W), got {frame_size}")
        example = torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8)
        in_name = INPUT_FRAMES
    else:
        example = torch.randn(batch, 3, s, s)
        in_name = INPUT_IMAGES
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if flavor == "plugin" and exporter != "dynamo":
        raise ExportError("the plugin flavor needs the dynamo exporter")
    # the export's tracing mode, for this model only: the plugin flavor traces each fused stage as one
    # torch.library node (translated into the TensorRT plugin nodes), the portable one traces the references
    stages = model.using_kernels(KernelChoice(Kernels.REFERENCE, as_ops=flavor == "plugin"))
    with _no_mha_fastpath(), torch.no_grad(), warnings.catch_warnings(), stages:
        warnings.simplefilter("ignore")
        with atomic_path(out) as tmp:
            if exporter == "dynamo":
                dim = torch.export.Dim("N", min=1, max=max_batch)
                extra = {}
                if flavor == "plugin":
                    from .plugin_graph import translation_table
                    extra["custom_translation_table"] = translation_table()
                prog = torch.onnx.export(wrapper, (example,), None, input_names=[in_name],
                                         output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: dim},),
                                         dynamo=True, opset_version=opset, verbose=False, **extra)
                prog.optimize()
                proto = prog.model_proto
            else:
                axes = {n: {0: "N"} for n in (in_name, *OUTPUT_NAMES)}
                torch.onnx.export(wrapper, (example,), str(tmp), input_names=[in_name],
                                  output_names=list(OUTPUT_NAMES), dynamic_axes=axes, dynamo=False,
                                  opset_version=opset)
                proto = onnx.load(str(tmp))
            proto.producer_name = "wmoe"
            proto.producer_version = __version__
            meta_obj = ModelMeta(image_size=s, input=in_name, frame_size=tuple(frame_size) if preprocess else None,
                                 flavor=flavor, precision=precision, decision=decision,
                                 config=model.cfg.to_json(), checkpoint_sha256=ckpt_sha, version=__version__,
                                 exporter=exporter, reference=ref_summary)
            meta = meta_obj.to_metadata()
            del proto.metadata_props[:]
            for k, v in sorted(meta.items()):
                proto.metadata_props.add(key=k, value=v)
            # written a tensor at a time, then the file checked: onnx.save and check_model(proto) each serialize the
            # whole model in memory (ViT-L-14-336: peak 10.7 GB that way; onnx_write.py)
            write_model(proto, tmp)
            del proto
            if exporter == "dynamo":
                del prog
            onnx.checker.check_model(str(tmp))
    return (out, meta_obj) if with_meta else out
