"""The runtime installs and runs without torch: build the wheel, install it into an empty venv, give that venv only
the distributions the wheel declares for ``wmoe[runtime]`` (their installed copies, linked: no download), then score
frames with a model exported earlier in this run and run the camera loop from the installed package."""
import importlib.metadata as md
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MODEL_STACK = {"torch", "open-clip-torch", "triton", "torchvision", "scipy", "scikit-learn", "scikit-image"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires(wheel: Path, extras=("runtime",)):
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    out = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = line.split(":", 1)[1].strip()
        m = re.search(r'extra\s*==\s*"([^"]+)"', req)
        if m is None or m.group(1) in extras:
            out.append(_norm(re.match(r"[A-Za-z0-9_.\-]+", req).group(0)))
    return out


def _closure(names):
    """Installed distributions needed by ``names`` (markers evaluated without extras), recursively."""
    from packaging.requirements import Requirement
    seen, todo = set(), list(names)
    while todo:
        n = _norm(todo.pop())
        if n in seen:
            continue
        seen.add(n)
        for r in md.requires(n) or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _link_dists(dists, target: Path):
    """Symlink each distribution's top-level files (and its dist-info) into ``target``."""
    target.mkdir()
    for n in dists:
        d = md.distribution(n)
        base = Path(d.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in d.files or [] if not str(f).startswith("..")}
        for t in tops:
            if t == "bin" or t.endswith(".pth") or (target / t).exists():
                continue
            if (base / t).exists():
                (target / t).symlink_to(base / t)


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"  # build from a copy: the work tree gets no build/ or egg-info
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for d in ("wmoe", "kernels", "export", "bench"):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-v", "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True)  # -v: the backend's
    assert r.returncode == 0, r.stderr[-3000:]  # warnings (test_wheel_builds_without_warnings)
    wheel = next((tmp / "dist").glob("wmoe-*.whl"))
    return {**_venv_with(wheel, ("runtime",), tmp), "build_log": r.stdout + r.stderr}


def _venv_with(wheel: Path, extras, tmp: Path) -> dict:
    """An empty venv with ``wheel`` installed and only the distributions it declares for ``extras`` (linked)."""
    deps = _requires(wheel, extras)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                        str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    closure = _closure(deps)
    _link_dists(closure, tmp / "deps")
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "wmoe_runtime_deps.pth").write_text(str(tmp / "deps") + "\n")
    return {"python": py, "bin": venv / "bin", "wheel": wheel, "deps": deps, "closure": closure, "tmp": tmp}


def _camera_on_folder(bin_dir: Path, frames, model: Path, tmp_path: Path, env, *options: str):
    """The installed wmoe-camera on a folder of the frames (PNG), batch 2: the finished process (exit 0 checked)."""
    src = tmp_path / "cam"
    src.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(src / f"{i}.png")
    r = subprocess.run([str(bin_dir / "wmoe-camera"), "--source", str(src), "--model", str(model), "--batch", "2",
                        *options], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return r


def test_wheel_builds_without_warnings_and_ships_every_package_and_data_file(runtime_venv):
    """issue 22: the build printed three warnings: the deprecated `project.license` table (setuptools stops
    accepting it 2027-02-18) and 'wmoe.app.static' / 'wmoe.configs' absent from `packages`."""
    import tomllib

    log = runtime_venv["build_log"]
    warned = [ln.strip() for ln in log.splitlines() if re.search(r"Warning|deprecated|absent from", ln)]
    assert not warned, "\n".join(warned)
    names = set(zipfile.ZipFile(runtime_venv["wheel"]).namelist())
    meta = zipfile.ZipFile(runtime_venv["wheel"]).read(next(n for n in names if n.endswith("dist-info/METADATA")))
    assert b"\nLicense-Expression: Apache-2.0\n" in meta
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in package_dir.items():  # every module of the tree ships (the package list is typed)
        for f in (ROOT / folder).rglob("*.py"):
            assert "/".join([*package.split("."), *f.relative_to(ROOT / folder).parts]) in names, f
    for f in [*(ROOT / "wmoe" / "app" / "static").iterdir(), *(ROOT / "wmoe" / "configs").glob("*.json")]:
        assert f.relative_to(ROOT).as_posix() in names, f  # what the app serves and open_clip's tiny config


def test_wheel_declares_a_torch_free_runtime(runtime_venv):
    assert sorted(runtime_venv["deps"]) == ["numpy", "onnxruntime", "pillow"]
    assert not runtime_venv["closure"] & MODEL_STACK
    model = set(_requires(runtime_venv["wheel"], extras=("model",)))
    assert {"torch", "open-clip-torch"} <= model  # the model stack is one extra away


def test_installed_runtime_scores_frames_and_runs_the_camera_loop(runtime_venv, tiny_onnx, tmp_path):
    py, onnx_path = runtime_venv["python"], tiny_onnx[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    code = f"""
import sys, numpy as np
try:
    import torch
    raise SystemExit("torch importable in the runtime venv")
except ImportError:
    pass
import wmoe.runtime
assert wmoe.runtime.__file__.startswith(sys.prefix), wmoe.runtime.__file__  # the installed package, not the tree
from wmoe.runtime import Runtime
res = Runtime.open({str(onnx_path)!r}).score(np.load({str(tmp_path / 'frames.npy')!r}))
np.save({str(tmp_path / 'scores.npy')!r}, res.scores)
print(res.verdicts)
assert not [m for m in ("torch", "onnx", "open_clip", "triton") if m in sys.modules]
"""
    r = subprocess.run([str(py), "-I", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    from wmoe.runtime import Runtime
    want = Runtime.open(onnx_path).score(frames)
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), want.scores)
    assert r.stdout.strip() == str(want.verdicts)  # the threshold stored at export decides, no flags
    r = _camera_on_folder(runtime_venv["bin"], frames, onnx_path, tmp_path, env, "--drop", "block", "--out",
                          str(tmp_path / "out"))
    assert "final: frames 3:" in r.stdout and "dropped 0 (policy block)" in r.stdout
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    r = subprocess.run([str(runtime_venv["bin"] / "wmoe"), "train", str(tmp_path)], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 2 and 'pip install "wmoe[model]"' in r.stderr, r.stderr[-3000:]
    # issue 20: wmoe-bench --help there is one line saying what to install (it was a torch ImportError traceback)
    r = subprocess.run([str(runtime_venv["bin"] / "wmoe-bench"), "--help"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]
    assert 'pip install "wmoe[bench]"' in r.stderr and "Traceback" not in r.stderr
    # issue 20: the decision of an exported model is calibrated in the runtime-only install (no torch, no onnx)
    import shutil
    model = tmp_path / "calibrated.onnx"
    shutil.copy(onnx_path, model)
    src = tmp_path / "cam"  # the camera's folder (_camera_on_folder): frames 0-2, 6 more good ones added here
    for i in range(6, 9):  # 9 good frames: enough for a 10 % false-reject rate (n >= 1/rate - 1)
        Image.fromarray(np.roll(frames[i % 3], i, axis=1)).save(src / f"{i}.png")
    for i in range(3, 6):
        Image.fromarray(frames[i % 3][::-1]).save(src / f"{i}.png")
    r = subprocess.run([str(runtime_venv["bin"] / "wmoe"), "calibrate", str(model), str(src),
                        "--false-reject-rate", "0.1"], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0 and "wrote the decision to" in r.stdout, r.stdout + r.stderr[-3000:]
    from wmoe.contract import read_decision
    d = read_decision(model)
    assert d.record.method == "false-reject-rate" and d.record.n_good == 9 and d.threshold is not None


def test_installed_app_serves_an_exported_model_without_torch(runtime_venv, tiny_onnx, tmp_path):
    """wmoe[app] is wmoe[runtime]: the installed `wmoe app` serves its page and scores an upload through the
    runtime, in a venv where torch cannot be imported (the browser test drives the page: test_app_browser.py)."""
    import io

    from app_server import AppProcess
    from wmoe.runtime import Runtime

    wheel = runtime_venv["wheel"]
    assert set(_requires(wheel, extras=("app",))) - {"wmoe"} == {"numpy", "pillow"}  # nothing beyond [runtime]
    assert any(n.endswith("wmoe/app/static/app.js") for n in zipfile.ZipFile(wheel).namelist())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    app = AppProcess([tiny_onnx[1]], command=[str(runtime_venv["bin"] / "wmoe")], env=env, cwd=tmp_path)
    try:
        status, page = app.get("/")
        assert status == 200 and b'src="/static/app.js"' in page
        assert app.get("/static/app.js")[0] == 200
        frame = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, "PNG")
        status, doc = app.post("/api/score?name=frame.png", buf.getvalue())
        assert status == 200, doc
        want = Runtime.open(tiny_onnx[1]).score([frame])
        assert doc["result"]["score"] == float(want.scores[0]) and doc["result"]["verdict"] == want.verdicts[0]
        assert json.loads(app.get("/api/info")[1])["kind"] == "onnx"
    finally:
        assert app.stop() == 0
    assert "Traceback" not in "".join(app.stderr), "".join(app.stderr)[-3000:]


def test_engine_and_repository_builders_import_without_torch():
    """Building an engine or a Triton repository from an ONNX must not need torch (a Jetson builds its engine on
    the device, in JetPack's Python): these modules and the error class they raise are torch-free, and with the
    kernel stage registry also Triton-free."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['triton'] = None\n"
            "import wmoe.export.trt_build, wmoe.export.triton_repo, wmoe.export.parity, wmoe.export.trt_plugins\n"
            "import wmoe.kernels.spec, wmoe.kernels.aot\n"
            "from wmoe.kernels import stage_specs\n"  # the stage registry is data: no torch, no Triton
            "assert {'wcma_frequency', 'wcma_attention', 'moe_experts'} <= set(stage_specs())\n"
            "from wmoe.errors import ExportError\n"
            "assert wmoe.export.trt_build.ExportError is ExportError is wmoe.export.triton_repo.ExportError\n"
            "assert not [m for m in ('open_clip', 'wmoe.model.wmoe_clip', 'wmoe.export.onnx_export')\n"
            "            if m in sys.modules]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    from wmoe.errors import ExportError
    from wmoe.export import onnx_export
    assert onnx_export.ExportError is ExportError  # the old import path keeps working


@pytest.fixture(scope="module")
def frames_onnx(tmp_path_factory):
    """A tiny model exported with in-graph preprocessing (uint8 frames at 60x80, the CLI's default input kind)."""
    import torch

    from wmoe.model.checkpoint import save_checkpoint
    from wmoe.model.config import ModelConfig
    from wmoe.export.onnx_export import export_onnx
    from wmoe.model.wmoe_clip import WMoECLIP

    d = tmp_path_factory.mktemp("frames_onnx")
    torch.manual_seed(2)
    ckpt = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), d / "m.safetensors")
    return export_onnx(ckpt, d / "m.onnx", preprocess=True, frame_size=(60, 80), threshold=0.25, pixel_threshold=0.5)


def test_openvino_extra_runs_the_camera_loop_without_torch(runtime_venv, frames_onnx, tmp_path):
    """`pip install "wmoe[runtime,openvino]"`: wmoe-camera --provider openvino scores frames in a venv holding only
    what the wheel declares for those extras (no torch), with the model's stored threshold."""
    pytest.importorskip("openvino")
    v = _venv_with(runtime_venv["wheel"], ("runtime", "openvino"), tmp_path / "ov")
    assert "openvino" in v["deps"] and not v["closure"] & MODEL_STACK
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["WMOE_OV_CACHE"] = str(tmp_path / "cache")
    frames = np.random.default_rng(4).integers(0, 256, (3, 60, 80, 3), dtype=np.uint8)
    r = _camera_on_folder(v["bin"], frames, frames_onnx, tmp_path, env, "--provider", "openvino", "--results",
                          str(tmp_path / "r.jsonl"))
    assert "backend: OpenVINO" in r.stdout and ", f32," in r.stdout and "final: frames 3:" in r.stdout
    code = "import sys\ntry:\n    import torch\n    sys.exit('torch importable')\nexcept ImportError:\n    pass\n"
    assert subprocess.run([str(v["python"]), "-I", "-c", code], env=env).returncode == 0
    from wmoe.runtime import Runtime  # the same verdicts as ONNX Runtime in the development tree
    want = Runtime.open(frames_onnx).score(frames)
    got = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [g["verdict"] for g in got] == want.verdicts
    assert np.allclose([g["score"] for g in got], want.scores, atol=1e-5)


def test_installed_runtime_writes_a_triton_repository_from_an_onnx(runtime_venv, frames_onnx, tmp_path):
    """`wmoe export triton MODEL.onnx` in a wmoe[runtime] venv (no torch, no onnx package): the same repository as
    the full install writes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    args = ["export", "triton", str(frames_onnx), "--backend", "onnxruntime", "--backend", "python", "--device", "cpu"]
    r = subprocess.run([str(runtime_venv["bin"] / "wmoe"), *args, "--out", str(tmp_path / "repo")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    from wmoe.export.cli import main as export_main
    assert export_main(args[1:] + ["--out", str(tmp_path / "ref")]) == 0
    for name in ("wmoe/config.pbtxt", "wmoe_python/config.pbtxt", "wmoe/1/model.onnx", "wmoe_python/1/model.py"):
        assert (tmp_path / "repo" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def test_wheelhouse_installs_offline_into_an_empty_venv_and_scores(runtime_venv, tiny_onnx, tmp_path):
    """`make wheelhouse` (python -m wmoe.wheelhouse) for this platform, then an install with --no-index from it alone
    (no pip configuration, no other wheel folder) into an empty venv, which scores frames and runs wmoe-camera."""
    wh = tmp_path / "wh"
    r = subprocess.run([sys.executable, "-m", "wmoe.wheelhouse", "--out", str(wh), "--wheel",
                        str(runtime_venv["wheel"])], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    names = {_norm(p.name.split("-")[0]) for p in wh.glob("*.whl")}
    assert {"wmoe", "numpy", "onnxruntime", "pillow", "opencv-python-headless", "paho-mqtt"} <= names
    assert not names & MODEL_STACK and "pip install --no-index" in (wh / "INSTALL.txt").read_text()
    venv = tmp_path / "linepc"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    offline = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    offline["PIP_CONFIG_FILE"] = os.devnull  # only the wheelhouse: no index, no configured wheel folders
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-index",
                        "--find-links", str(wh), "wmoe[runtime,camera,mqtt]"], capture_output=True, text=True,
                       env=offline, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    frames = np.random.default_rng(1).integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
    src = tmp_path / "frames"
    src.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(src / f"{i}.png")
    code = f"""
import sys, numpy as np, cv2, paho.mqtt
import wmoe.runtime
assert wmoe.runtime.__file__.startswith(sys.prefix), wmoe.runtime.__file__
res = wmoe.runtime.Runtime.open({str(tiny_onnx[1])!r}).score(np.load({str(tmp_path / 'f.npy')!r}))
print(res.scores.tolist())
"""
    np.save(tmp_path / "f.npy", frames)
    r = subprocess.run([str(py), "-I", "-c", code], capture_output=True, text=True, env=offline, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    from wmoe.runtime import Runtime
    np.testing.assert_allclose(json.loads(r.stdout), Runtime.open(tiny_onnx[1]).score(frames).scores, rtol=1e-5)
    r = subprocess.run([str(venv / "bin" / "wmoe-camera"), "--source", str(src), "--model", str(tiny_onnx[1]),
                        "--results", str(tmp_path / "r.jsonl")], capture_output=True, text=True, env=offline,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_wheelhouse_resolves_for_an_arm_line_pc_with_an_older_python(runtime_venv, tmp_path):
    """The documented `make wheelhouse WHEEL_PLATFORM=manylinux_2_28_aarch64 WHEEL_PYTHON=3.10` failed ('No matching
    distribution found for numpy>=1.24'): pip takes a manylinux_2_X tag literally, and numpy's CPython 3.10 ARM wheels
    are tagged manylinux_2_17. Resolved here with the wheelhouse's own pip options (metadata only, --dry-run)."""
    from wmoe.wheelhouse import platform_args
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                        "--only-binary=:all:", *platform_args("manylinux_2_28_aarch64"), "--python-version", "3.10",
                        "--implementation", "cp", "--target", str(tmp_path / "t"), "--report", str(report),
                        f"{runtime_venv['wheel']}[runtime,camera,mqtt]"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {_norm(i["metadata"]["name"]): i["download_info"]["url"].rsplit("/", 1)[-1]
           for i in json.loads(report.read_text())["install"]}
    assert {"wmoe", "numpy", "onnxruntime", "pillow", "opencv-python-headless", "paho-mqtt"} <= set(got), got
    assert not set(got) & MODEL_STACK
    for name, file in got.items():  # each wheel is for CPython 3.10 on ARM, or pure Python
        assert file.endswith("-any.whl") or ("aarch64" in file and ("cp310" in file or "abi3" in file)), (name, file)


def test_installed_runtime_says_what_to_install_for_an_engine(runtime_venv, frames_onnx, tmp_path):
    """`wmoe-camera --model x.engine` where TensorRT is not installed: one line naming the engine and the install
    command (a raw ImportError traceback before)."""
    from wmoe.contract import EngineSidecar
    from wmoe.onnx_meta import read_onnx_metadata
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    eng = tmp_path / "x.engine"
    eng.write_bytes(b"an engine built elsewhere")
    EngineSidecar(engine=eng.name, onnx_sha256="", checkpoint_sha256="", precision="fp16", tensorrt_version="10.16.1",
                  gpu_name="-", compute_capability="8.7", inputs={"frames": [-1, 60, 80, 3]},
                  outputs={"scores": [-1], "maps": [-1, 112, 112], "text_scores": [-1]}, batch_ranges=[[1, 2, 4]],
                  metadata=read_onnx_metadata(frames_onnx)).write(EngineSidecar.path_for(eng))
    src = tmp_path / "cam"
    src.mkdir()
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(src / "0.png")
    r = subprocess.run([str(runtime_venv["bin"] / "wmoe-camera"), "--source", str(src), "--model", str(eng)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert "x.engine" in lines[0] and "pip install \"wmoe[trt]\"" in lines[0] and "python3-libnvinfer" in lines[0]
    # building the engine from the ONNX in the same torch-free venv gets as far as TensorRT (no torch, no onnx
    # needed before it): the one line says what to install
    r = subprocess.run([str(runtime_venv["bin"] / "wmoe-export"), "trt", str(frames_onnx), "--out",
                        str(tmp_path / "m.engine"), "--precision", "fp16"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "TensorRT is not installed" in lines[0], r.stderr[-3000:]


@pytest.fixture(scope="module")
def plugin_frames_onnx(tmp_path_factory):
    """The frames model of :func:`frames_onnx` (same seed and contract) exported as the plugin flavor."""
    import torch

    from wmoe.model.checkpoint import save_checkpoint
    from wmoe.model.config import ModelConfig
    from wmoe.export.onnx_export import export_onnx
    from wmoe.model.wmoe_clip import WMoECLIP

    d = tmp_path_factory.mktemp("plugin_frames_onnx")
    torch.manual_seed(2)
    ckpt = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), d / "m.safetensors")
    return export_onnx(ckpt, d / "m.onnx", preprocess=True, frame_size=(60, 80), threshold=0.25, pixel_threshold=0.5,
                       flavor="plugin")


def _build_under_doubles(python, argv, version, cwd, env=None, api_roots=None):
    """Run ``wmoe-export trt ARGV`` in ``python`` with torch and Triton blocked, under the generated TensorRT double
    for ``version`` and the CUDA double; prints which of our plugins ended up registered. ``api_roots``: the venvs
    holding tensorrt-stubs and the bindings wheels, for an interpreter that does not see them."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['triton'] = None\n"
            f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
            "import cuda_double, trt_double\n")
    if api_roots is not None:
        code += f"from pathlib import Path; trt_double._venv_roots = lambda: [Path(p) for p in {api_roots!r}]\n"
    code += ("class Patch:  # what cuda_double.install needs of pytest's MonkeyPatch (pytest may not be installed)\n"
             "    setitem = staticmethod(lambda d, k, v: d.__setitem__(k, v))\n"
             "    setattr = staticmethod(setattr)\n"
             f"cuda_double.install(Patch()); trt = trt_double.load({version!r})\n"
             "from wmoe.export.cli import main\n"
             f"rc = main({argv!r})\n"
             "assert sys.modules['torch'] is None and sys.modules['triton'] is None, 'torch or triton replaced'\n"
             "assert not [m for m in ('open_clip', 'wmoe.model.wmoe_clip', 'wmoe.kernels.dispatch')\n"
             "            if m in sys.modules]\n"
             "from wmoe.contract import PLUGIN_DOMAIN, PLUGIN_MOE_OP, PLUGIN_WCMA_OP\n"
             "reg = trt.get_plugin_registry()\n"
             "print('registered:', sorted(op for op in (PLUGIN_WCMA_OP, PLUGIN_MOE_OP)\n"
             "                            if reg.get_creator(op, '1', PLUGIN_DOMAIN) is not None))\n"
             "print('wmoe from:', __import__('wmoe').__file__)\n"
             "sys.exit(rc)\n")
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r.stdout


def _check_engine(out, flavor, version, stdout):
    """The double's serialized engine and its sidecar at ``out``; for the plugin flavor both plugins registered and
    each plugin layer's AOT kernel in the engine."""
    import trt_behaviour
    from wmoe.contract import PLUGIN_MOE_OP, PLUGIN_WCMA_OP, EngineSidecar
    side = EngineSidecar.read(EngineSidecar.path_for(out))
    assert side.inputs == {"frames": [-1, 60, 80, 3]} and side.flavor == flavor
    assert side.tensorrt_version.startswith(version) and side.model_meta.decision.threshold == 0.25
    blob, m = out.read_bytes(), len(trt_behaviour.MAGIC)
    assert blob.startswith(trt_behaviour.MAGIC)  # the double's serialized engine
    (n,) = struct.unpack("<Q", blob[m:m + 8])
    header = json.loads(blob[m + 8:m + 8 + n])
    if flavor == "plugin":
        assert f"registered: {sorted([PLUGIN_MOE_OP, PLUGIN_WCMA_OP])}" in stdout, stdout[-2000:]
        assert {p["op"] for p in header["plugins"]} == {PLUGIN_WCMA_OP, PLUGIN_MOE_OP}
        assert all(p["kernel"] and p["ptx_sha256"] for p in header["plugins"])
    else:
        assert header["plugins"] == [] and "registered: []" in stdout


@pytest.mark.parametrize("version", ["10.9", "11.4"])
@pytest.mark.parametrize("flavor", ["portable", "plugin"])
def test_engine_builds_without_torch_under_the_tensorrt_double(flavor, version, request, tmp_path):
    """`wmoe-export trt` from a frames ONNX to a serialized engine + sidecar with torch and Triton blocked, under the
    generated TensorRT double (tests/trt_double.py) and the CUDA double: the build path imports neither.

    Portable: it failed before issue 19's first round (the engine build imported the plugin module, which imported
    wmoe.kernels (torch) and the plugin graph writer (torch) for three names). Plugin, from a prebuilt kernel store
    (``--kernels``, the session's ``plugin_kernels``): it failed before the stage specs left the Triton modules (the
    plugin read its launch formulas through ``kernels.dispatch``, which imports torch, and the kernel store ran
    Triton's ptxas to find each kernel's lowest PTX ISA)."""
    onnx_path = request.getfixturevalue("frames_onnx" if flavor == "portable" else "plugin_frames_onnx")
    out = tmp_path / "m.engine"
    argv = ["trt", str(onnx_path), "--out", str(out), "--precision", "fp32", "--batch", "1:2:4"]
    if flavor == "plugin":
        argv += ["--kernels", str(request.getfixturevalue("plugin_kernels").dir)]
    _check_engine(out, flavor, version, _build_under_doubles(sys.executable, argv, version, tmp_path))


def test_installed_runtime_builds_the_plugin_engine(runtime_venv, plugin_frames_onnx, plugin_kernels, tmp_path):
    """The plugin flavor built by the wheel installed in the wmoe[runtime] venv (no torch, no Triton, no onnx
    installable there), from a kernel folder compiled beforehand, under the TensorRT double for 11.4. What TensorRT
    itself would bring on a device is linked beside it on PYTHONPATH for the doubles only: the onnx package (the
    double's stand-in for TensorRT's C++ ONNX parser reads the model with it) and cuda-python's bindings (the CUDA
    double wraps their signatures)."""
    import trt_double
    extra = tmp_path / "double_deps"
    _link_dists(_closure(["onnx", "cuda-bindings"]) - runtime_venv["closure"] - {"torch", "triton"}, extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(extra)
    out = tmp_path / "m.engine"
    argv = ["trt", str(plugin_frames_onnx), "--out", str(out), "--precision", "fp32", "--batch", "1:2:4",
            "--kernels", str(plugin_kernels.dir)]
    stdout = _build_under_doubles(runtime_venv["python"], argv, "11.4", tmp_path, env=env,
                                  api_roots=[str(p) for p in trt_double._venv_roots()])
    assert f"wmoe from: {ROOT}" not in stdout and "site-packages" in stdout  # the installed wheel, not the tree
    _check_engine(out, "plugin", "11.4", stdout)
