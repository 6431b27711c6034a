"""A full disk or a folder that cannot be written is one line at every writer, naming the path and what was kept.

How the failures are made, for real (as root, where chmod stops nothing):
- EFBIG: ``prlimit --fsize=N`` on the command (Python ignores SIGXFSZ, so a write past N fails with errno 27);
- ENOSPC: a 256 KiB tmpfs mounted in a private mount namespace (``unshare -m``), so nothing outside the test sees it;
- read-only: the output folder bind-mounted read-only onto itself in a private mount namespace (EROFS).
Where ``prlimit`` or ``unshare``/``mount`` are not permitted, those cases skip and say why; the unit tests at the
end cover every errno with a raised ``OSError``.
"""
from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wmoe.model.checkpoint import save_checkpoint
from wmoe.cli.commands import main as wmoe_main
from wmoe.model.config import ModelConfig
from wmoe.errors import OutputError, output_error, write_failure

PY = sys.executable
CFG = ModelConfig.tiny(image_size=112)


def _can(cmd: str) -> bool:
    return subprocess.run(["sh", "-c", cmd], capture_output=True).returncode == 0


HAVE_PRLIMIT = shutil.which("prlimit") is not None and _can("prlimit --fsize=100000 true")
HAVE_NS = shutil.which("unshare") is not None and _can("unshare -m sh -c 'mount -t tmpfs -o size=64k tmpfs /mnt'")
needs_prlimit = pytest.mark.skipif(not HAVE_PRLIMIT, reason="prlimit --fsize is not available here")
needs_ns = pytest.mark.skipif(not HAVE_NS, reason="no private mount namespace here (unshare -m + mount needs root)")


def run(args, fsize=None, wrap=None, cwd=None):
    """Run ``args`` (a wmoe command line as a list) under a file-size limit or inside a shell ``wrap`` (with {cmd})."""
    cmd = [PY, "-m", *args]
    if fsize is not None:
        cmd = ["prlimit", f"--fsize={fsize}", *cmd]
    if wrap is not None:
        cmd = ["unshare", "-m", "sh", "-c", wrap.format(cmd=shlex.join(cmd))]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def one_line(r, *needles):
    """Exit status 2 and one error line (a progress bar before it is fine), no traceback."""
    err = [ln for ln in r.stderr.strip().splitlines() if "error:" in ln]
    assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-3000:])
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    network = __import__("wmoe.model.wmoe_clip", fromlist=["WMoECLIP"]).WMoECLIP
    return save_checkpoint(network(CFG).eval(), d / "m.safetensors")


@needs_prlimit
def test_efbig_at_the_checkpoint_of_a_resumed_run(tmp_path):
    """--resume under a file-size limit: the save of step 2 fails; the step-1 checkpoint is kept and said so (the
    old code raised a raw SafetensorError ... File too large)."""
    from wmoe.training import checkpoint_set
    from wmoe.data import make_demo_dataset

    data = make_demo_dataset(tmp_path / "demo", image_size=32, n_test_good=1, n_test_defect=1, categories=["brick"])
    out = tmp_path / "run"
    base = ["wmoe", "train", str(data), "--out", str(out), "--tiny", "--image-size", "112", "--device", "cpu",
            "--batch-size", "2"]
    assert wmoe_main(base[1:] + ["--epochs", "1"]) == 0
    before = (out / "last.safetensors").read_bytes()
    r = run(base + ["--epochs", "2", "--resume"], fsize=300_000)
    one_line(r, f"cannot write {out / 'last.safetensors'}: the disk is full",
             f"the checkpoint of step 1 in {out} is kept")
    assert (out / "last.safetensors").read_bytes() == before and checkpoint_set.verify(out).step == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".pending")]


@pytest.fixture(scope="module")
def frames_onnx(ckpt, tmp_path_factory):
    from wmoe.export.onnx_export import export_onnx

    return export_onnx(ckpt, tmp_path_factory.mktemp("onnx") / "m.onnx", preprocess=True, frame_size=(48, 64))


@needs_prlimit
def test_efbig_at_onnx_export_engine_and_repository(ckpt, frames_onnx, tmp_path):
    """ONNX export (the old code: a raw OSError [Errno 27]), the engine writer and wmoe export triton: one line each,
    the previous file or served version kept."""
    onnx_path = tmp_path / "m.onnx"
    shutil.copy(frames_onnx, onnx_path)
    before = onnx_path.read_bytes()
    r = run(["wmoe", "export", "onnx", str(ckpt), "--out", str(onnx_path), "--frame-size", "48x64"], fsize=300_000)
    one_line(r, f"cannot write {onnx_path}: the disk is full", "the previous m.onnx is kept")
    assert onnx_path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]

    repo = tmp_path / "repo"
    assert wmoe_main(["export", "triton", str(onnx_path), "--out", str(repo), "--device", "cpu"]) == 0
    served = (repo / "wmoe" / "1" / "model.onnx").read_bytes()
    r = run(["wmoe", "export", "triton", str(onnx_path), "--out", str(repo), "--device", "cpu", "--overwrite"],
            fsize=300_000)
    one_line(r, "the disk is full", f"the repository {repo} serves what it served")
    assert (repo / "wmoe" / "1" / "model.onnx").read_bytes() == served
    assert not [p for p in (repo / "wmoe").iterdir() if p.name.startswith(".")]

    script = ("from wmoe.export.trt_build import write_engine_and_sidecar\n"
              "from wmoe.contract import EngineSidecar\n"
              "import sys\n"
              "side = EngineSidecar('e.engine', '', '', 'fp16', '10.16', 'gpu', '8.9')\n"
              "write_engine_and_sidecar(sys.argv[1], b'x' * 1_000_000, side)\n")
    eng = tmp_path / "e.engine"
    eng.write_bytes(b"old engine")
    r = subprocess.run(["prlimit", "--fsize=300000", PY, "-c", script, str(eng)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "OutputError: cannot write " + str(eng) + ": the disk is full" in r.stderr, r.stderr
    assert "the previous e.engine is kept" in r.stderr and eng.read_bytes() == b"old engine"


@needs_prlimit
def test_efbig_at_the_results_file(tmp_path):
    script = ("import sys\n"
              "from wmoe.runtime.results import ResultFile\n"
              "f = ResultFile(sys.argv[1])\n"
              "for i in range(10000):\n"
              "    f._write('x' * 99 + '\\n'); f.lines += 1\n")
    r = subprocess.run(["prlimit", "--fsize=2000", PY, "-c", script, str(tmp_path / "r.jsonl")], capture_output=True,
                       text=True, timeout=120)
    assert "ResultsError: cannot write " + str(tmp_path / "r.jsonl") + ": the disk is full" in r.stderr, r.stderr
    assert "lines written before are kept" in r.stderr


@needs_prlimit
def test_efbig_at_the_overlays_of_the_camera_and_predict(ckpt, frames_onnx, tmp_path):
    """The overlay writers (wmoe-camera --overlays, wmoe predict): one line naming the overlay file; the camera's
    results written before are kept and its final line still accounts for every frame read."""
    import numpy as np
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), np.uint8)).save(frames / f"{i}.png")
    res = tmp_path / "res.jsonl"
    r = run(["wmoe.runtime.camera", "--source", str(frames), "--model", str(frames_onnx), "--overlays",
             str(tmp_path / "ov"), "--results", str(res)], fsize=6000)
    one_line(r, f"cannot write {tmp_path / 'ov'}", "the disk is full")
    assert "final: " in r.stdout and "read " in r.stdout, r.stdout
    assert len(res.read_text().splitlines()) >= 1  # what was scored before the failure is kept
    r = run(["wmoe", "predict", str(ckpt), str(frames), "--out", str(tmp_path / "pred"), "--device", "cpu"],
            fsize=6000)
    one_line(r, f"cannot write {tmp_path / 'pred'}", "the disk is full")


@needs_ns
def test_enospc_and_read_only_folder_for_real(frames_onnx, tmp_path):
    """A real ENOSPC (a 256 KiB tmpfs) gives the same line as EFBIG; a read-only folder says so; both name the
    path and what was kept."""
    full = tmp_path / "full"
    full.mkdir()
    wrap = f"mount -t tmpfs -o size=256k tmpfs {full} && {{cmd}}"
    r = run(["wmoe", "export", "triton", str(frames_onnx), "--out", str(full / "repo"), "--device", "cpu"], wrap=wrap)
    one_line(r, f"cannot write {full / 'repo'}", "the disk is full (no space left, or the file-size limit reached)",
             "nothing was written")

    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "m.onnx").write_bytes(b"previous")
    wrap = f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && {{cmd}}"
    r = run(["wmoe", "export", "triton", str(frames_onnx), "--out", str(ro / "repo"), "--device", "cpu"], wrap=wrap)
    one_line(r, f"{ro / 'repo'}", "not writable")  # the CLI's --out check, before any work
    code = (f"from wmoe.export.triton_repo import write_repository; write_repository({str(frames_onnx)!r}, "
            f"{str(ro / 'repo')!r})")  # past the CLI's check: the writer itself
    r = subprocess.run(["unshare", "-m", "sh", "-c", wrap.format(cmd=shlex.join([PY, "-c", code]))],
                       capture_output=True, text=True, timeout=300)
    assert f"OutputError: cannot write {ro / 'repo'}" in r.stderr and "the folder is read-only" in r.stderr, r.stderr
    r = run(["wmoe", "export", "onnx", str(frames_onnx), "--out", str(ro / "m.onnx")], wrap=wrap)
    one_line(r, f"{ro / 'm.onnx'}", "not writable")  # refused by the --out check, before any work
    assert (ro / "m.onnx").read_bytes() == b"previous"


@needs_ns
def test_demo_set_cut_short_by_a_full_disk_says_so_and_the_rerun_replaces_it(tmp_path):
    """`wmoe data demo` on a disk that fills half-way: one line saying the set is incomplete and how many images
    were written; once there is room, the same command replaces it (the old code said "nothing was written there"
    about the failed file, and the rerun was refused: "not empty and is not a demo set")."""
    full = tmp_path / "full"
    full.mkdir()
    cmd = shlex.join([PY, "-m", "wmoe", "data", "demo", str(full / "d"), "--size", "64"])
    r = subprocess.run(["unshare", "-m", "sh", "-c",
                        f"mount -t tmpfs -o size=256k tmpfs {full} && {cmd}; echo rc=$? >&2; "
                        f"mount -o remount,size=64m {full} && {cmd} && find {full / 'd'} -name '*.png' | wc -l && "
                        f"cat {full / 'd' / 'demo_info.json'}"], capture_output=True, text=True, timeout=600)
    err = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(err) == 1 and "rc=2" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert f"cannot write {full / 'd'}" in err[0] and "the disk is full" in err[0], err
    assert f"the demo set in {full / 'd'} is incomplete (" in err[0] and "images written" in err[0], err
    assert r.returncode == 0 and "wrote the demo data set" in r.stdout, (r.stdout, r.stderr)
    from wmoe.data.demo import DEMO_CATEGORIES

    assert int(r.stdout.split("\n")[1]) == len(DEMO_CATEGORIES) * (4 + 6 + 8 + 8) and '"complete": true' in r.stdout, r.stdout


def test_demo_into_a_foreign_folder_is_one_line(tmp_path, capsys):
    """`wmoe data demo DIR` on a folder holding other files (the old code: a raw FileExistsError)."""
    (tmp_path / "mine.txt").write_text("the user's file")
    assert wmoe_main(["data", "demo", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path} is not empty and is not a demo set" in err[0], err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "the disk is full"), (errno.EFBIG, "the disk is full"),
                                        (errno.EDQUOT, "the disk is full"), (errno.EACCES, "permission denied"),
                                        (errno.EROFS, "the folder is read-only")])
def test_every_errno_maps_to_one_message(tmp_path, code, words):
    """ENOSPC and EFBIG (and a quota) give the same line, at atomic_path (checkpoints, ONNX, engines, repositories,
    overlays) and at the checkpoint set, naming the path and what was kept."""
    from wmoe.training import checkpoint_set
    from wmoe.atomic import atomic_path

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(OutputError) as e:
        with atomic_path(target):
            raise OSError(code, os.strerror(code))
    assert str(e.value) == f"cannot write {target}: {words}" + (
        " (no space left, or the file-size limit reached)" if "full" in words else "") + "; the previous f.bin is kept"
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]

    def failing(path, sid):
        raise OSError(code, os.strerror(code))
    writers = {n: failing for n in checkpoint_set.FILES}
    with pytest.raises(OutputError, match=f"cannot write .*last.safetensors: {words}.*no checkpoint was saved in"):
        checkpoint_set.save(tmp_path / "run", 1, writers)
    assert write_failure(RuntimeError(f"SafetensorError: Error while serializing: IoError(Os {{ code: {code} }}) "
                                      f"(os error {code})")) is not None
    assert output_error(ValueError("unrelated"), target, "x") is None
