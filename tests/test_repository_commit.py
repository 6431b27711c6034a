"""Model repositories are updated like a database commit (export/repo_commit.py): a failed or killed
``wmoe export triton`` leaves the repository serving what it served.

The kill points are injected deterministically (``wmoe.export.repo_commit.fault_hook`` SIGKILLs the process at the
k-th stage), never by sleeping: one driver process imports everything once and forks a child per kill point. The
switch under load against the real server is in tests/test_triton.py (test_overwrite_under_load_no_request_fails).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from wmoe.model.checkpoint import save_checkpoint
from wmoe.model.config import ModelConfig
from wmoe.contract import sha256_file
from wmoe.export import repo_commit
from wmoe.export.cli import main as export_main
from wmoe.export.onnx_export import ExportError, export_onnx
from wmoe.export.triton_repo import TritonOptions, write_repository
from wmoe.model.wmoe_clip import WMoECLIP

SIZE, FRAME = 56, (48, 64)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two frames-input ONNX (thresholds 1.0 and 2.0, so their bytes differ): the served one and its replacement.
    One export; the second file is the first with another decision in its metadata."""
    import onnx

    from wmoe.contract import Decision

    d = tmp_path_factory.mktemp("two")
    torch.manual_seed(3)
    ckpt = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=SIZE)).eval(), d / "a.safetensors")
    a = export_onnx(ckpt, d / "a.onnx", preprocess=True, frame_size=FRAME, threshold=1.0)
    m = onnx.load(str(a))
    for p in m.metadata_props:
        if p.key == "wmoe.threshold":
            p.value = "2.0"
        if p.key == "wmoe.decision":
            p.value = Decision(threshold=2.0).to_json()
    onnx.save(m, str(d / "b.onnx"))
    return {"a": a, "b": d / "b.onnx", "ckpt": ckpt}


def served(repo, model="wmoe", version=1):
    """What a server would load now: the version's model file (which of a/b, by hash) and the config's threshold."""
    vdir = repo / model / str(version)
    onnx = vdir / "model.onnx"
    cfg = (repo / model / "config.pbtxt").read_text()
    thr = cfg.split('key: "wmoe.threshold"')[1].split('string_value: "')[1].split('"')[0]
    return sha256_file(onnx) if onnx.is_file() else None, float(thr)


def test_failed_overwrite_keeps_the_served_version(two_models, tmp_path, capsys):
    """A truncated checkpoint with --overwrite: refused in one line, version 1 still complete and served (the old
    code deleted repo/wmoe/1 first: only config.pbtxt and README.md were left)."""
    repo = tmp_path / "repo"
    write_repository(two_models["a"], repo, TritonOptions(device="cpu"))
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(two_models["ckpt"].read_bytes()[:5000])
    rc = export_main(["triton", str(bad), "--out", str(repo), "--overwrite", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.safetensors" in err and len(err.strip().splitlines()) == 1, err
    after = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before  # nothing served changed, no staging left behind
    assert served(repo) == (sha256_file(two_models["a"]), 1.0)
    # and a good overwrite replaces it, recording what it was made from
    write_repository(two_models["b"], repo, TritonOptions(device="cpu", overwrite=True))
    assert served(repo) == (sha256_file(two_models["b"]), 2.0)
    rec = json.loads((repo / "wmoe" / "1" / "wmoe-version.json").read_text())
    assert rec["onnx_sha256"] == sha256_file(two_models["b"]) and rec["source"] == str(two_models["b"].resolve())
    assert not [p for p in (repo / "wmoe").iterdir() if p.name.startswith(".")]


def test_staged_version_is_verified_before_the_switch(two_models, tmp_path, monkeypatch):
    """A staged copy that is not what was written (a disk or process changing it) is refused before anything
    served changes."""
    from wmoe.export import triton_repo

    repo = tmp_path / "repo"
    write_repository(two_models["a"], repo, TritonOptions(device="cpu"))
    real_place = triton_repo._place

    def corrupting(src, dst, link=False):
        real_place(src, dst, link)
        if dst.name == "model.onnx":
            with open(dst, "r+b") as f:
                f.seek(-10, 2)
                f.write(b"\xff" * 10)

    monkeypatch.setattr(triton_repo, "_place", corrupting)
    with pytest.raises(ExportError, match="stage-1-.*/model.onnx (is not an ONNX model|fails the ONNX checker)"):
        write_repository(two_models["b"], repo, TritonOptions(device="cpu", overwrite=True))
    assert served(repo) == (sha256_file(two_models["a"]), 1.0)
    assert not [p for p in (repo / "wmoe").iterdir() if p.name.startswith(".")]


def test_second_export_into_a_repository_being_written_is_refused(two_models, tmp_path):
    from wmoe.folder_lock import FolderLock, FolderLockedError

    repo = tmp_path / "repo"
    with FolderLock(repo, "model repository", command="wmoe export triton (test)"):
        with pytest.raises(FolderLockedError, match=r"in use by another wmoe process \(pid \d+ on .*wmoe export "
                                                    r"triton \(test\)"):
            write_repository(two_models["a"], repo, TritonOptions(device="cpu"))


def test_lock_of_a_killed_export_is_taken_over_and_said(two_models, tmp_path, capsys):
    """An export SIGKILLed while holding the repository's lock: the next export recognises the lock as stale, takes
    it over and says so, naming the dead holder (the old code took it over without a word)."""
    repo = tmp_path / "repo"
    code = ("import os, signal, sys\nfrom wmoe.folder_lock import FolderLock\n"
            "FolderLock(sys.argv[1], 'model repository', command='wmoe export triton (killed)').acquire()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    capsys.readouterr()
    write_repository(two_models["a"], repo, TritonOptions(device="cpu"))
    out = capsys.readouterr().out
    assert f"a stale lock on {repo} (pid " in out and "running 'wmoe export triton (killed)'" in out, out
    assert "no longer running) was taken over" in out, out
    assert served(repo) == (sha256_file(two_models["a"]), 1.0)


DRIVER = textwrap.dedent(r'''
    import json, signal, sys
    from pathlib import Path
    from wmoe.contract import sha256_file
    from wmoe.export import repo_commit
    from wmoe.export.triton_repo import TritonOptions, write_repository
    from wmoe.kill_points import in_child

    a, b, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    OPTS = dict(device="cpu", backends=("onnxruntime", "python"))


    def state(repo):
        out = {}
        for m in ("wmoe", "wmoe_python"):
            f = repo / m / "1" / "model.onnx"
            files = sorted(p.name for p in (repo / m / "1").iterdir()) if (repo / m / "1").is_dir() else []
            cfg = (repo / m / "config.pbtxt").read_text()
            thr = float(cfg.split('key: "wmoe.threshold"')[1].split('string_value: "')[1].split('"')[0])
            h = sha256_file(f) if f.is_file() else None
            out[m] = {"model": {sha256_file(a): "a", sha256_file(b): "b"}.get(h, h), "threshold": thr,
                      "files": files, "hidden": sorted(p.name for p in (repo / m).iterdir()
                                                        if p.name.startswith("."))}
        return out

    def record():
        write_repository(a, work / "ref", TritonOptions(**OPTS))
        stages = repo_commit.fault_hook.record()
        write_repository(b, work / "ref", TritonOptions(**OPTS, overwrite=True))
        (work / "stages.json").write_text(json.dumps(stages))

    assert in_child(record) == 0
    stages = json.loads((work / "stages.json").read_text())
    report = []
    for k, stage in enumerate(stages):
        repo = work / f"kill{k:02d}"
        assert in_child(lambda: write_repository(a, repo, TritonOptions(**OPTS))) == 0

        def killed():
            repo_commit.fault_hook.kill_at(k)
            write_repository(b, repo, TritonOptions(**OPTS, overwrite=True))

        assert in_child(killed) == -signal.SIGKILL, stage
        killed_state = state(repo)
        lines = []
        def recover():
            for m in ("wmoe", "wmoe_python"):
                lines.extend(repo_commit.recover(repo / m))
            (work / "lines.json").write_text(json.dumps(lines))
        assert in_child(recover) == 0
        report.append({"stage": stage, "killed": killed_state, "recovered": state(repo),
                       "lines": json.loads((work / "lines.json").read_text())})
    (work / "report.json").write_text(json.dumps(report, indent=1))
''')


def test_sigkill_at_every_commit_stage_leaves_a_served_version(two_models, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    r = subprocess.run([sys.executable, str(driver), str(two_models["a"]), str(two_models["b"]), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    stages = [x["stage"] for x in report]
    # staged, verified, then per model: committed, switched, configured, done
    assert stages == ["staged", "verified"] + ["committed", "switched", "configured", "done"] * 2
    complete = {"model.onnx", "wmoe-version.json"}
    for i, x in enumerate(report):
        for m, st in x["killed"].items():
            # whatever the kill point, version 1 is a complete model, a or b, never a half-written folder
            assert st["model"] in ("a", "b") and complete <= set(st["files"]), (x["stage"], m, st)
        for m, st in x["recovered"].items():
            # after the next export's recovery: the version and its config agree, no staging is left
            assert (st["model"], st["threshold"]) in (("a", 1.0), ("b", 2.0)) and not st["hidden"], (x, m)
        first_commit = stages.index("committed")
        if i < first_commit:  # killed before any commit: the repository is exactly what it served
            assert all((st["model"], st["threshold"]) == ("a", 1.0) for st in x["killed"].values()), x
            assert all(st["model"] == "a" for st in x["recovered"].values()), x
        elif first_commit <= i < first_commit + 4:  # the first model's commit is rolled forward
            assert x["recovered"]["wmoe"]["model"] == "b", x
            if x["stage"] != "done":
                assert any("finished the switch to version 1" in ln for ln in x["lines"]), x
    # the kill between the version switch and the config (the only window where they disagree) was finished
    mid = report[stages.index("switched")]
    assert (mid["killed"]["wmoe"]["model"], mid["killed"]["wmoe"]["threshold"]) == ("b", 1.0)
    assert (mid["recovered"]["wmoe"]["model"], mid["recovered"]["wmoe"]["threshold"]) == ("b", 2.0)
