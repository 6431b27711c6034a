"""Ahead-of-time compilation of the Triton kernels for the TensorRT plugin path, on any machine (no GPU needed).

``compile_all(out_dir)`` compiles every kernel of every stage spec (:func:`wmoe.kernels.stages.stage_specs`)
× dtype × target (sm_80 A100, sm_86 A10/RTX 30, sm_87 Jetson Orin, sm_89 L4/RTX 40, sm_90 H100) × variant
to PTX and cubin with
``triton.compile(ASTSource, target=GPUTarget(...))``, with each target's configuration from the spec, runs
``ptxas -v`` for registers / spills / shared memory, reads the PTX for the instruction mix (MMA kind, vector loads,
``cp.async``) and writes ``manifest.json``. Variants: ``general`` (any pointer alignment and sizes) and ``a16``
(artifact name suffix ``_a16``: every pointer 16-byte aligned and the spec's ``aligned`` dims divisible by 16,
which is what turns the scalar loads into vectorized ones and ``cp.async``). Each artifact is checked against what
a TensorRT plugin can launch: arguments ordered inputs, int32 scalars, outputs; no global/profile scratch, and the
PTX ``.entry`` declaring exactly those arguments (:func:`exact_entry` removes Triton's hidden trailing scratch
pointers, which no plugin launch passes: docs/kernels.md); registers ≤ 255 per thread; shared memory within
the target's per-block limit. Each artifact also records the lowest PTX ISA ptxas assembles it at
(:func:`lowest_ptx_isa`), so building an engine from the directory needs no ptxas.

Compiling needs Triton (and torch: the kernel modules hold the launchers too). Reading a compiled directory does
not: the module imports neither, and :func:`entry_params`, :func:`exact_entry`, :func:`ptx_version`,
:func:`set_ptx_version` and :func:`instruction_mix` are plain text functions; :func:`ptxas_usage` and
:func:`lowest_ptx_isa` run the ptxas that ships with Triton.

    python -m wmoe.kernels.aot --out build/kernels
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .spec import AOT_TARGETS, KernelSpec

# max dynamic shared memory per block (bytes; CUDA programming guide, compute capabilities table)
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}
MAX_REGS = 255
VARIANTS = ("general", "a16")


def kernel_specs() -> Dict[str, KernelSpec]:
    """Every kernel of every stage, by AOT name (a kernel shared by two stages appears once)."""
    from .stages import stage_specs
    out: Dict[str, KernelSpec] = {}
    for stage in stage_specs().values():
        for k in stage.kernels:
            out.setdefault(k.name, k)
    return out


@dataclass
class KernelArtifact:
    name: str
    kernel: str
    spec: str  # the KernelSpec name (``wcma_main``)
    variant: str  # general / a16
    target: str
    dtype: str
    ptx: str
    cubin: str
    signature: List[List[str]]  # [name, role, type] in launch order
    constexprs: Dict[str, Any]
    aligned: List[str]  # dims the variant assumes divisible by 16 (a16: with 16-byte aligned pointers)
    num_warps: int
    num_stages: int
    shared_bytes: int
    registers: int
    stack_bytes: int
    spill_bytes: int  # ptxas spill stores + loads
    global_scratch_bytes: int  # Triton's global scratch per launch (metadata.global_scratch_size)
    profile_scratch_bytes: int  # Triton >= 3.5 profile scratch (metadata.profile_scratch_size)
    hidden_params_removed: int  # Triton's hidden trailing entry parameters removed from the PTX (exact_entry)
    entry_params: int  # parameters of the PTX .entry as written = len(signature)
    ptx_version: str  # the .version Triton wrote (its newest ISA, whatever the kernel uses)
    lowest_ptx_isa: str  # the lowest PTX ISA ptxas assembles this kernel at (lowest_ptx_isa): what a driver must JIT
    mma: str  # wgmma / mma (mma.sync) / none
    vector_loads: int  # ld.global.v2/v4 in the PTX
    cp_async: int  # cp.async (Ampere-style asynchronous copies) in the PTX
    cp_async_16: int  # of which 16-byte copies (vectorized)
    problems: List[str] = field(default_factory=list)  # plugin constraints violated: the artifact is unusable
    warnings: List[str] = field(default_factory=list)  # usable but slow (register spills)


def artifact_name(spec: str, dtype: str, target: str, variant: str = "general") -> str:
    return f"{spec}_{dtype}_{target}" + ("" if variant == "general" else f"_{variant}")


def _ptxas() -> Path:
    import triton
    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not p.is_file():
        raise FileNotFoundError(f"ptxas not found at {p} (it ships with the triton wheel)")
    return p


def ptxas_usage(ptx_path: Path, arch: str) -> Dict[str, int]:
    """Registers, shared memory, stack and spills per thread from ``ptxas -v``."""
    r = subprocess.run([str(_ptxas()), "-v", f"--gpu-name={arch}", str(ptx_path), "-o", "/dev/null"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed on {ptx_path}: {r.stderr[-2000:]}")
    text = r.stderr + r.stdout
    regs = re.findall(r"Used (\d+) registers", text)
    stack = re.findall(r"(\d+) bytes stack frame", text)
    smem = re.findall(r"(\d+) bytes smem", text)
    spill = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {"registers": int(regs[-1]) if regs else -1, "stack": int(stack[-1]) if stack else 0,
            "static_smem": int(smem[-1]) if smem else 0,
            "spill": sum(int(a) + int(b) for a, b in spill[-1:])}


# PTX ISA versions in order (PTX ISA docs); the lowest one a kernel assembles at is found with ptxas.
PTX_ISAS = tuple((7, m) for m in range(9)) + tuple((8, m) for m in range(9)) + ((9, 0), (9, 1))


def ptx_version(ptx: str) -> "tuple[int, int]":
    """The PTX's ``.version`` as (major, minor); ValueError when it has none."""
    m = re.search(r"^\s*\.version\s+(\d+)\.(\d+)", ptx, re.M)
    if not m:
        raise ValueError("PTX has no .version directive")
    return int(m.group(1)), int(m.group(2))


def set_ptx_version(ptx: str, version: "tuple[int, int]") -> str:
    """The PTX with its ``.version`` directive set to ``version``."""
    ptx_version(ptx)  # has one
    return re.sub(r"^(\s*\.version\s+)\d+\.\d+", rf"\g<1>{version[0]}.{version[1]}", ptx, count=1, flags=re.M)


def _assembles(ptx: str, version: "tuple[int, int]", arch: str) -> bool:
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.ptx"
        path.write_text(set_ptx_version(ptx, version))
        try:
            ptxas_usage(path, arch)
        except RuntimeError:
            return False
    return True


#: The PTX ISA that introduced each target (PTX ISA docs, "PTX ISA Version" per target): no lower ISA can assemble
#: for it, so the search for a kernel's lowest ISA starts there (a hint: a wrong entry only costs a longer search).
TARGET_MIN_ISA = {"sm_80": (7, 0), "sm_86": (7, 1), "sm_87": (7, 4), "sm_89": (7, 8), "sm_90": (7, 8),
                  "sm_90a": (8, 0)}


def lowest_ptx_isa(ptx: str, assembles_as_is: bool = False, guess: Optional["tuple[int, int]"] = None
                   ) -> "tuple[int, int]":
    """The lowest PTX ISA at which this PTX assembles for its ``.target``, verified with the ptxas that ships with
    Triton (a binary search from the target's first ISA: a kernel that assembles at one ISA assembles at every later
    one). Triton stamps its newest ISA whatever the kernel uses; the fp32 main WCMA kernel, e.g., needs 8.3
    (``used_bytes_mask``). Computed once at compile time into the manifest (``lowest_ptx_isa``), so an engine build
    from a prebuilt store needs no ptxas. ``assembles_as_is``: the caller already ran ptxas on it at its own ISA;
    ``guess``: probed first (and the ISA below it), two ptxas runs when right -- the compiler passes the previous
    kernel's result for the same target. ValueError: no ``.target``, or it does not assemble even at its own ISA."""
    m = re.search(r"^\s*\.target\s+(\w+)", ptx, re.M)
    if not m:
        raise ValueError("PTX has no .target directive")
    arch, own = m.group(1), ptx_version(ptx)
    cands = [v for v in PTX_ISAS if TARGET_MIN_ISA.get(arch, PTX_ISAS[0]) <= v < own] + [own]
    if not assembles_as_is and not _assembles(ptx, own, arch):
        raise ValueError(f"PTX does not assemble for {arch} even at its own ISA {own[0]}.{own[1]} (ptxas from "
                         "the installed Triton is older than the one that produced it?)")
    lo, hi = 0, len(cands) - 1  # invariant: cands[hi] assembles, nothing below cands[lo] does
    probe = cands.index(tuple(guess)) if guess is not None and tuple(guess) in cands else None
    while lo < hi:
        mid = probe if probe is not None and lo <= probe < hi else (lo + hi) // 2
        if _assembles(ptx, cands[mid], arch):
            hi, probe = mid, mid - 1  # then the ISA just below: if it fails, mid is the lowest
        else:
            lo, probe = mid + 1, None
    return cands[hi]

_ENTRY = re.compile(r"(\.entry\s+(\w+)\s*\()([^)]*)(\))")


def entry_params(ptx: str) -> List[str]:
    """The ``.param`` declarations of the PTX's (one) ``.entry``, in order."""
    m = _ENTRY.search(ptx)
    if not m:
        raise ValueError("PTX has no .entry")
    return [p.strip() for p in m.group(3).split(",") if p.strip()]


def exact_entry(ptx: str, n_args: int) -> "tuple[str, int]":
    """``(ptx, removed)``: the PTX with its ``.entry`` declaring exactly the ``n_args`` launch arguments.

    Triton >= 3.3 appends hidden trailing pointer parameters to every kernel (global scratch, and from 3.5 profile
    scratch) that a launcher other than Triton's does not know about. TensorRT's AOT plugin launch passes the
    inputs, the int32 extra args and the outputs -- nothing else (docs/kernels.md: what TensorRT and
    torch-tensorrt say). A kernel whose scratch sizes are 0 never reads these parameters, so they are removed from
    the declaration; a PTX that reads one (``ld.param`` of it) is refused (ValueError): it needs scratch memory that
    no plugin launch provides."""
    m = _ENTRY.search(ptx)
    if not m:
        raise ValueError("PTX has no .entry")
    params = entry_params(ptx)
    if len(params) < n_args:
        raise ValueError(f"the PTX entry {m.group(2)} has {len(params)} parameters, fewer than the {n_args} "
                         "launch arguments")
    hidden = params[n_args:]
    for decl in hidden:
        name = decl.split()[-1]
        if not re.match(r"\.param\s+\.u64\b", decl):
            raise ValueError(f"hidden parameter {name} of {m.group(2)} is not a pointer ({decl})")
        if re.search(rf"\[{re.escape(name)}(?:\+\d+)?\]", ptx):
            raise ValueError(f"{m.group(2)} reads its hidden parameter {name} (Triton scratch memory): no plugin "
                             "launch passes it")
    if not hidden:
        return ptx, 0
    body = ",\n".join("\t" + p for p in params[:n_args])
    return ptx[:m.start(3)] + "\n" + body + "\n" + ptx[m.end(3):], len(hidden)


def instruction_mix(ptx: str) -> Dict[str, Any]:
    """What the PTX does with the tensor cores and memory: the MMA kind, vectorized global loads, ``cp.async``."""
    mma = "wgmma" if re.search(r"\bwgmma\.mma_async", ptx) else "mma" if re.search(r"\bmma\.sync", ptx) else "none"
    cp = re.findall(r"\bcp\.async\.c[ag]\.shared\.global[^;]*", ptx)
    return {"mma": mma, "vector_loads": len(re.findall(r"\bld\.global(?:\.\w+)*\.v[248]\.", ptx)),
            "cp_async": len(cp), "cp_async_16": sum(1 for c in cp if re.search(r",\s*(?:0x10|16)\s*(?:,|$)", c))}


def check_artifact(a: KernelArtifact, cc: int) -> List[str]:
    problems = []
    roles = [r for _, r, _ in a.signature]
    order = {"in": 0, "scalar": 1, "out": 2}
    if [order[r] for r in roles] != sorted(order[r] for r in roles):
        problems.append("arguments are not ordered inputs, int32 scalars, outputs")
    if any(t not in ("i32",) and r == "scalar" for _, r, t in a.signature):
        problems.append("a scalar argument is not int32")
    if a.global_scratch_bytes or a.profile_scratch_bytes:
        problems.append(f"needs {a.global_scratch_bytes} B of global and {a.profile_scratch_bytes} B of profile "
                        "scratch (a plugin launch passes no scratch pointers)")
    if a.entry_params != len(a.signature):
        problems.append(f"PTX entry has {a.entry_params} parameters, the launch passes {len(a.signature)}")
    if a.registers > MAX_REGS:
        problems.append(f"{a.registers} registers > {MAX_REGS}")
    if a.shared_bytes > SMEM_LIMIT[cc]:
        problems.append(f"{a.shared_bytes} B shared memory > {SMEM_LIMIT[cc]} on sm_{cc}")
    return problems


def ast_source(fn, signature: Dict[str, str], constexprs: Dict[str, Any], attrs: Optional[Dict] = None):
    """``triton.compiler.ASTSource`` across Triton 3.x: the constexpr values as ``constexprs=`` (3.6 and 3.8) or
    ``constants=`` (older); ``attrs`` in the ``{(index,): [["tt.divisibility", 16]]}`` form (Triton >= 3.3)."""
    import inspect

    from triton.compiler import ASTSource
    params = inspect.signature(ASTSource.__init__).parameters
    key = "constexprs" if "constexprs" in params else "constants"
    if key not in params:
        raise RuntimeError(f"this Triton's ASTSource takes neither constexprs= nor constants= ({list(params)})")
    return ASTSource(fn=fn, signature=signature, **{key: constexprs}, attrs=attrs or {})


def divisibility_attrs(k: KernelSpec) -> Dict:
    """The ``a16`` variant's hints: every pointer 16-byte aligned, the spec's ``aligned`` dims divisible by 16."""
    names = list(k.fn.arg_names)
    return {(names.index(a.name),): [["tt.divisibility", 16]] for a in k.args
            if a.type.startswith("*") or a.name in k.aligned}


def compile_kernel(k: KernelSpec, dtype: str, target: str, variant: str, out: Path,
                   isa_guess: Optional["tuple[int, int]"] = None, **options: Any) -> KernelArtifact:
    """One artifact: ``k`` with ``target``'s configuration for ``dtype``, the shape constexprs of its ``aot_dims``
    and the run-time constexprs ``options`` (default: the spec's, e.g. ``FP32="ieee"``). ``isa_guess``: the lowest
    PTX ISA to probe first (:func:`lowest_ptx_isa`)."""
    import triton
    from triton.backends.compiler import GPUTarget

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} ({VARIANTS})")
    cc = AOT_TARGETS[target]
    cfg = k.config(target, dtype)
    consts = k.constexprs(target, dtype, dict(k.aot_dims), **options)
    sig = {a.name: a.type.replace("T", dtype) for a in k.args}
    sig.update({c: "constexpr" for c in consts})
    attrs = divisibility_attrs(k) if variant == "a16" else {}
    c = triton.compile(ast_source(k.fn, sig, consts, attrs), target=GPUTarget("cuda", cc, 32),
                       options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    stem = artifact_name(k.name, dtype, target, variant)
    md = c.metadata
    scratch = (int(getattr(md, "global_scratch_size", 0) or 0), int(getattr(md, "profile_scratch_size", 0) or 0))
    try:
        ptx, hidden = exact_entry(c.asm["ptx"], len(k.args))
    except ValueError as e:  # reads its scratch: keep Triton's PTX, the artifact is marked unusable below
        ptx, hidden = c.asm["ptx"], -1
        scratch_problem = str(e)
    else:
        scratch_problem = ""
    ptx_path, cubin_path = out / f"{stem}.ptx", out / f"{stem}.cubin"
    ptx_path.write_text(ptx)
    cubin_path.write_bytes(c.asm["cubin"])
    tgt = re.search(r"^\.target\s+(\w+)", ptx, re.M)  # sm_90 -> Triton emits sm_90a
    usage = ptxas_usage(ptx_path, tgt.group(1) if tgt else target)  # also proves the exact entry assembles
    ver = re.search(r"^\.version\s+(\S+)", ptx, re.M)
    isa = lowest_ptx_isa(ptx, assembles_as_is=True, guess=isa_guess)  # ptxas_usage above assembled it as is
    art = KernelArtifact(
        name=stem, kernel=md.name, spec=k.name, variant=variant, target=target, dtype=dtype, ptx=ptx_path.name,
        cubin=cubin_path.name, signature=[[a.name, a.role, sig[a.name]] for a in k.args], constexprs=dict(consts),
        aligned=list(k.aligned) if variant == "a16" else [], num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        shared_bytes=int(md.shared), registers=usage["registers"], stack_bytes=usage["stack"],
        spill_bytes=usage["spill"],
        global_scratch_bytes=scratch[0], profile_scratch_bytes=scratch[1], hidden_params_removed=hidden,
        entry_params=len(entry_params(ptx)), ptx_version=ver.group(1) if ver else "?",
        lowest_ptx_isa=f"{isa[0]}.{isa[1]}", **instruction_mix(ptx))
    art.problems = check_artifact(art, cc) + ([scratch_problem] if scratch_problem else [])
    if art.stack_bytes or art.spill_bytes:
        art.warnings.append(f"{art.stack_bytes} B stack frame, {art.spill_bytes} B spilled (register spills)")
    return art


def compile_all(out_dir: "str | Path", targets: Sequence[str] = tuple(AOT_TARGETS),
                dtypes: Sequence[str] = ("fp16", "fp32"),
                progress: bool = True, kernels: Optional[Sequence[str]] = None,
                variants: Sequence[str] = VARIANTS) -> List[KernelArtifact]:
    """Compile ``kernels`` (default: all, see :func:`kernel_specs`) and write ``manifest.json`` beside them."""
    import triton

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("AOT compilation needs the Triton compiler: unset TRITON_INTERPRET (the interpreter "
                           "replaces @triton.jit functions when it is set at import time)")
    specs = kernel_specs()
    unknown = set(kernels or ()) - set(specs)
    if unknown:
        raise ValueError(f"unknown kernels {sorted(unknown)} (known: {sorted(specs)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arts: List[KernelArtifact] = []
    guesses: Dict[str, Any] = {}  # the last lowest PTX ISA per target: most kernels of a target share it
    for name, k in specs.items():
        if kernels and name not in kernels:
            continue
        for dtype in dtypes:
            for tname in targets:
                for variant in variants:
                    if variant == "a16" and not k.aligned:
                        continue
                    art = compile_kernel(k, dtype, tname, variant, out, isa_guess=guesses.get(tname))
                    guesses[tname] = tuple(int(x) for x in art.lowest_ptx_isa.split("."))
                    arts.append(art)
                    if progress:
                        print(f"{art.name}: {art.registers} regs, {art.shared_bytes} B smem, {art.mma}, "
                              f"{art.vector_loads} vector loads, {art.cp_async} cp.async ({art.cp_async_16} of 16 B), "
                              f"{art.spill_bytes} B spilled, PTX {art.ptx_version} "
                              f"(assembles from {art.lowest_ptx_isa})"
                              + (f"  PROBLEMS: {art.problems}" if art.problems else "")
                              + (f"  warnings: {art.warnings}" if art.warnings else ""), flush=True)
    manifest = {"triton": triton.__version__, "artifacts": [asdict(a) for a in arts]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return arts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wmoe.kernels.aot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--targets", default=",".join(AOT_TARGETS))
    ap.add_argument("--dtypes", default="fp16,fp32")
    ap.add_argument("--kernels", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args(argv)
    arts = compile_all(a.out, a.targets.split(","), a.dtypes.split(","),
                       kernels=a.kernels.split(",") if a.kernels else None, variants=a.variants.split(","))
    bad = [x for x in arts if x.problems]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
