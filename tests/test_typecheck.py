"""mypy over every module that calls TensorRT or CUDA, against TensorRT's and cuda-python's published surfaces.

* TensorRT: tensorrt-stubs 10.13.0.35.1 (``.venv/trt-stubs``, see trt_double.py), copied with its five invalid
  signatures repaired (:func:`trt_double.repair_stub`).
* CUDA: cuda-python ships no stubs; ``cuda/bindings/runtime.pyi`` is generated from the installed module's
  introspected signatures (:func:`cuda_double.write_stub`), so ``wmoe/runtime/cuda_api.py``'s calls are held to
  their real parameter lists and enum types.

The package maps ``kernels/``, ``export/`` and ``bench/`` to ``wmoe.kernels``/``wmoe.export``/``wmoe.bench``
(pyproject); mypy needs that layout on disk, so the check runs on a tree of links (like ``make gpu-check``'s).
A canary file in the same run shows that the check fails on what TensorRT and CUDA do not have.
Configuration: ``[tool.mypy]`` in pyproject.toml.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cuda_double
import trt_double

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["export/trt_build.py", "export/trt_plugins.py", "wmoe/runtime/trt_backend.py", "wmoe/runtime/cuda_api.py",
           "bench/backends.py"]
CANARY = '''\
import tensorrt as trt
from cuda.bindings import runtime as cudart


def build(builder: trt.Builder, config: trt.IBuilderConfig) -> None:
    profile = builder.create_optimization_profile()
    if not profile.is_valid():  # what export/trt_build.py called before
        pass
    config.add_optimization_profile(profile, 0)
    config.set_flag(trt.BuilderFlag.FP16)
    cudart.cudaMalloc(16, 0)
    cudart.cudaMemcpyAsync(0, 0, 16, 1, 0)
'''


def _tree(tmp: Path) -> Path:
    src = tmp / "src" / "wmoe"
    src.mkdir(parents=True)
    for f in (ROOT / "wmoe").iterdir():
        (src / f.name).symlink_to(f)
    for pkg in ("kernels", "export", "bench"):
        (src / pkg).symlink_to(ROOT / pkg)
    return src.parent


def _stubs(tmp: Path) -> Path:
    dst = tmp / "stubs"
    stub = trt_double.stub_dir()
    for pkg in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(stub / pkg, dst / pkg)
    pyi = dst / "tensorrt_bindings" / "tensorrt.pyi"
    pyi.write_text(trt_double.repair_stub(pyi.read_text())[0])
    assert "cudaMemcpyAsync" in cuda_double.write_stub(dst)
    return dst


def test_tensorrt_and_cuda_modules_typecheck_against_the_published_api(tmp_path):
    src, stubs = _tree(tmp_path), _stubs(tmp_path)
    (src / "canary.py").write_text(CANARY)
    files = [str(src / "wmoe" / f.replace("wmoe/", "", 1) if f.startswith("wmoe/") else src / "wmoe" / f)
             for f in CHECKED] + [str(src / "canary.py")]
    env = dict(os.environ, MYPYPATH=str(stubs))
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir",
                        str(tmp_path / "cache"), "--no-error-summary", "--show-error-codes", *files],
                       capture_output=True, text=True, env=env, cwd=src, timeout=900)
    lines = [ln for ln in r.stdout.splitlines() if ": error:" in ln]
    ours = [ln for ln in lines if not ln.startswith("canary.py") and "/canary.py" not in ln]
    assert not ours, "\n".join(ours) + "\n" + r.stderr[-2000:]
    canary = "\n".join(ln for ln in lines if ln not in ours)
    # the check fails on what the published API lacks: a method, an argument count, an enum type
    assert re.search(r'"IOptimizationProfile" has no attribute "is_valid"', canary), r.stdout
    assert re.search(r'Too many arguments for "add_optimization_profile"', canary), r.stdout
    assert re.search(r'Too many arguments for "cudaMalloc"', canary), r.stdout
    assert re.search(r'Argument 4 to "cudaMemcpyAsync" has incompatible type "int"; expected "cudaMemcpyKind"',
                     canary), r.stdout
