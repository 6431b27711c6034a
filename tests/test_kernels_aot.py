"""Ahead-of-time compilation of every kernel for sm_80, sm_87 (Jetson Orin) and sm_90 on a CPU-only machine.

Runs in a subprocess: the test session sets TRITON_INTERPRET=1, under which @triton.jit functions cannot be
compiled.
"""
import json
import os
import subprocess
import sys

from wmoe.kernels.aot import SMEM_LIMIT, TARGETS


def test_compile_all_targets(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "wmoe.kernels.aot", "--out", str(tmp_path), "--dtypes", "fp16"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    arts = json.loads((tmp_path / "manifest.json").read_text())["artifacts"]
    assert {a["name"].rsplit("_fp16_", 1)[0] for a in arts} == {
        "wcma_pool", "wcma_gemv", "wcma_main", "wcma_attn", "wcma_attn_combine",
        "moe_router", "moe_up", "moe_down", "moe_combine"}
    assert {a["target"] for a in arts} == set(TARGETS)
    for a in arts:
        assert a["problems"] == [], (a["name"], a["problems"])
        ptx = (tmp_path / a["ptx"]).read_text()
        assert ".entry" in ptx and a["kernel"] in ptx
        assert (tmp_path / a["cubin"]).read_bytes()[:4] == b"\x7fELF"
        assert 0 < a["registers"] <= 255 and a["shared_bytes"] <= SMEM_LIMIT[TARGETS[a["target"]]]
        assert a["global_scratch_bytes"] == 0  # TensorRT passes null for Triton's scratch arguments
        roles = [role for _, role, _ in a["signature"]]
        assert roles == sorted(roles, key=["in", "scalar", "out"].index)
        assert all(t == "i32" for _, role, t in a["signature"] if role == "scalar")


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
        "from wmoe.kernels.aot import MOE_ROUTER_ARGS, ast_source, kernel_specs\n"
        "fn, args, consts, warps, stages = kernel_specs()['moe_router']\n"
        "sig = {n: t.replace('T', 'fp16') for n, _, t in args}\n"
        "sig.update({k: 'constexpr' for k in consts})\n"
        "k = triton.compile(ast_source(fn, sig, consts), target=GPUTarget('cuda', 87, 32),\n"
        "                   options={'num_warps': warps})\n"
        "print(len(re.findall(r'tt\\.load', k.asm['ttir'])), sum(r == 'in' for _, r, _ in MOE_ROUTER_ARGS))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    loads, inputs = map(int, r.stdout.split())
    assert loads == inputs == 3
