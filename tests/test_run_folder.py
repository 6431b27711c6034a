"""A run folder has one writer (wmoe.folder_lock), a resume that changes the setup says so and records it, and
checkpoints honour the umask."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from wmoe.cli.commands import main as wmoe_main
from wmoe.data import make_demo_dataset
from wmoe.folder_lock import LOCK_NAME, FolderLock, FolderLockedError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), image_size=32, n_test_good=2, n_test_defect=2,
                             categories=["brick", "grass"])


TRAIN = ["--tiny", "--image-size", "112", "--device", "cpu"]


def test_second_train_into_the_same_folder_is_refused_naming_the_holder(data, tmp_path, capsys):
    """`wmoe train --out SAME` while another one runs: refused in one line naming its pid and host (the old code
    let both run: only one checkpoint survived). Once the holder is killed (SIGKILL: no clean-up), its lock is
    recognised as stale and the next run takes it over."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "wmoe", "train", str(data), "--out", str(out), *TRAIN,
                              "--epochs", "1000", "--batch-size", "1", "--seed", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait until the first run holds the lock (after its imports)
            lock = out / LOCK_NAME
            if lock.is_file() and lock.read_text().strip() and json.loads(lock.read_text())["pid"] == first.pid:
                break
            assert first.poll() is None, first.stderr.read()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("the first run never took the lock")
        capsys.readouterr()
        rc = wmoe_main(["train", str(data), "--out", str(out), *TRAIN, "--epochs", "1", "--seed", "2"])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert f"in use by another wmoe process (pid {first.pid} on {socket.gethostname()}" in err, err
        assert first.poll() is None  # the holder was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    rc = wmoe_main(["train", str(data), "--out", str(out), *TRAIN, "--epochs", "1", "--seed", "2", "--overwrite"])
    text = capsys.readouterr().out
    assert rc == 0 and f"a stale lock on {out} (pid {first.pid} on {socket.gethostname()}" in text, text
    assert "no longer running) was taken over" in text
    assert (out / "last.safetensors").is_file()
    assert (out / LOCK_NAME).read_text() == ""  # released at the end of the run


def test_lock_refusal_in_process_and_release(tmp_path):
    with FolderLock(tmp_path, "training run", command="wmoe train x") as held:
        with pytest.raises(FolderLockedError, match=rf"pid {os.getpid()} on .*running 'wmoe train x', since "):
            FolderLock(tmp_path, "training run").acquire()
        assert held.stale is None
    with FolderLock(tmp_path) as again:  # released cleanly: not stale
        assert again.stale is None


def test_resume_with_another_batch_size_and_classes_says_so_and_records_it(data, tmp_path, capsys):
    from safetensors import safe_open

    out = tmp_path / "run"
    assert wmoe_main(["train", str(data), "--out", str(out), *TRAIN, "--epochs", "1", "--batch-size", "2",
                      "--classes", "brick"]) == 0
    capsys.readouterr()
    assert wmoe_main(["train", str(data), "--out", str(out), *TRAIN, "--epochs", "2", "--batch-size", "4",
                      "--classes", "brick,grass", "--resume"]) == 0
    text = capsys.readouterr().out
    assert "resuming" in text and "with a changed setup: --classes ['brick', 'grass'] (was ['brick']), " \
           "--batch-size 4 (was 2)" in text, text
    with safe_open(str(out / "last.safetensors"), "pt") as f:
        extra = json.loads(f.metadata()["extra"])
    (rec,) = extra["resume_changes"]
    assert rec["step"] == 2 and rec["changes"]["batch_size"] == {"was": 2, "now": 4}
    assert rec["changes"]["classes"] == {"was": ["brick"], "now": ["brick", "grass"]}
    assert json.loads((out / "last.json").read_text())["extra"]["resume_changes"] == extra["resume_changes"]
    # a resume with the same setup adds nothing and keeps the record
    assert wmoe_main(["train", str(data), "--out", str(out), *TRAIN, "--epochs", "3", "--batch-size", "4",
                      "--classes", "brick,grass", "--resume"]) == 0
    assert "changed setup" not in capsys.readouterr().out
    with safe_open(str(out / "last.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["extra"])["resume_changes"] == extra["resume_changes"]


def test_checkpoints_honour_the_umask(data, tmp_path):
    """Every file of a run gets 0666 less the umask (safetensors alone writes 0600)."""
    out = tmp_path / "run"
    old = os.umask(0o002)
    try:
        assert wmoe_main(["train", str(data), "--out", str(out), *TRAIN, "--epochs", "1", "--classes", "brick"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir() if not p.name.startswith(".")}
    assert modes["last.safetensors"] == modes["last.optim.safetensors"] == "0o664", modes
    assert set(modes.values()) == {"0o664"}, modes
