"""Ahead-of-time compilation of every kernel for sm_80, sm_87 (Jetson Orin) and sm_90 on a CPU-only machine, and
the compiler's resource report of the shipped configurations pinned: no register spills, wgmma on sm_90, mma.sync
on sm_80/87, vectorized loads / 16-byte cp.async in the 16-byte-aligned variant and none in the general one,
the plugin kernels within 48 KB of shared memory, TF32 MMAs when asked for.

Runs the compiler in subprocesses: the test session sets TRITON_INTERPRET=1, under which @triton.jit functions
cannot be compiled. One compile of the shipped matrix (fp16: every kernel; fp32: the tensor-core kernels) is
shared by the tests; the full fp32 matrix is ``slow``.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from wmoe.kernels.aot import SMEM_LIMIT
from wmoe.kernels.spec import AOT_TARGETS

ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
SHIPPED = {"wcma_pool", "wcma_gemv", "wcma_main", "wcma_attn", "wcma_attn_combine", "moe_router", "moe_up",
           "moe_down", "moe_combine"}
TENSOR_CORE = {"wcma_main", "wcma_attn", "moe_up", "moe_down"}  # the kernels whose fp16 GEMMs use MMAs
PLUGIN_KERNELS = {"wcma_main", "moe_router"}  # TensorRT AOT plugins: no shared-memory opt-in above 48 KB
PLUGIN_SMEM = 48 * 1024


def _aot(out, *args):
    r = subprocess.run([sys.executable, "-m", "wmoe.kernels.aot", "--out", str(out), *args], capture_output=True,
                       text=True, env=ENV, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return {a["name"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    d16 = tmp_path_factory.mktemp("aot16")
    d32 = tmp_path_factory.mktemp("aot32")
    arts = _aot(d16, "--dtypes", "fp16")
    arts32 = _aot(d32, "--dtypes", "fp32", "--kernels", "wcma_main,wcma_attn")
    return {**{n: (a, d16) for n, a in arts.items()}, **{n: (a, d32) for n, a in arts32.items()}}


def _check_artifact(a, d):
    assert a["problems"] == [], (a["name"], a["problems"])
    ptx = (d / a["ptx"]).read_text()
    assert ".entry" in ptx and a["kernel"] in ptx
    assert (d / a["cubin"]).read_bytes()[:4] == b"\x7fELF"
    assert 0 < a["registers"] <= 255 and a["shared_bytes"] <= SMEM_LIMIT[AOT_TARGETS[a["target"]]]
    # no Triton scratch, and the PTX entry declares exactly the launch arguments (no hidden scratch pointers: a
    # TensorRT AOT launch does not pass them, docs/kernels.md)
    assert a["global_scratch_bytes"] == 0 and a["profile_scratch_bytes"] == 0, a["name"]
    from wmoe.kernels.aot import entry_params
    assert len(entry_params(ptx)) == len(a["signature"]) == a["entry_params"], a["name"]
    roles = [role for _, role, _ in a["signature"]]
    assert roles == sorted(roles, key=["in", "scalar", "out"].index)
    assert all(t == "i32" for _, role, t in a["signature"] if role == "scalar")
    # no register spills in any shipped configuration
    assert a["stack_bytes"] == 0 and a["spill_bytes"] == 0, (a["name"], a["stack_bytes"], a["spill_bytes"])
    # the lowest PTX ISA it assembles at, recorded for the engine build (which then needs no ptxas): at most the ISA
    # Triton wrote, at least the one that introduced the target (tests/test_export_trt_plugins.py checks the value)
    from wmoe.kernels.aot import TARGET_MIN_ISA
    isa, own = (tuple(int(x) for x in a[k].split(".")) for k in ("lowest_ptx_isa", "ptx_version"))
    tgt = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)
    assert TARGET_MIN_ISA[tgt] <= isa <= own, (a["name"], isa, own)


def test_compile_all_targets_and_variants(shipped):
    from wmoe.kernels.aot import kernel_specs
    names = {a["spec"] for a, _ in shipped.values()}
    assert names == set(kernel_specs()) and SHIPPED <= names  # every kernel of every stage spec
    assert {a["target"] for a, _ in shipped.values()} == set(AOT_TARGETS)
    for spec in names:  # every kernel in both variants on every target
        for t in AOT_TARGETS:
            assert {a["variant"] for a, _ in shipped.values() if a["spec"] == spec and a["target"] == t
                    and a["dtype"] == "fp16"} == {"general", "a16"}, (spec, t)
    for a, d in shipped.values():
        _check_artifact(a, d)


def test_resource_report_of_the_shipped_configurations(shipped):
    for a, _ in shipped.values():
        name, t = a["name"], a["target"]
        if a["spec"] in PLUGIN_KERNELS:
            assert a["shared_bytes"] <= PLUGIN_SMEM, name
        if a["spec"] in TENSOR_CORE and a["dtype"] == "fp16":
            # the WCMA tiles are 64 rows on sm_90: Hopper's warpgroup MMA; 16-row MoE tiles stay on mma.sync
            want = "wgmma" if t == "sm_90" and a["spec"].startswith("wcma") else "mma"
            assert a["mma"] == want, (name, a["mma"])
        if a["variant"] == "a16":
            assert set(a["aligned"]) >= {"C"}, name
        # the general variant cannot vectorize (any alignment); the aligned one does where it reads tiles
        if a["variant"] == "general":
            assert a["vector_loads"] == 0 and a["cp_async_16"] == 0, name
        elif a["spec"] in {"wcma_main", "wcma_attn", "wcma_pool", "wcma_gemv", "moe_up", "moe_down"}:
            assert a["vector_loads"] + a["cp_async_16"] > 0, name
    # the numbers: wcma_main fp16 sm_90 went from 91 scalar loads to vectorized loads with the hints
    main90 = shipped["wcma_main_fp16_sm_90_a16"][0]
    assert main90["vector_loads"] >= 8 and main90["registers"] < 160 and main90["mma"] == "wgmma"


def test_tf32_option_uses_tensor_cores(tmp_path):
    code = ("import json, sys, pathlib; from wmoe.kernels.aot import compile_kernel, kernel_specs\n"
            "k = kernel_specs()['wcma_main']; out = pathlib.Path(sys.argv[1]); r = {}\n"
            "for t in ('sm_80', 'sm_90'):\n"
            "    for p in ('ieee', 'tf32', 'tf32x3'):\n"
            "        a = compile_kernel(k, 'fp32', t, 'a16', out, FP32=p)\n"
            "        ptx = (out / a.ptx).read_text()\n"
            "        r[t + '/' + p] = [a.mma, ptx.count('tf32'), a.spill_bytes + a.stack_bytes, a.problems]\n"
            "print(json.dumps(r))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=ENV,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    for t in ("sm_80", "sm_90"):
        assert rep[f"{t}/ieee"][:2] == ["none", 0]  # exact fp32: FMA, no tensor cores
        for p in ("tf32", "tf32x3"):
            mma, n_tf32, spill, problems = rep[f"{t}/{p}"]
            assert mma in ("mma", "wgmma") and n_tf32 > 0 and problems == [], (t, p, rep[f"{t}/{p}"])
            # TF32 fits the fp32 tiles; TF32X3's three MMAs per product spill (stack + spill bytes with Triton
            # 3.8: 48 on sm_80, 188 on sm_90; docs/kernels.md): pinned so it cannot grow unnoticed
            assert spill == 0 if p == "tf32" else spill <= 256, (t, p, spill)
    assert rep["sm_80/tf32"][0] == "mma"


@pytest.mark.slow
def test_full_fp32_matrix(tmp_path):
    for a in _aot(tmp_path, "--dtypes", "fp32").values():
        _check_artifact(a, tmp_path)


def test_interpreter_refuses_aot(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "wmoe.kernels.aot", "--out", str(tmp_path)], capture_output=True,
                       text=True, env=env)
    assert r.returncode != 0 and "unset TRITON_INTERPRET" in r.stderr


def test_router_never_reads_back_its_outputs():
    """The router stored the unnormalized top-k weights and read them back with no barrier between the threads
    that wrote and read one address (a race in the compiled layout). Its Triton IR now loads only its three
    inputs (x, W_r, b_r): the result cannot depend on thread timing."""
    code = (
        "import re, triton\n"
        "from triton.backends.compiler import GPUTarget\n"
        "from wmoe.kernels.aot import ast_source, kernel_specs\n"
        "k = kernel_specs()['moe_router']\n"
        "cfg, consts = k.config('sm_87', 'fp16'), k.constexprs('sm_87', 'fp16', dict(k.aot_dims))\n"
        "sig = {a.name: a.type.replace('T', 'fp16') for a in k.args}\n"
        "sig.update({c: 'constexpr' for c in consts})\n"
        "c = triton.compile(ast_source(k.fn, sig, consts), target=GPUTarget('cuda', 87, 32),\n"
        "                   options={'num_warps': cfg.num_warps})\n"
        "print(len(re.findall(r'tt\\.load', c.asm['ttir'])), sum(a.role == 'in' for a in k.args))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    loads, inputs = map(int, r.stdout.split())
    assert loads == inputs == 3
