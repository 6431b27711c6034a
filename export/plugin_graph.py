"""The plugin flavor: the fused stages as custom ONNX nodes that TensorRT runs as AOT plugins.

A TensorRT quickly deployable AOT plugin (``tensorrt.plugin.aot_impl``) launches exactly one kernel, so each
custom node is one Triton kernel of :mod:`wmoe.kernels` and the cheap glue around it stays in standard ONNX ops.
Nodes (domain ``wmoe``, opset 1), named and attributed as :mod:`wmoe.export.trt_plugins` registers them:

Every node also carries ``plugin_namespace="wmoe"`` (string), which the ONNX parser uses to find the creator.

* ``WmoeWcmaFrequency(x, g, Wpw, bpw, W2, b2; hidden:int, aot:int) -> F_p`` — the main kernel of Eq. 5-6
  (``_wcma_main_kernel``): x (B, H, W, C) -> (B, ⌈H/2⌉, ⌈W/2⌉, C). Its global branch
  ``g = W_1 ReLU(GAP(2a)) + b_1`` (a GAP and a GEMV, Eq. 5) is computed before it with standard ops, in fp32.
* ``WmoeMoeRouter(x, Wr, br; top_k:int, n_experts:int, aot:int) -> (weights f32 (B, k), experts i32 (B, k))`` —
  the router of Eq. 8 (``_router_kernel``: softmax, top-k with ties to the lower index, renormalized). The k
  experts then run as a dense masked batched GEMM in standard ops (every expert is hit from batch ~16 on, so the
  layer reads all expert weights anyway; see docs/kernels.md).

fp32 operands the kernels expect (biases, ``g``, router weights) are cast in the graph, so the fp16 variant feeds
the plugins what the AOT PTX was compiled for. Weights are initializers fed as inputs. The exporter reaches the
stages through the ``torch.library`` custom ops (``wmoe::wcma_frequency``, ``wmoe::moe_experts``) and
:func:`translation_table`. For checking without TensorRT, :data:`REFERENCE_OPS` implements both nodes for
``onnx.reference.ReferenceEvaluator``, mirroring the kernels' arithmetic in float64.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from onnx.defs import OpSchema
from onnx.reference.op_run import OpRun

from wmoe.contract import PLUGIN_DOMAIN as DOMAIN, PLUGIN_MOE_OP as MOE_OP, PLUGIN_WCMA_OP as WCMA_OP

PLUGIN_OPS = (WCMA_OP, MOE_OP)
# The ONNX parser's fallback plugin importer looks the creator up by op type, "plugin_version" (default "1") and
# this string attribute (default ""), ignoring the ONNX domain: without it our creators (namespace "wmoe") are
# "not found".
NAMESPACE_ATTR = "plugin_namespace"
INT_MAX = 2**62


def _schema(name: str, inputs: Sequence[Tuple[str, str]], outputs: Sequence[Tuple[str, str]],
            attrs: Sequence[str]) -> OpSchema:
    fp = OpSchema.FormalParameter
    return OpSchema(name, DOMAIN, 1, inputs=[fp(n, t) for n, t in inputs], outputs=[fp(n, t) for n, t in outputs],
                    type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "kernel dtype"),
                                      ("F", ["tensor(float)"], "fp32 operands"),
                                      ("I", ["tensor(int32)"], "indices")],
                    attributes=[OpSchema.Attribute(a, OpSchema.AttrType.INT, "") for a in attrs]
                    + [OpSchema.Attribute(NAMESPACE_ATTR, OpSchema.AttrType.STRING, "TensorRT plugin namespace")])


WCMA_SCHEMA = _schema(WCMA_OP, [("x", "T"), ("g", "F"), ("w_pw", "T"), ("b_pw", "F"), ("w_local", "T"),
                                ("b_local", "F")], [("out", "T")], ["hidden", "aot"])
MOE_SCHEMA = _schema(MOE_OP, [("x", "T"), ("w_router", "F"), ("b_router", "F")],
                     [("weights", "F"), ("experts", "I")], ["top_k", "n_experts", "aot"])


def translation_table() -> Dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""
    import onnxscript
    from onnxscript import opset18 as op
    from onnxscript.values import Op

    from wmoe.kernels import ops  # noqa: F401 - registers torch.ops.wmoe.*

    opset = onnxscript.values.Opset(DOMAIN, 1)
    wcma = Op(opset, WCMA_OP, WCMA_SCHEMA)
    router = Op(opset, MOE_OP, MOE_SCHEMA)
    FLOAT = 1  # onnx.TensorProto.FLOAT

    def const(v: List, dtype=np.int64):
        return op.Constant(value=onnxscript.ir.tensor(np.asarray(v, dtype=dtype)))

    def wcma_fn(x, w_global, b_global, w_pw, b_pw, w_local, b_local):
        # Eq. 5 global branch: F_L + F_H = 2a (top-left pixel of each 2x2 block; odd sides need no padding here)
        a = op.Slice(x, const([0, 0]), const([INT_MAX, INT_MAX]), const([1, 2]), const([2, 2]))
        pooled = op.Relu(op.Mul(op.ReduceMean(op.Cast(a, to=FLOAT), const([1, 2]), keepdims=0),
                                const(2.0, np.float32)))
        g = op.Gemm(pooled, op.Cast(w_global, to=FLOAT), op.Cast(b_global, to=FLOAT), transB=1)
        hidden = w_pw.shape[0] if getattr(w_pw, "shape", None) is not None else 0
        return wcma(x, g, w_pw, op.Cast(b_pw, to=FLOAT), w_local, op.Cast(b_local, to=FLOAT),
                    hidden=int(hidden), aot=1, plugin_namespace=DOMAIN)

    def moe_fn(x, w_router, b_router, w1, b1, w2, b2, top_k: int):
        n_experts = int(w1.shape[0])
        weights, experts = router(x, op.Cast(w_router, to=FLOAT), op.Cast(b_router, to=FLOAT), top_k=top_k,
                                  n_experts=n_experts, aot=1, plugin_namespace=DOMAIN)
        # (B, N) combine weights, zero for the experts not chosen (Eq. 8's w_k)
        ids = op.Range(const(0), const(n_experts), const(1))
        hit = op.Cast(op.Equal(op.Cast(op.Unsqueeze(experts, const([2])), to=7), ids), to=FLOAT)
        dense_w = op.ReduceSum(op.Mul(hit, op.Unsqueeze(weights, const([2]))), const([1]), keepdims=0)
        h = op.Add(op.Einsum(x, w1, equation="bc,ncd->nbd"), op.Unsqueeze(b1, const([1])))
        # GELU (tanh form, the experts' activation): opset 18 has no Gelu(approximate="tanh")
        k = op.CastLike(const(math.sqrt(2.0 / math.pi), np.float32), h)
        c = op.CastLike(const(0.044715, np.float32), h)
        half = op.CastLike(const(0.5, np.float32), h)
        one = op.CastLike(const(1.0, np.float32), h)
        h = op.Mul(op.Mul(half, h), op.Add(one, op.Tanh(op.Mul(k, op.Add(h, op.Mul(c, op.Mul(h, op.Mul(h, h))))))))
        y = op.Add(op.Einsum(h, w2, equation="nbd,ndc->nbc"), op.Unsqueeze(b2, const([1])))
        return op.CastLike(op.Einsum(op.Cast(y, to=FLOAT), dense_w, equation="nbc,bn->bc"), x)

    return {torch.ops.wmoe.wcma_frequency.default: wcma_fn, torch.ops.wmoe.moe_experts.default: moe_fn}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def wcma_main_reference(x, g, w_pw, b_pw, w_local, b_local) -> np.ndarray:
    """What ``_wcma_main_kernel`` computes (float64): ``F_p = (2a - LL)·σ(loc + g) + LL``, Eq. 5-6."""
    from wmoe.kernels.wcma_ref import haar_dwt_ref
    xt = _t(x)
    ll, lh, hl, hh = haar_dwt_ref(xt)
    s = ll + lh + hl + hh  # 2a
    loc = torch.nn.functional.linear(torch.relu(torch.nn.functional.linear(s, _t(w_pw), _t(b_pw))),
                                     _t(w_local), _t(b_local))
    f_h = s - ll
    return (f_h * torch.sigmoid(loc + _t(g)[:, None, None, :]) + ll).numpy()


class WmoeWcmaFrequency(OpRun):
    op_domain = DOMAIN

    def _run(self, x, g, w_pw, b_pw, w_local, b_local, hidden=None, aot=None, plugin_namespace=None):
        if hidden is not None and int(hidden) != w_pw.shape[0]:
            raise ValueError(f"{WCMA_OP}: attribute hidden={hidden} but w_pw has {w_pw.shape[0]} rows")
        return (wcma_main_reference(x, g, w_pw, b_pw, w_local, b_local).astype(x.dtype),)


class WmoeMoeRouter(OpRun):
    op_domain = DOMAIN

    def _run(self, x, w_router, b_router, top_k=None, n_experts=None, aot=None, plugin_namespace=None):
        from wmoe.kernels.moe_ref import moe_router_ref
        w, e = moe_router_ref(_t(x), _t(w_router), _t(b_router), int(top_k))
        return w.numpy().astype(np.float32), e.numpy().astype(np.int32)


REFERENCE_OPS = [WmoeWcmaFrequency, WmoeMoeRouter]
