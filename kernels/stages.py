"""The fused stages' specs, as data: the one registry of how every Triton kernel of :mod:`wmoe.kernels` is launched.

One :class:`~wmoe.kernels.spec.StageSpec` per stage, one :class:`~wmoe.kernels.spec.KernelSpec` per kernel: the
arguments in launch order with their roles, the per-target tiles, the grid, the constexprs that follow from the
dims. The kernels themselves (the ``@triton.jit`` functions) stay in ``<stage>_triton.py`` and are named here by
``"<module>:<function>"``, imported only when a kernel is launched or compiled (:attr:`KernelSpec.fn`).

This module imports neither torch nor Triton: the TensorRT engine build reads the plugins' launch formulas from it
on a machine that has neither (a Jetson building its engine in JetPack's Python from a prebuilt kernel store), and
so do the AOT compiler and the kernel bench. The ``<stage>_triton.py`` launchers import their stage from here.
"""
from __future__ import annotations

from typing import Any, Dict

from .spec import Config, CustomOp, KernelSpec, Plugin, StageSpec, cdiv, ins, next_pow2, outs, scalars

# --- wcma_frequency (Eq. 5-6): kernels in wcma_frequency_triton.py; the resource report behind the tiles is in
# docs/kernels.md ---


def _wcma_dims(d: Dict[str, Any]) -> Dict[str, Any]:
    d.setdefault("h", cdiv(d["H"], 2))
    d.setdefault("w", cdiv(d["W"], 2))
    return d


WCMA_POOL = KernelSpec(
    "wcma_pool", "wcma_frequency_triton:_pool_kernel",
    ins("x_ptr", t="*T") + scalars("B", "H", "W", "h", "w", "C") + outs("p_ptr"),
    configs={"default": Config({"BLOCK_P": 32, "BLOCK_C": 64}, num_warps=4)},
    grid=lambda d, c: (d["B"], cdiv(d["C"], c["BLOCK_C"])), aligned=("C",))
WCMA_GEMV = KernelSpec(
    "wcma_gemv", "wcma_frequency_triton:_gemv_kernel",
    ins("p_ptr", "w_ptr", "bias_ptr") + scalars("B", "C") + outs("g_ptr"),
    configs={"default": Config({"BLOCK_B": 16, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4)},
    grid=lambda d, c: (cdiv(d["B"], c["BLOCK_B"]), cdiv(d["C"], c["BLOCK_N"])), aligned=("C",))
_MAIN_INS = (ins("x_ptr", t="*T") + ins("g_ptr") + ins("wpw_ptr", t="*T") + ins("bpw_ptr") + ins("wl_ptr", t="*T")
             + ins("bl_ptr"))
# Chosen from the compiler's resource report (docs/kernels.md; no GPU measured them), every one within the 48 KB of
# shared memory a TensorRT AOT plugin may use without an opt-in. fp16: sm_90 BLOCK_M 64 -> wgmma (32 gives mma.sync
# only), one stage to stay within 48 KB; sm_87 (16 SMs, 204 GB/s) 64: half the weight re-reads per position;
# sm_80 (108 SMs) 32: 128 registers, two stages of cp.async, twice the blocks at small batch. fp32 (IEEE FMA or
# TF32): 16 x 16 tiles everywhere (32 x 32 takes 69 KB of shared memory).
WCMA_MAIN = KernelSpec(
    "wcma_main", "wcma_frequency_triton:_wcma_main_kernel",
    _MAIN_INS + scalars("B", "H", "W", "h", "w", "C", "D") + outs("out_ptr", t="*T"),
    configs={"default": Config({"BLOCK_M": 32, "BLOCK_K": 32, "BLOCK_N": 32}, num_warps=8, num_stages=2),
             "default/fp32": Config({"BLOCK_M": 16, "BLOCK_K": 32, "BLOCK_N": 16}, num_warps=8, num_stages=2),
             "sm_87/fp16": Config({"BLOCK_M": 64, "BLOCK_K": 32, "BLOCK_N": 32}, num_warps=8, num_stages=1),
             "sm_90/fp16": Config({"BLOCK_M": 64, "BLOCK_K": 32, "BLOCK_N": 32}, num_warps=8, num_stages=1)},
    grid=lambda d, c: (cdiv(d["B"] * d["h"] * d["w"], c["BLOCK_M"]),),
    shape_constexprs=lambda d: {"BLOCK_D": next_pow2(d["D"], 16)},
    options={"FP32": "ieee"}, aot_dims={"D": 192}, aligned=("C", "D"))
WCMA_FREQUENCY = StageSpec(
    "wcma_frequency", (WCMA_POOL, WCMA_GEMV, WCMA_MAIN), derive=_wcma_dims,
    launcher="wcma_frequency_triton:wcma_frequency_triton", reference="wcma_ref:wcma_frequency_ref",
    op=CustomOp("(Tensor x, Tensor w_global, Tensor b_global, Tensor w_pw, Tensor b_pw, Tensor w_local, "
                "Tensor b_local) -> Tensor", fake="wcma_ref:wcma_frequency_fake"),
    # the main kernel only: its global branch g (a GAP and a GEMV, Eq. 5) is standard ops in the graph
    plugin=Plugin("WmoeWcmaFrequency", "wcma_main", attrs=("hidden", "aot"),
                  dims={"B": (0, 0), "H": (0, 1), "W": (0, 2), "C": (0, 3), "D": "hidden"},
                  outputs=lambda d: ((d["B"], d["h"], d["w"], d["C"]),),
                  translation="wcma_ref:wcma_frequency_onnx", reference="wcma_ref:wcma_main_ref"))

# --- wcma_attention (Eq. 5-7): kernels in wcma_attention_triton.py; the pool and GEMV pre-pass are the frequency
# stage's kernels ---

# the frequency stage's main kernel plus two queries: its tiles, except on sm_87 where 64 rows spill (88 B in the
# general variant): 32 rows and two stages there, as on sm_80
WCMA_ATTN = KernelSpec(
    "wcma_attn", "wcma_attention_triton:_wcma_attn_kernel",
    _MAIN_INS + ins("q_ptr") + scalars("B", "H", "W", "h", "w", "C", "D", "T", "NT")
    + outs("acc_ptr", "m_ptr", "l_ptr"),
    configs={k: v for k, v in WCMA_MAIN.configs.items() if k != "sm_87/fp16"},
    grid=lambda d, c: (d["NT"], d["B"]),
    shape_constexprs=lambda d: {"BLOCK_D": next_pow2(d["D"], 16), "BLOCK_T": next_pow2(d["T"], 2)},
    options={"FP32": "ieee"}, derived=lambda d, c: {"NT": cdiv(d["h"] * d["w"], c["BLOCK_M"])},
    aot_dims={"D": 192, "T": 2}, aligned=("C", "D"))
WCMA_ATTN_COMBINE = KernelSpec(
    "wcma_attn_combine", "wcma_attention_triton:_attn_combine_kernel",
    ins("acc_ptr", "m_ptr", "l_ptr") + scalars("B", "C", "T", "NT") + outs("z_ptr"),
    configs={"default": Config({"BLOCK_C": 64}, num_warps=4)},
    grid=lambda d, c: (d["B"], cdiv(d["C"], c["BLOCK_C"])),
    shape_constexprs=lambda d: {"BLOCK_T": next_pow2(d["T"], 2)}, aot_dims={"T": 2}, aligned=("C",))
WCMA_ATTENTION = StageSpec(
    "wcma_attention", (WCMA_POOL, WCMA_GEMV, WCMA_ATTN, WCMA_ATTN_COMBINE), derive=_wcma_dims,
    launcher="wcma_attention_triton:wcma_attention_triton", reference="wcma_ref:wcma_attention_ref")

# --- moe_experts (Eq. 8): kernels in moe_experts_triton.py ---

MOE_ROUTER = KernelSpec(
    "moe_router", "moe_experts_triton:_router_kernel",
    ins("x_ptr", t="*T") + ins("wr_ptr", "br_ptr") + scalars("B", "C", "NE", "TOPK") + outs("w_out_ptr")
    + outs("e_out_ptr", t="*i32"),
    configs={"default": Config({"BLOCK_B": 16, "BLOCK_K": 32}, num_warps=4)},
    grid=lambda d, c: (cdiv(d["B"], c["BLOCK_B"]),),
    shape_constexprs=lambda d: {"BLOCK_E": next_pow2(d["NE"], 2)}, aot_dims={"NE": 8}, aligned=("C",))
_ROWS = ins("order_ptr", "offsets_ptr", "counts_ptr", t="*i32")
# rows of the sorted (token, slot) list per program; the grid is the worst case for one expert: B rows (a token
# picks k distinct experts, so no expert gets more than B of the B·k rows); programs past their count exit at once
MOE_UP = KernelSpec(
    "moe_up", "moe_experts_triton:_expert_up_kernel",
    ins("x_ptr", "w1_ptr", t="*T") + ins("b1_ptr") + _ROWS + scalars("C", "DH", "TOPK") + outs("h_ptr", t="*T"),
    configs={"default": Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4)},
    grid=lambda d, c: (d["NE"], cdiv(d["B"], c["BLOCK_M"]), cdiv(d["DH"], c["BLOCK_N"])),
    options={"FP32": "ieee"}, aligned=("C", "DH"))
MOE_DOWN = KernelSpec(
    "moe_down", "moe_experts_triton:_expert_down_kernel",
    ins("h_ptr", "w2_ptr", t="*T") + ins("b2_ptr") + _ROWS + ins("wts_ptr") + scalars("C", "DH") + outs("y_ptr"),
    configs=MOE_UP.configs,
    grid=lambda d, c: (d["NE"], cdiv(d["B"], c["BLOCK_M"]), cdiv(d["C"], c["BLOCK_N"])),
    options={"FP32": "ieee"}, aligned=("C", "DH"))
MOE_COMBINE = KernelSpec(
    "moe_combine", "moe_experts_triton:_combine_kernel",
    ins("y_ptr") + scalars("B", "C", "TOPK") + outs("out_ptr", t="*T"),
    configs={"default": Config({"BLOCK_C": 128}, num_warps=4)},
    grid=lambda d, c: (d["B"], cdiv(d["C"], c["BLOCK_C"])), aligned=("C",))
MOE_EXPERTS = StageSpec(
    "moe_experts", (MOE_ROUTER, MOE_UP, MOE_DOWN, MOE_COMBINE),
    launcher="moe_experts_triton:moe_experts_triton", reference="moe_ref:moe_experts_ref",
    trace_reference="moe_ref:moe_experts_dense_ref",  # no data-dependent shapes while tracing: same numbers
    op=CustomOp("(Tensor x, Tensor w_router, Tensor b_router, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
                "int top_k) -> Tensor", fake="moe_ref:moe_experts_fake"),
    # the router only (the experts run as a dense masked GEMM in standard ops: docs/export.md)
    plugin=Plugin("WmoeMoeRouter", "moe_router", attrs=("top_k", "n_experts", "aot"),
                  dims={"B": (0, 0), "C": (0, 1), "NE": "n_experts", "TOPK": "top_k"},
                  outputs=lambda d: ((d["B"], d["TOPK"]), (d["B"], d["TOPK"])),
                  translation="moe_ref:moe_experts_onnx", reference="moe_ref:moe_router_node_ref"))


def stage_specs() -> Dict[str, StageSpec]:
    """Every fused stage's record by name, in the order a new stage is added here: the entry points
    (``dispatch.run_stage``), the custom ops, the AOT compiler, the TensorRT plugins, the plugin ONNX flavor and
    the kernel bench iterate these. Imports neither torch nor Triton."""
    return {s.name: s for s in (WCMA_FREQUENCY, WCMA_ATTENTION, MOE_EXPERTS)}


def plugin_stages() -> Dict[str, StageSpec]:
    """The stages that have a TensorRT plugin, by its op type (the ONNX node = the plugin name)."""
    return {s.plugin.op: s for s in stage_specs().values() if s.plugin is not None}
