"""Crash-safe training runs: SIGKILL at every stage of a checkpoint save, then --resume.

The kill points are injected deterministically (``wmoe.training.checkpoint_set.fault_hook`` kills the process at
the k-th stage), never by sleeping. One driver process imports torch once and forks a child per kill point, so the whole
sweep (2 saves x 9 stages, each followed by a resume) costs a few seconds.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from wmoe.training import checkpoint_set
from wmoe.model.checkpoint import CheckpointError
from wmoe.model.config import ModelConfig
from wmoe.data import make_demo_dataset
from wmoe.folder_lock import LOCK_NAME
from wmoe.training.train import TrainConfig, train

CFG = ModelConfig.tiny(image_size=112)

DRIVER = textwrap.dedent(r'''
    import json, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)  # no thread pool in the parent: forking stays safe
    from safetensors.torch import load_file
    from wmoe import kill_points
    from wmoe.training import checkpoint_set
    from wmoe.model.config import ModelConfig
    from wmoe.errors import WMoEError
    from wmoe.training.train import TrainConfig, train

    data, work = sys.argv[1], Path(sys.argv[2])
    CFG = ModelConfig.tiny(image_size=112)

    def run(out, **kw):
        # brick test split: 2 images, batch 2 -> one step per epoch, a save after each of the 2 epochs
        return train(CFG, TrainConfig(data, out_dir=str(out), classes=["brick"], batch_size=2, epochs=2,
                                      progress=False, seed=5, **kw))

    def in_child(fn):  # a refusal (WMoEError) exits 3, its message in error.txt
        return kill_points.in_child(fn, (WMoEError,), lambda e: (work / "error.txt").write_text(str(e)))

    def record():
        stages = checkpoint_set.fault_hook.record()
        run(work / "ref")
        (work / "stages.json").write_text(json.dumps(stages))

    assert in_child(record) == 0
    stages = json.loads((work / "stages.json").read_text())
    ref = load_file(str(work / "ref" / "last.safetensors"))
    report = []
    for k, stage in enumerate(stages):
        out = work / f"kill{k:02d}"

        def killed():
            checkpoint_set.fault_hook.kill_at(k)
            run(out)

        assert in_child(killed) == -signal.SIGKILL, stage
        leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
        rc = in_child(lambda: run(out, resume=True))
        how = "resumed"
        if rc == 3:  # refused with a message: only acceptable when no save was ever committed
            how = "refused: " + (work / "error.txt").read_text()
            rc = in_child(lambda: run(out))
        got = load_file(str(out / "last.safetensors")) if rc == 0 else {}
        same = rc == 0 and got.keys() == ref.keys() and all(torch.equal(got[n], ref[n]) for n in ref)
        after = sorted(p.name for p in out.iterdir())
        checkpoint_set.verify(out)
        report.append({"stage": stage, "rc": rc, "how": how, "bit_exact": same, "before": leftovers,
                       "after": after})
    (work / "report.json").write_text(json.dumps(report, indent=1))
''')


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), image_size=32, n_test_good=1, n_test_defect=1,
                             categories=["brick"])


def test_sigkill_at_every_save_stage_then_resume_is_bit_exact(data, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    r = subprocess.run([sys.executable, str(driver), str(data), str(tmp_path)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    stages = [x["stage"] for x in report]
    # two saves, each: begin, 3 files written, commit, 3 renames, done
    assert stages.count("committed") == 2 and stages.count("renamed:last.optim.safetensors") == 2
    assert len(stages) == 18
    final = set(checkpoint_set.FILES) | {checkpoint_set.MANIFEST}
    for x in report:
        assert x["rc"] == 0 and x["bit_exact"], x
        # no temporaries (the run's lock file stays: it is emptied, never deleted; see wmoe.folder_lock)
        assert final <= set(x["after"]) and not [n for n in x["after"] if n.startswith(".") and n != LOCK_NAME], x
        if x["how"] != "resumed":  # refusing is only right when nothing was ever committed
            assert "does not exist" in x["how"] and checkpoint_set.MANIFEST not in x["before"], x
    # the kills really landed between the renames: mixed-looking directories that were rolled forward
    mid = [x for x in report if x["stage"] == "renamed:last.safetensors"]
    assert mid and all(any(n.endswith(".pending") for n in x["before"]) for x in mid)


def _run(data, out, **kw):
    return train(CFG, TrainConfig(str(data), out_dir=str(out), classes=["brick"], batch_size=2, progress=False,
                                  seed=5, **kw))


def test_mixed_set_is_refused_naming_the_files(data, tmp_path):
    _run(data, tmp_path / "a", epochs=1)
    _run(data, tmp_path / "b", epochs=2)
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "b", mixed)
    shutil.copy(tmp_path / "a" / checkpoint_set.OPTIMIZER, mixed / checkpoint_set.OPTIMIZER)
    with pytest.raises(CheckpointError, match=r"mixed checkpoint set.*last\.optim\.safetensors is from save "
                                              r"00000001-\w+ \(step 1\)"):
        _run(data, mixed, epochs=3, resume=True)
    # without a manifest (files copied by hand) the weights' save id decides, and the mix is still refused
    (mixed / checkpoint_set.MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="last.optim.safetensors"):
        _run(data, mixed, epochs=3, resume=True)


def test_finished_run_is_not_replaced_without_resume_or_overwrite(data, tmp_path):
    out = tmp_path / "run"
    _run(data, out, epochs=1)
    before = (out / "last.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already holds a training run.*--resume.*--overwrite"):
        _run(data, out, epochs=1)
    assert (out / "last.safetensors").read_bytes() == before
    with pytest.raises(CheckpointError, match="contradict"):
        _run(data, out, epochs=1, resume=True, overwrite=True)
    (out / ".last.safetensors.00000009-abc.pending").write_bytes(b"stale")
    (out / ".last.json.x1y2.tmp.json").write_bytes(b"stale")
    (out / "notes.txt").write_text("the user's own file stays")
    _run(data, out, epochs=2, overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert set(checkpoint_set.FILES) | {checkpoint_set.MANIFEST, "notes.txt"} <= names
    assert not [n for n in names if n.startswith(".") and n != LOCK_NAME]  # the stale temporaries are gone
    assert checkpoint_set.verify(out).step == 2
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        _run(data, tmp_path / "afile", epochs=1)


def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(data, tmp_path):
    from wmoe.errors import NonFiniteError

    out = tmp_path / "run"
    # --lr 1e9: the first update (saved at the end of epoch 1) throws the weights so far that the next forward
    # pass overflows
    with pytest.raises(NonFiniteError, match=r"diverged at step 2: the scores became NaN/inf with --lr 1e\+09; "
                                             r"the last good checkpoint .* \(step 1\) is kept"):
        _run(data, out, epochs=4, lr=1e9)
    assert checkpoint_set.verify(out).step == 1


def test_train_config_refuses_bad_values_like_the_cli():
    from wmoe.errors import UsageError

    for kw in ({"epochs": -3}, {"epochs": 0}, {"batch_size": 0}, {"lr": float("nan")}, {"lr": 0.0},
               {"num_workers": -1}, {"max_steps": 0}):
        with pytest.raises(UsageError, match=f"TrainConfig: {next(iter(kw))}="):
            TrainConfig("data", **kw)
