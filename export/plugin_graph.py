"""The plugin flavor: the fused stages as custom ONNX nodes that TensorRT runs as AOT plugins.

A TensorRT quickly deployable AOT plugin (``tensorrt.plugin.aot_impl``) launches exactly one kernel, so each
custom node is one Triton kernel of :mod:`wmoe.kernels` and the cheap glue around it stays in standard ONNX ops.
Which stages have a plugin, and everything about the node, is in the stage records
(:class:`wmoe.kernels.spec.Plugin` in :mod:`wmoe.kernels.stages`); this module loops over them, as
:mod:`wmoe.export.trt_plugins` does to register them with TensorRT. For each stage with a plugin:

* the node ``<plugin.op>`` (domain ``wmoe``, opset 1): its inputs and outputs are the kernel's pointer arguments
  (:func:`schema`: ``*T`` in the kernel dtype, float16 or float32; ``*fp32`` always float32; ``*i32`` int32), its
  attributes the record's int ``attrs`` plus ``plugin_namespace="wmoe"`` (string), which the ONNX parser uses to
  find the creator;
* the exporter reaches the stage through its ``torch.library`` custom op (``wmoe::<stage>``, :mod:`wmoe.kernels.ops`)
  and :func:`translation_table`, which calls the record's ``translation`` (the op as the node plus standard ops:
  ``WmoeWcmaFrequency`` is the main kernel of Eq. 5-6 after the global branch in standard ops, ``WmoeMoeRouter``
  the router of Eq. 8 before the experts' dense masked GEMM; fp32 operands are cast in the graph, so the fp16
  variant feeds the plugins what the AOT PTX was compiled for);
* for checking without TensorRT, :data:`REFERENCE_OPS` implements every node for
  ``onnx.reference.ReferenceEvaluator`` with the record's ``reference`` (the kernel's arithmetic in float64).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List

from onnx.defs import OpSchema
from onnx.reference.op_run import OpRun

from wmoe.contract import PLUGIN_DOMAIN as DOMAIN
from wmoe.kernels.spec import StageSpec, load
from wmoe.kernels.stages import plugin_stages

# The ONNX parser's fallback plugin importer looks the creator up by op type, "plugin_version" (default "1") and
# this string attribute (default ""), ignoring the ONNX domain: without it our creators (namespace "wmoe") are
# "not found".
NAMESPACE_ATTR = "plugin_namespace"
# the kernel argument types as ONNX type constraints
_TYPES = {"*T": "T", "*fp32": "F", "*i32": "I"}

#: the stages with a TensorRT plugin, by op type
PLUGIN_STAGES: Dict[str, StageSpec] = plugin_stages()
PLUGIN_OPS = tuple(PLUGIN_STAGES)


def schema(stage: StageSpec) -> OpSchema:
    """The node's ONNX schema, from the plugin kernel's spec and the record's attributes."""
    fp = OpSchema.FormalParameter
    kernel = stage.kernel(stage.plugin.kernel)

    def params(role: str) -> List[Any]:
        return [fp(a.name[:-4] if a.name.endswith("_ptr") else a.name, _TYPES[a.type])
                for a in kernel.args if a.role == role]

    return OpSchema(stage.plugin.op, DOMAIN, 1, inputs=params("in"), outputs=params("out"),
                    type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "kernel dtype"),
                                      ("F", ["tensor(float)"], "fp32 operands"),
                                      ("I", ["tensor(int32)"], "indices")],
                    attributes=[OpSchema.Attribute(a, OpSchema.AttrType.INT, "") for a in stage.plugin.attrs]
                    + [OpSchema.Attribute(NAMESPACE_ATTR, OpSchema.AttrType.STRING, "TensorRT plugin namespace")])


def _bound(translation: Callable[..., Any], node: Callable[..., Any], op: Any) -> Callable[..., Any]:
    """``translation`` with its first two parameters (the node maker, the opset) given, keeping the signature and
    annotations of the rest: the exporter reads them to tell tensor inputs from attributes."""
    sig = inspect.signature(translation)
    params = list(sig.parameters.values())[2:]

    def translated(*args: Any, **kwargs: Any) -> Any:
        return translation(node, op, *args, **kwargs)

    names = {p.name for p in params} | {"return"}
    translated.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    translated.__annotations__ = {k: v for k, v in translation.__annotations__.items() if k in names}
    translated.__wrapped__ = translation  # type: ignore[attr-defined]  # its globals resolve the annotations
    translated.__name__ = translation.__name__
    return translated


def translation_table() -> Dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: each stage's custom op -> its
    translation into the plugin node and standard ops."""
    import onnxscript
    import torch
    from onnxscript import opset18 as op
    from onnxscript.values import Op

    from wmoe.kernels import ops  # noqa: F401 - registers torch.ops.wmoe.*

    opset = onnxscript.values.Opset(DOMAIN, 1)
    table = {}
    for plugin_op, stage in PLUGIN_STAGES.items():
        node_op = Op(opset, plugin_op, schema(stage))

        def node(*inputs: Any, _node_op=node_op, **attrs: Any) -> Any:
            return _node_op(*inputs, **attrs, **{NAMESPACE_ATTR: DOMAIN})

        table[getattr(torch.ops.wmoe, stage.name).default] = _bound(load(stage.plugin.translation), node, op)
    return table


def _reference_op(stage: StageSpec) -> type:
    reference = stage.plugin.reference

    def _run(self, *inputs: Any, **attrs: Any) -> Any:
        attrs.pop(NAMESPACE_ATTR, None)
        out = load(reference)(*inputs, **attrs)
        return out if isinstance(out, tuple) else (out,)

    return type(stage.plugin.op, (OpRun,), {"op_domain": DOMAIN, "_run": _run})


#: every plugin node for ``onnx.reference.ReferenceEvaluator(..., new_ops=REFERENCE_OPS)``
REFERENCE_OPS = [_reference_op(s) for s in PLUGIN_STAGES.values()]
