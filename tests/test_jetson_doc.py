"""Every command of docs/jetson.md runs here as far as a machine without a GPU, TensorRT or a Jetson allows.

The ``bash`` blocks are extracted from the page; each command is classified by its prefix (an unclassified command
fails the test, so the page cannot gain a command that nothing checks):

* host steps (export, reference, AOT kernels, Triton repository, bench) run for real on the tiny model, in order,
  in one folder, with the file names the page uses;
* device steps that need TensorRT and a GPU run up to the point where TensorRT is required and must end with
  wmoe's one-line install hint (exit 2), not a traceback;
* board-only tools (nvpmodel, jetson_clocks, tegrastats, polygraphy's TensorRT runner, apt/pip on the board) are
  not run; the page must say so in its "Never ran on a board" section.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

DOC = Path(__file__).resolve().parents[1] / "docs" / "jetson.md"
BIN = Path(sys.executable).parent
RUN, NEEDS_TRT, BOARD = "run", "needs TensorRT and a GPU", "board only"
KINDS = [  # (command prefix, kind)
    ("wmoe export onnx", RUN), ("wmoe export reference", RUN), ("python -m wmoe.kernels.aot", RUN),
    ("wmoe export triton", RUN), ("wmoe bench", RUN),
    ("wmoe-export trt", NEEDS_TRT), ("wmoe-camera", NEEDS_TRT),
    ("sudo nvpmodel", BOARD), ("sudo jetson_clocks", BOARD), ("tegrastats", BOARD), ("polygraphy run", BOARD),
    ("sudo apt-get install", BOARD), ("python3 -m venv --system-site-packages", BOARD), ("~/wmoe-venv/bin/pip", BOARD),
]
#: what the "Never ran on a board" section must name for each board-only command
BOARD_NAMES = {"sudo nvpmodel": "nvpmodel", "sudo jetson_clocks": "jetson_clocks", "tegrastats": "tegrastats",
               "polygraphy run": "polygraphy run --trt", "sudo apt-get install": "python3-libnvinfer",
               "python3 -m venv --system-site-packages": "--system-site-packages",
               "~/wmoe-venv/bin/pip": "--system-site-packages"}


def commands():
    out = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S):
        out += [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return out


def kind(cmd: str):
    for prefix, k in KINDS:
        if cmd.startswith(prefix):
            return prefix, k
    raise AssertionError(f"docs/jetson.md: command {cmd!r} is not classified in tests/test_jetson_doc.py")


def argv(cmd: str):
    words = shlex.split(cmd)
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    return [str(BIN / words[0]), *words[1:]]


def test_every_command_is_classified_and_board_only_ones_are_said():
    cmds = commands()
    assert len(cmds) >= 15, cmds
    never = DOC.read_text().split("## Never ran on a board", 1)[1]
    for cmd in cmds:
        prefix, k = kind(cmd)
        if k == BOARD:
            assert BOARD_NAMES[prefix] in never, (cmd, "not listed under 'Never ran on a board'")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from wmoe.model.checkpoint import save_checkpoint
    from wmoe.model.config import ModelConfig
    from wmoe.model.wmoe_clip import WMoECLIP
    d = tmp_path_factory.mktemp("jetson")
    torch.manual_seed(7)
    save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), d / "wmoe.safetensors")
    (d / "frames").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(d / "frames" / f"{i}.png")
    return d


def test_the_commands_run_as_far_as_they_can_here(workdir):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the AOT compiler needs Triton proper
    ran = []
    for cmd in commands():
        prefix, k = kind(cmd)
        if k == BOARD:
            continue
        if prefix == "wmoe-camera":  # the engine wmoe export trt would have written (it cannot here): its sidecar
            _engine_placeholder(workdir)
        r = subprocess.run(argv(cmd), cwd=workdir, capture_output=True, text=True, env=env, timeout=900)
        if k == RUN:
            assert r.returncode == 0, (cmd, (r.stdout + r.stderr)[-3000:])
        else:  # stops where TensorRT is needed, with one line that says what to install
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1, (cmd, r.stderr[-3000:])
            assert "python3-libnvinfer" in lines[0] and "wmoe[trt]" in lines[0], (cmd, lines[0])
        ran.append(cmd)
    assert {"model.onnx", "model_plugin.onnx", "ref", "kernels_sm87", "repo", "bench_jetson"} <= {
        p.name for p in workdir.iterdir()}
    from wmoe.contract import ModelMeta
    from wmoe.onnx_meta import read_onnx_metadata
    for name, flavor in (("model.onnx", "portable"), ("model_plugin.onnx", "plugin")):
        meta = ModelMeta.from_metadata(read_onnx_metadata(workdir / name))
        assert (meta.flavor, meta.input, tuple(meta.frame_size), meta.precision) == (flavor, "frames", (480, 640),
                                                                                    "fp16")
    assert len(ran) == sum(kind(c)[1] != BOARD for c in commands())


def _engine_placeholder(d: Path) -> None:
    from wmoe.contract import EngineSidecar
    from wmoe.onnx_meta import read_onnx_metadata
    eng = d / "model.engine"
    eng.write_bytes(b"built on the device")
    EngineSidecar(engine=eng.name, onnx_sha256="", checkpoint_sha256="", precision="fp16", tensorrt_version="10.3.0",
                  gpu_name="Orin", compute_capability="8.7", inputs={"frames": [-1, 480, 640, 3]},
                  outputs={"scores": [-1], "maps": [-1, 112, 112], "text_scores": [-1]}, batch_ranges=[[1, 4, 8]],
                  metadata=read_onnx_metadata(d / "model.onnx")).write(EngineSidecar.path_for(eng))
