"""Training: the loss goes down, resume continues bit-exactly, DDP with 2 gloo processes agrees."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wmoe.model.config import ModelConfig
from wmoe.data import DataError, make_demo_dataset
from wmoe.training.optim_state import load_optimizer
from wmoe.training.train import TrainConfig, train

# One worker runs the soak and the training tests one after the other (they were side by side when an xdist
# worker first died silently; strace later showed a SIGSEGV after in-process OpenVINO use: docs/reliability.md).
pytestmark = pytest.mark.xdist_group("soak_and_ddp")

CFG = ModelConfig.tiny(image_size=112)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), image_size=64, n_test_good=2, n_test_defect=4,
                             categories=["brick", "grass"])


def _history(out: Path):
    opt = torch.optim.Adam([torch.zeros(1)])
    from safetensors import safe_open
    import json
    with safe_open(str(out / "last.optim.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["progress"])


def test_training_lowers_the_loss(data, tmp_path):
    # one class, one batch holding all of it: every step sees the same images
    cfg = TrainConfig(str(data), out_dir=str(tmp_path), classes=["brick"], batch_size=16, epochs=10, lr=1e-3,
                      max_steps=6, progress=False)
    ckpt = train(CFG, cfg)
    hist = _history(tmp_path)["history"]
    assert hist[-1]["step"] == 6 and ckpt.is_file()
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert hist[-1]["local"] < hist[0]["local"]


def test_resume_continues_from_saved_step_bit_exact(data, tmp_path):
    common = dict(classes=["brick", "grass"], batch_size=4, epochs=2, progress=False, seed=3)
    train(CFG, TrainConfig(str(data), out_dir=str(tmp_path / "full"), max_steps=4, **common))
    train(CFG, TrainConfig(str(data), out_dir=str(tmp_path / "part"), max_steps=2, **common))
    assert _history(tmp_path / "part")["step"] == 2
    train(CFG, TrainConfig(str(data), out_dir=str(tmp_path / "part"), max_steps=4, resume=True, **common))
    assert _history(tmp_path / "part")["step"] == 4
    # the per-epoch expert utilization also survives the interruption (epoch 1 ended after the resume)
    usage = [json.loads((tmp_path / d / "expert_usage.json").read_text()) for d in ("full", "part")]
    assert usage[0] == usage[1] and len(usage[0]["epochs"]) == 1
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_without_checkpoint_and_empty_split_fail_clearly(data, tmp_path):
    with pytest.raises(DataError, match="cannot resume"):
        train(CFG, TrainConfig(str(data), out_dir=str(tmp_path), resume=True, progress=False))
    with pytest.raises(DataError, match="not in split"):
        train(CFG, TrainConfig(str(data), out_dir=str(tmp_path), classes=["nope"], progress=False))


def test_ddp_two_gloo_processes(data, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        "import hashlib, os, sys, torch\n"
        "from wmoe.model.config import ModelConfig\n"
        "from wmoe.training.train import TrainConfig, train\n"
        "import wmoe.training.train as T\n"
        "orig = T._save\n"
        "def spy(model, *a, **k):\n"
        "    h = hashlib.sha256(b''.join(v.detach().numpy().tobytes() for _, v in sorted(model.trainable_state_dict().items()))).hexdigest()\n"
        "    open(os.path.join(sys.argv[2], f\"rank{os.environ['RANK']}.txt\"), 'w').write(h)\n"
        "    return orig(model, *a, **k)\n"
        "T._save = spy\n"
        "train(ModelConfig.tiny(image_size=112), TrainConfig(sys.argv[1], out_dir=sys.argv[2], batch_size=2,"
        " epochs=1, max_steps=2, progress=False, device='cpu'))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                        "--master_port=29533", str(script), str(data), str(tmp_path)],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "last.safetensors").is_file()
    h0, h1 = (tmp_path / "rank0.txt").read_text(), (tmp_path / "rank1.txt").read_text()
    assert h0 == h1  # DDP keeps the replicas identical
    progress = _history(tmp_path)
    assert progress["step"] == 2
