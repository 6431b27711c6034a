"""``make gpu-check``: the one GPU acceptance run. No arguments, nothing downloaded (the model is the full-size
ViT-L-14-336 with a random-init backbone: speed and parity do not depend on the weights).

Steps, in order; each runs in a subprocess with a time limit, and a failing or impossible step is recorded with its
reason and the run goes on:

==================  ====  ==========================================================================================
step                GPU   what
==================  ====  ==========================================================================================
env                 no    versions: torch, triton, onnxruntime providers, tensorrt, cuda-python / pycuda
plugin-kernels      no    AOT-compile the plugin kernels, check ptxas ISA cap and 48 KB shared memory
trt-frontend        no    the plugin conformance tests against TensorRT's tensorrt.plugin frontend
gpu-tests           yes   compiled-kernel parity for every kernel and dtype, CUDA-graph capture, CUDA interface
kernel-bench        yes   bench_kernels (fused vs eager vs torch.compile; do_bench and do_bench_cudagraph)
checkpoint          no    the random-init full-size checkpoint (336 px)
aoti                yes   AOTInductor CUDA build (fp16) and load
trt-engine          yes   ONNX fp16 export + TensorRT engine build (needs tensorrt)
bench               yes   ``wmoe bench`` at 336/518 px, batch 1/8/32, fp32/fp16, every backend the machine has
==================  ====  ==========================================================================================

Intermediate files (checkpoint, ONNX, engine, AOTInductor package) go to ``build/gpu-check/`` (ignored by git).
Writes ``bench/results/<gpu-name>/``: ``gpu_check.json`` and ``gpu_check.md`` (every step: ok / failed / skipped
with the reason and its time), ``bench.json``/``bench.md``/``bench.png`` of ``wmoe bench`` and ``kernels.json``.
Without a GPU the GPU steps are skipped ("needs an NVIDIA GPU"), the others run, the report goes to
``build/gpu-check/no-gpu/`` (not committed) and the exit status is 2.

    python -m wmoe.bench.gpu_check [--out DIR] [--steps a,b] [--plan]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from wmoe.atomic import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
# what the model, the tests and the benches import beyond torch: reported by the env step when missing
WMOE_MODULES = ("numpy", "PIL", "open_clip", "safetensors", "scipy", "sklearn", "skimage", "tqdm", "triton", "onnx",
                "onnxruntime", "pytest", "pytorch_wavelets")


@dataclass
class Step:
    name: str
    needs_gpu: bool
    what: str
    timeout_s: int


STEPS = [
    Step("env", False, "versions and devices", 120),
    Step("plugin-kernels", False, "AOT plugin kernels: ptxas ISA cap, <= 48 KB shared memory", 300),
    Step("trt-frontend", False, "plugin conformance with TensorRT's tensorrt.plugin frontend", 300),
    Step("gpu-tests", True, "compiled-kernel parity (every kernel, dtype), CUDA-graph capture, CUDA interface", 600),
    Step("kernel-bench", True, "bench_kernels: fused vs eager vs torch.compile", 420),
    Step("checkpoint", False, "random-init full-size checkpoint (ViT-L-14-336, 336 px)", 300),
    Step("aoti", True, "AOTInductor CUDA build (fp16) and load", 600),
    Step("trt-engine", True, "ONNX fp16 export + TensorRT engine build", 600),
    Step("bench", True, "wmoe bench 336/518 px, batch 1/8/32, every backend here", 900),
]


@dataclass
class Result:
    step: str
    status: str  # ok / failed / skipped
    seconds: float = 0.0
    reason: str = ""
    log_tail: str = ""
    files: List[str] = field(default_factory=list)


def gpu_name() -> Optional[str]:
    try:
        import torch
        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken driver is "no GPU" here, with the reason in env
        return None


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "unknown"


def _run(cmd: List[str], timeout: int, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    e.update(env or {})
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=e)


def _tail(p: subprocess.CompletedProcess, n: int = 3000) -> str:
    return (p.stdout + p.stderr)[-n:]


class Check:
    def __init__(self, out: Path, work: Path) -> None:
        self.out, self.work = out, work
        self.ckpt = work / "wmoe_vitl336_random.safetensors"
        self.engine: Optional[Path] = None
        self.aoti: Optional[Path] = None
        self.py = sys.executable

    # each returns (status, reason, log tail, files)
    def env(self, t: int):
        code = ("import json, platform, torch\n"
                "d = {'python': platform.python_version(), 'torch': torch.__version__,\n"
                "     'cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name() if torch.cuda.is_available()"
                " else None}\n"
                "for m in ('triton', 'onnxruntime', 'tensorrt', 'cuda.bindings', 'pycuda'):\n"
                "    try:\n"
                "        mod = __import__(m, fromlist=['x']); d[m] = getattr(mod, '__version__', 'installed')\n"
                "    except Exception as e:\n"
                "        d[m] = f'not available ({type(e).__name__})'\n"
                "import importlib.util as u\n"
                f"d['missing'] = [m for m in {WMOE_MODULES!r} if u.find_spec(m) is None]\n"
                "try:\n"
                "    import onnxruntime as ort; d['ort_providers'] = ort.get_available_providers()\n"
                "except Exception:\n"
                "    pass\n"
                "print(json.dumps(d))\n")
        p = _run([self.py, "-c", code], t)
        if p.returncode:
            return "failed", "environment probe failed", _tail(p), []
        line = p.stdout.strip().splitlines()[-1]
        atomic_write_text(self.out / "env.json", line + "\n")
        missing = json.loads(line)["missing"]
        if missing:  # every later step would fail on the import: say it once, here
            return ("failed", f"{self.py} lacks {', '.join(missing)} (pip install -e '.[dev]', or carry wheels to an "
                    "offline machine)", p.stdout[-2000:], ["env.json"])
        return "ok", "", p.stdout[-2000:], ["env.json"]

    def plugin_kernels(self, t: int):
        p = _run([self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_export_trt_plugins.py"], t)
        return ("ok" if p.returncode == 0 else "failed"), "", _tail(p), []

    def trt_frontend(self, t: int):
        # the conformance tests run TensorRT's pure-Python tensorrt.plugin frontend from the bindings wheel (its
        # compiled core is doubled): a GPU box whose Python lacks the wheel skips this step and says why
        probe = ("import importlib.util as u, pathlib, sys\n"
                 "s = u.find_spec('tensorrt_bindings')\n"
                 "ok = s is not None and s.submodule_search_locations and "
                 "(pathlib.Path(list(s.submodule_search_locations)[0]) / 'plugin' / '__init__.py').is_file()\n"
                 "sys.exit(0 if ok else 3)\n")
        p = _run([self.py, "-c", probe], t)
        if p.returncode:
            return ("skipped", f"{self.py} has no tensorrt-cu12-bindings wheel with its tensorrt.plugin frontend "
                    "(pip install 'tensorrt-cu12-bindings>=10.9'; make install puts 10.9 and 11.4 beside it)",
                    _tail(p), [])
        p = _run([self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_trt_frontend.py"], t)
        return ("ok" if p.returncode == 0 else "failed"), "", _tail(p), []

    def gpu_tests(self, t: int):
        tests = ["tests/test_kernels_ops.py", "tests/test_kernels_wcma_frequency.py",
                 "tests/test_kernels_wcma_attention.py", "tests/test_kernels_moe_experts.py", "tests/test_kernels_aot.py",
                 "tests/test_runtime_trt.py"]
        p = _run([self.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-rs", *tests], t)
        return ("ok" if p.returncode == 0 else "failed"), "", _tail(p), []

    def kernel_bench(self, t: int):
        p = _run([self.py, "-m", "wmoe.bench.bench_kernels", "--out", str(self.out), "--batches", "1,8,32"], t)
        files = ["kernels.json"] if (self.out / "kernels.json").is_file() else []
        return ("ok" if p.returncode == 0 else "failed"), "", _tail(p), files

    def checkpoint(self, t: int):
        code = ("import sys, torch\nfrom wmoe.model.config import ModelConfig\n"
                "from wmoe.model.wmoe_clip import WMoECLIP\n"
                "from wmoe.model.checkpoint import save_checkpoint\ntorch.manual_seed(0)\n"
                "save_checkpoint(WMoECLIP(ModelConfig(image_size=336)).eval(), sys.argv[1])\n")
        p = _run([self.py, "-c", code, str(self.ckpt)], t)
        return ("ok" if p.returncode == 0 and self.ckpt.is_file() else "failed"), "", _tail(p), []

    def aoti(self, t: int):
        if not self.ckpt.is_file():
            return "skipped", "no checkpoint (its step failed)", "", []
        out = self.work / "detector_fp16.pt2"
        p = _run([self.py, "-m", "wmoe", "export", "aoti", str(self.ckpt), "--out", str(out), "--device", "cuda",
                  "--precision", "fp16", "--max-batch", "32"], t)
        if p.returncode == 0 and out.is_file():
            self.aoti = out
            return "ok", "", _tail(p), []
        return "failed", "", _tail(p), []

    def trt_engine(self, t: int):
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "skipped", "tensorrt is not installed (pip install 'wmoe[trt]' or 'wmoe[trt-cu13]')", "", []
        if not self.ckpt.is_file():
            return "skipped", "no checkpoint (its step failed)", "", []
        onnx_path, eng = self.work / "model_fp16.onnx", self.work / "model_fp16.engine"
        # frames input (uint8 camera frames, in-graph preprocessing): the engine users deploy; the bench reads its
        # image size and input kind from the sidecar and feeds it frames
        p = _run([self.py, "-m", "wmoe", "export", "onnx", str(self.ckpt), "--out", str(onnx_path),
                  "--precision", "fp16", "--input", "frames"], t)
        if p.returncode:
            return "failed", "ONNX export failed", _tail(p), []
        p = _run([self.py, "-m", "wmoe", "export", "trt", str(onnx_path), "--out", str(eng), "--precision", "fp16",
                  "--batch", "1:8:32"], t)
        if p.returncode == 0 and eng.is_file():
            self.engine = eng
            return "ok", "", _tail(p), []
        return "failed", "engine build failed", _tail(p), []

    def bench(self, t: int):
        if not self.ckpt.is_file():
            return "skipped", "no checkpoint (its step failed)", "", []
        cmd = [self.py, "-m", "wmoe", "bench", str(self.ckpt), "--out", str(self.out), "--sizes", "336,518",
               "--batch", "1,8,32", "--warmup", "2", "--repeats", "5", "--backends",
               "torch-fp32,torch-fp16,torch-compile,torch-triton,ort-cuda,ort-trt,trt-engine,aoti"]
        if self.engine:
            cmd += ["--engine", str(self.engine)]
        if self.aoti:
            cmd += ["--aoti", str(self.aoti)]
        p = _run(cmd, t)
        files = [f for f in ("bench.json", "bench.md", "bench.png") if (self.out / f).is_file()]
        return ("ok" if p.returncode == 0 else "failed"), "", _tail(p), files


def run_check(out: Optional[Path] = None, steps: Optional[List[str]] = None,
              progress: Callable[[str], None] = print) -> Dict:
    gpu = gpu_name()
    # results of a GPU run are meant to be committed; a run without a GPU stays in build/ (ignored by git)
    out = Path(out) if out else (REPO / "bench" / "results" / slug(gpu) if gpu else REPO / "build" / "gpu-check"
                                 / "no-gpu")
    out.mkdir(parents=True, exist_ok=True)
    work = REPO / "build" / "gpu-check"  # checkpoint, ONNX, engine, package: never under bench/results
    work.mkdir(parents=True, exist_ok=True)
    check = Check(out, work)
    chosen = [s for s in STEPS if not steps or s.name in steps]
    unknown = set(steps or ()) - {s.name for s in STEPS}
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {[s.name for s in STEPS]}")
    results: List[Result] = []
    doc = {"gpu": gpu, "host": platform.node(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": []}
    for s in chosen:
        if s.needs_gpu and gpu is None:
            r = Result(s.name, "skipped", reason="needs an NVIDIA GPU (none visible to torch.cuda)")
        else:
            progress(f"[gpu-check] {s.name}: {s.what} ...")
            t0 = time.perf_counter()
            try:
                status, reason, tail, files = getattr(check, s.name.replace("-", "_"))(s.timeout_s)
            except subprocess.TimeoutExpired:
                status, reason, tail, files = "failed", f"timed out after {s.timeout_s} s", "", []
            r = Result(s.name, status, time.perf_counter() - t0, reason, tail, files)
        results.append(r)
        progress(f"[gpu-check] {s.name}: {r.status}" + (f" ({r.reason})" if r.reason else "")
                 + (f" in {r.seconds:.0f} s" if r.seconds else ""))
        doc["results"] = [asdict(x) for x in results]
        atomic_write_text(out / "gpu_check.json", json.dumps(doc, indent=2) + "\n")  # after every step
        atomic_write_text(out / "gpu_check.md", to_markdown(doc))
    return doc


def to_markdown(doc: Dict) -> str:
    lines = [f"# gpu-check — {doc['gpu'] or 'no GPU'}", "", f"{doc['date']}, host {doc['host']}", "",
             "| step | GPU | status | seconds | reason |", "|---|---|---|---:|---|"]
    need = {s.name: s.needs_gpu for s in STEPS}
    for r in doc["results"]:
        lines.append(f"| {r['step']} | {'yes' if need.get(r['step']) else 'no'} | {r['status']} | "
                     f"{r['seconds']:.0f} | {r['reason']} |")
    failed = [r for r in doc["results"] if r["status"] == "failed"]
    for r in failed:
        lines += ["", f"## {r['step']} failed", "", "```", r["log_tail"].strip(), "```"]
    return "\n".join(lines) + "\n"


def exit_status(doc: Dict) -> int:
    if any(r["status"] == "failed" for r in doc["results"]):
        return 1
    return 0 if doc["gpu"] else 2


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m wmoe.bench.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="default: bench/results/<gpu-name>/")
    ap.add_argument("--steps", default=None, help="comma-separated subset of the steps")
    ap.add_argument("--plan", action="store_true", help="list the steps and which need a GPU, run nothing")
    a = ap.parse_args(argv)
    if a.plan:
        for s in STEPS:
            print(f"{s.name:15s} {'needs a GPU' if s.needs_gpu else 'CPU is enough':14s} {s.what}")
        return 0
    doc = run_check(Path(a.out) if a.out else None, [x for x in (a.steps or "").split(",") if x] or None)
    skipped = [r["step"] for r in doc["results"] if r["status"] == "skipped" and "GPU" in r["reason"]]
    if skipped:
        print(f"[gpu-check] no NVIDIA GPU here: {', '.join(skipped)} need one and were skipped", file=sys.stderr)
    code = exit_status(doc)
    out = a.out or (f"bench/results/{slug(doc['gpu'])}" if doc["gpu"] else "build/gpu-check/no-gpu")
    print(f"[gpu-check] wrote {out}/gpu_check.md (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
