"""Ahead-of-time compilation of the Triton kernels for the TensorRT plugin path, on any machine (no GPU needed).

``compile_all(out_dir)`` compiles every kernel × dtype × target (sm_80 A100, sm_87 Jetson Orin, sm_90 H100) to PTX
and cubin with ``triton.compile(ASTSource, target=GPUTarget(...))``, runs ``ptxas -v`` for registers / shared
memory / stack, and writes ``manifest.json``. Each artifact is checked against what a TensorRT plugin can launch:
arguments ordered inputs, int32 scalars, outputs; no global/profile scratch (TensorRT passes null for Triton's
hidden scratch arguments); registers ≤ 255 per thread; shared memory within the target's per-block limit.

    python -m wmoe.kernels.aot --out build/kernels
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

TARGETS = {"sm_80": 80, "sm_87": 87, "sm_90": 90}
SMEM_LIMIT = {80: 163 * 1024, 87: 163 * 1024, 90: 227 * 1024}  # max dynamic shared memory per block (bytes)
MAX_REGS = 255

# name -> (kernel, ordered args as (name, role, type template), constexprs); roles: in / scalar / out.
# "T" is replaced by the kernel dtype's pointer type.
WCMA_MAIN_ARGS = [("x_ptr", "in", "*T"), ("g_ptr", "in", "*fp32"), ("wpw_ptr", "in", "*T"), ("bpw_ptr", "in", "*fp32"),
                  ("wl_ptr", "in", "*T"), ("bl_ptr", "in", "*fp32"), ("B", "scalar", "i32"), ("H", "scalar", "i32"),
                  ("W", "scalar", "i32"), ("h", "scalar", "i32"), ("w", "scalar", "i32"), ("C", "scalar", "i32"),
                  ("D", "scalar", "i32"), ("out_ptr", "out", "*T")]
WCMA_POOL_ARGS = [("x_ptr", "in", "*T"), ("B", "scalar", "i32"), ("H", "scalar", "i32"), ("W", "scalar", "i32"),
                  ("h", "scalar", "i32"), ("w", "scalar", "i32"), ("C", "scalar", "i32"), ("p_ptr", "out", "*fp32")]
WCMA_GEMV_ARGS = [("p_ptr", "in", "*fp32"), ("w_ptr", "in", "*fp32"), ("bias_ptr", "in", "*fp32"),
                  ("B", "scalar", "i32"), ("C", "scalar", "i32"), ("g_ptr", "out", "*fp32")]

_WCMA_SCALARS = [(n, "scalar", "i32") for n in ("B", "H", "W", "h", "w", "C", "D", "T", "NT")]
WCMA_ATTN_ARGS = (WCMA_MAIN_ARGS[:6] + [("q_ptr", "in", "*fp32")] + _WCMA_SCALARS
                  + [("acc_ptr", "out", "*fp32"), ("m_ptr", "out", "*fp32"), ("l_ptr", "out", "*fp32")])
WCMA_COMBINE_ARGS = [("acc_ptr", "in", "*fp32"), ("m_ptr", "in", "*fp32"), ("l_ptr", "in", "*fp32"),
                     ("B", "scalar", "i32"), ("C", "scalar", "i32"), ("T", "scalar", "i32"), ("NT", "scalar", "i32"),
                     ("z_ptr", "out", "*fp32")]

MOE_ROUTER_ARGS = [("x_ptr", "in", "*T"), ("wr_ptr", "in", "*fp32"), ("br_ptr", "in", "*fp32"),
                   ("B", "scalar", "i32"), ("C", "scalar", "i32"), ("NE", "scalar", "i32"), ("TOPK", "scalar", "i32"),
                   ("w_out_ptr", "out", "*fp32"), ("e_out_ptr", "out", "*i32")]
MOE_UP_ARGS = [("x_ptr", "in", "*T"), ("w1_ptr", "in", "*T"), ("b1_ptr", "in", "*fp32"), ("order_ptr", "in", "*i32"),
               ("offsets_ptr", "in", "*i32"), ("counts_ptr", "in", "*i32"), ("C", "scalar", "i32"),
               ("DH", "scalar", "i32"), ("TOPK", "scalar", "i32"), ("h_ptr", "out", "*T")]
MOE_DOWN_ARGS = [("h_ptr", "in", "*T"), ("w2_ptr", "in", "*T"), ("b2_ptr", "in", "*fp32"), ("order_ptr", "in", "*i32"),
                 ("offsets_ptr", "in", "*i32"), ("counts_ptr", "in", "*i32"), ("wts_ptr", "in", "*fp32"),
                 ("C", "scalar", "i32"), ("DH", "scalar", "i32"), ("y_ptr", "out", "*fp32")]
MOE_COMBINE_ARGS = [("y_ptr", "in", "*fp32"), ("B", "scalar", "i32"), ("C", "scalar", "i32"), ("TOPK", "scalar", "i32"),
                    ("out_ptr", "out", "*T")]


def kernel_specs() -> Dict[str, tuple]:
    from .moe_triton import _combine_kernel, _expert_down_kernel, _expert_up_kernel, _router_kernel
    from .wcma_attn_triton import _attn_combine_kernel, _wcma_attn_kernel
    from .wcma_triton import _gemv_kernel, _pool_kernel, _wcma_main_kernel
    return {
        "moe_router": (_router_kernel, MOE_ROUTER_ARGS, {"BLOCK_B": 16, "BLOCK_E": 8, "BLOCK_K": 32}, 4, 2),
        "moe_up": (_expert_up_kernel, MOE_UP_ARGS, {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 32, "FP32": "ieee"}, 4, 2),
        "moe_down": (_expert_down_kernel, MOE_DOWN_ARGS, {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 32, "FP32": "ieee"}, 4, 2),
        "moe_combine": (_combine_kernel, MOE_COMBINE_ARGS, {"BLOCK_C": 128}, 4, 2),
        "wcma_pool": (_pool_kernel, WCMA_POOL_ARGS, {"BLOCK_P": 32, "BLOCK_C": 64}, 4, 2),
        "wcma_gemv": (_gemv_kernel, WCMA_GEMV_ARGS, {"BLOCK_N": 64, "BLOCK_K": 32}, 4, 2),
        # D = 192 (the default freq_hidden) -> BLOCK_D 256
        "wcma_main": (_wcma_main_kernel, WCMA_MAIN_ARGS, {"BLOCK_M": 32, "BLOCK_K": 32, "BLOCK_D": 256,
                                                          "BLOCK_N": 32, "FP32": "ieee"}, 8, 2),
        # the fused Eq. 5-7 pass and its partial merge (T = 2 text queries -> BLOCK_T 2)
        "wcma_attn": (_wcma_attn_kernel, WCMA_ATTN_ARGS, {"BLOCK_M": 32, "BLOCK_K": 32, "BLOCK_D": 256,
                                                          "BLOCK_N": 32, "BLOCK_T": 2, "FP32": "ieee"}, 8, 2),
        "wcma_attn_combine": (_attn_combine_kernel, WCMA_COMBINE_ARGS, {"BLOCK_C": 64, "BLOCK_T": 2}, 4, 2),
    }


# Per-dtype constexpr overrides. The fp32 main WCMA kernel at BLOCK_M = BLOCK_N = 32 takes 69,632 B of shared
# memory; above 48 KB a kernel needs an opt-in (cudaFuncSetAttribute) that Triton's launcher does and a TensorRT
# AOT plugin launch is not documented to do. 16 x 16 tiles take 34,816 B (the plugin limit is checked in
# wmoe.export.trt_plugins.check_plugin_artifact).
DTYPE_CONSTEXPRS = {("wcma_main", "fp32"): {"BLOCK_M": 16, "BLOCK_N": 16}}


@dataclass
class KernelArtifact:
    name: str
    kernel: str
    target: str
    dtype: str
    ptx: str
    cubin: str
    signature: List[List[str]]  # [name, role, type] in launch order
    constexprs: Dict[str, int]
    num_warps: int
    num_stages: int
    shared_bytes: int
    registers: int
    stack_bytes: int
    global_scratch_bytes: int
    ptx_version: str
    problems: List[str] = field(default_factory=list)  # plugin constraints violated: the artifact is unusable
    warnings: List[str] = field(default_factory=list)  # usable but slow (register spills)


def ast_source(fn, signature: Dict[str, str], constexprs: Dict[str, int]):
    """``triton.compiler.ASTSource`` across Triton 3.x: recent releases take the constexpr values as ``constexprs=``
    (3.6, the GPU machines', and 3.8 checked), older ones as ``constants=`` (3.2 checked): pass whichever this
    Triton's ASTSource declares."""
    import inspect

    from triton.compiler import ASTSource
    params = inspect.signature(ASTSource.__init__).parameters
    key = "constexprs" if "constexprs" in params else "constants"
    if key not in params:
        raise RuntimeError(f"this Triton's ASTSource takes neither constexprs= nor constants= ({list(params)})")
    return ASTSource(fn=fn, signature=signature, **{key: constexprs})


def _ptxas() -> Path:
    import triton
    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not p.is_file():
        raise FileNotFoundError(f"ptxas not found at {p} (it ships with the triton wheel)")
    return p


def ptxas_usage(ptx_path: Path, arch: str) -> Dict[str, int]:
    """Registers, shared memory and stack per thread from ``ptxas -v``."""
    r = subprocess.run([str(_ptxas()), "-v", f"--gpu-name={arch}", str(ptx_path), "-o", "/dev/null"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed on {ptx_path}: {r.stderr[-2000:]}")
    text = r.stderr + r.stdout
    regs = re.findall(r"Used (\d+) registers", text)
    stack = re.findall(r"(\d+) bytes stack frame", text)
    smem = re.findall(r"(\d+) bytes smem", text)
    return {"registers": int(regs[-1]) if regs else -1, "stack": int(stack[-1]) if stack else 0,
            "static_smem": int(smem[-1]) if smem else 0}


def check_artifact(a: KernelArtifact, cc: int) -> List[str]:
    problems = []
    roles = [r for _, r, _ in a.signature]
    order = {"in": 0, "scalar": 1, "out": 2}
    if [order[r] for r in roles] != sorted(order[r] for r in roles):
        problems.append("arguments are not ordered inputs, int32 scalars, outputs")
    if any(t not in ("i32",) and r == "scalar" for _, r, t in a.signature):
        problems.append("a scalar argument is not int32")
    if a.global_scratch_bytes:
        problems.append(f"needs {a.global_scratch_bytes} B of global scratch (TensorRT passes null)")
    if a.registers > MAX_REGS:
        problems.append(f"{a.registers} registers > {MAX_REGS}")
    if a.shared_bytes > SMEM_LIMIT[cc]:
        problems.append(f"{a.shared_bytes} B shared memory > {SMEM_LIMIT[cc]} on sm_{cc}")
    return problems


def compile_all(out_dir: "str | Path", targets: Sequence[str] = tuple(TARGETS), dtypes: Sequence[str] = ("fp16", "fp32"),
                progress: bool = True, kernels: Optional[Sequence[str]] = None) -> List[KernelArtifact]:
    import triton
    from triton.backends.compiler import GPUTarget

    import os
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("AOT compilation needs the Triton compiler: unset TRITON_INTERPRET (the interpreter "
                           "replaces @triton.jit functions when it is set at import time)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arts: List[KernelArtifact] = []
    specs = kernel_specs()
    unknown = set(kernels or ()) - set(specs)
    if unknown:
        raise ValueError(f"unknown kernels {sorted(unknown)} (known: {sorted(specs)})")
    for name, (fn, args, base_consts, warps, stages) in specs.items():
        if kernels and name not in kernels:
            continue
        for dtype in dtypes:
            consts = {**base_consts, **DTYPE_CONSTEXPRS.get((name, dtype), {})}
            sig = {n: t.replace("T", dtype) for n, _, t in args}
            sig.update({k: "constexpr" for k in consts})
            for tname in targets:
                cc = TARGETS[tname]
                k = triton.compile(ast_source(fn, sig, consts),
                                   target=GPUTarget("cuda", cc, 32), options={"num_warps": warps, "num_stages": stages})
                stem = f"{name}_{dtype}_{tname}"
                ptx_path, cubin_path = out / f"{stem}.ptx", out / f"{stem}.cubin"
                ptx_path.write_text(k.asm["ptx"])
                cubin_path.write_bytes(k.asm["cubin"])
                tgt = re.search(r"^\.target\s+(\w+)", k.asm["ptx"], re.M)  # sm_90 -> Triton emits sm_90a
                usage = ptxas_usage(ptx_path, tgt.group(1) if tgt else tname)
                md = k.metadata
                ver = re.search(r"^\.version\s+(\S+)", k.asm["ptx"], re.M)
                art = KernelArtifact(
                    name=stem, kernel=md.name, target=tname, dtype=dtype, ptx=ptx_path.name, cubin=cubin_path.name,
                    signature=[[n, r, sig[n]] for n, r, _ in args], constexprs=dict(consts), num_warps=warps, num_stages=stages,
                    shared_bytes=int(md.shared), registers=usage["registers"], stack_bytes=usage["stack"],
                    global_scratch_bytes=int(getattr(md, "global_scratch_size", 0) or 0)
                    + int(getattr(md, "profile_scratch_size", 0) or 0),
                    ptx_version=ver.group(1) if ver else "?")
                art.problems = check_artifact(art, cc)
                if art.stack_bytes:
                    art.warnings.append(f"{art.stack_bytes} B stack frame (register spills)")
                arts.append(art)
                if progress:
                    print(f"{stem}: {art.registers} regs, {art.shared_bytes} B smem, PTX {art.ptx_version}"
                          + (f"  PROBLEMS: {art.problems}" if art.problems else "")
                          + (f"  warnings: {art.warnings}" if art.warnings else ""), flush=True)
    manifest = {"triton": triton.__version__, "artifacts": [asdict(a) for a in arts]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return arts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wmoe.kernels.aot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--dtypes", default="fp16,fp32")
    ap.add_argument("--kernels", default="", help="comma-separated subset of the kernels (default: all)")
    a = ap.parse_args(argv)
    arts = compile_all(a.out, a.targets.split(","), a.dtypes.split(","),
                       kernels=[k for k in a.kernels.split(",") if k] or None)
    bad = [x for x in arts if x.problems]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
