"""The plugin flavor: the two fused stages as custom ONNX nodes that TensorRT runs as plugins.

Nodes (domain ``wmoe``, opset 1), named as the TensorRT plugins in :mod:`wmoe.export.trt_plugins` expect:

* ``WmoeWcmaFrequency(x, W1, b1, Wpw, bpw, W2, b2) -> F_p`` — Eq. 5-6, x (B, H, W, C) -> (B, ⌈H/2⌉, ⌈W/2⌉, C);
* ``WmoeMoeExperts(x, Wr, br, W1, b1, W2, b2; top_k:int) -> x_p`` — Eq. 8, x (B, C) -> (B, C).

Weights are graph initializers fed as inputs. The exporter reaches them through the ``torch.library`` custom ops
(``wmoe::wcma_frequency``, ``wmoe::moe_experts``) and this translation table. For checking without TensorRT,
:data:`REFERENCE_OPS` implements both nodes for ``onnx.reference.ReferenceEvaluator`` with the PyTorch references.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch
from onnx.defs import OpSchema
from onnx.reference.op_run import OpRun

DOMAIN = "wmoe"
WCMA_OP = "WmoeWcmaFrequency"
MOE_OP = "WmoeMoeExperts"


def _schema(name: str, inputs: List[str], attrs: List[str] = ()) -> OpSchema:
    fp = OpSchema.FormalParameter
    return OpSchema(name, DOMAIN, 1, inputs=[fp(i, "T") for i in inputs], outputs=[fp("y", "T")],
                    type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
                    attributes=[OpSchema.Attribute(a, OpSchema.AttrType.INT, "") for a in attrs])


def translation_table() -> Dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""
    import onnxscript
    from onnxscript.values import Op

    from wmoe.kernels import ops  # noqa: F401 - registers torch.ops.wmoe.*

    opset = onnxscript.values.Opset(DOMAIN, 1)
    wcma = Op(opset, WCMA_OP, _schema(WCMA_OP, ["x", "w_global", "b_global", "w_pw", "b_pw", "w_local", "b_local"]))
    moe = Op(opset, MOE_OP, _schema(MOE_OP, ["x", "w_router", "b_router", "w1", "b1", "w2", "b2"], ["top_k"]))

    def wcma_fn(x, w_global, b_global, w_pw, b_pw, w_local, b_local):
        return wcma(x, w_global, b_global, w_pw, b_pw, w_local, b_local)

    def moe_fn(x, w_router, b_router, w1, b1, w2, b2, top_k: int):
        return moe(x, w_router, b_router, w1, b1, w2, b2, top_k=top_k)

    return {torch.ops.wmoe.wcma_frequency.default: wcma_fn, torch.ops.wmoe.moe_experts.default: moe_fn}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


class WmoeWcmaFrequency(OpRun):
    op_domain = DOMAIN

    def _run(self, x, w_global, b_global, w_pw, b_pw, w_local, b_local):  # noqa: D401
        from wmoe.kernels.wcma_ref import wcma_frequency_ref
        y = wcma_frequency_ref(*[_t(a) for a in (x, w_global, b_global, w_pw, b_pw, w_local, b_local)])
        return (y.numpy().astype(x.dtype),)


class WmoeMoeExperts(OpRun):
    op_domain = DOMAIN

    def _run(self, x, w_router, b_router, w1, b1, w2, b2, top_k=None):
        from wmoe.kernels.moe_ref import moe_experts_ref
        y = moe_experts_ref(*[_t(a) for a in (x, w_router, b_router, w1, b1, w2, b2)], int(top_k))
        return (y.numpy().astype(x.dtype),)


REFERENCE_OPS = [WmoeWcmaFrequency, WmoeMoeExperts]
