"""Command-line conventions and the CLI part of the bad-input suite.

Every option is validated while parsing (one line naming the option, exit status 2), the same error gives the same
line and status through ``wmoe``, ``wmoe-export`` and ``wmoe-bench``, ``--debug`` works after the subcommand,
``--version`` everywhere, help shows defaults, and files/paths/optional packages fail with one clear line.
Mostly in-process (``main(argv)``) to stay cheap; the real console scripts are run where the entry point matters.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wmoe.bench import cli as bench_cli
from wmoe.cli.commands import build_parser, main as wmoe_main
from wmoe.export import cli as export_cli

BIN = Path(sys.executable).parent


def _usage_error(capsys, fn, argv):
    with pytest.raises(SystemExit) as e:
        fn(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err  # one line, no usage dump
    return lines[0]


BAD_OPTIONS = [
    (["train", "d", "--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
    (["train", "d", "--epochs", "-3"], "argument --epochs: must be a positive integer, got -3"),
    (["train", "d", "--workers", "-1"], "argument --workers: must be 0 or more"),
    (["train", "d", "--lr", "0"], "argument --lr: must be a positive number"),
    (["train", "d", "--lr", "nan"], "argument --lr: expected a finite number"),
    (["train", "d", "--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    (["train", "d", "--max-steps", "0"], "argument --max-steps: must be a positive integer"),
    (["train", "d", "--image-size", "-518"], "argument --image-size: must be a positive integer"),
    (["train", "d", "--device", "gpu0"], "argument --device: 'gpu0' is not a device"),
    (["train", "d", "--device", "tpu"], "argument --device: 'tpu' is not a device"),
    (["eval", "c", "d", "--sigma", "-1"], "argument --sigma: must be 0 or more"),
    (["eval", "c", "d", "--batch-size", "-2"], "argument --batch-size: must be a positive integer"),
    (["predict", "c", "i", "--threshold", "inf"], "argument --threshold: expected a finite number"),
    (["predict", "c", "i", "--batch-size", "0"], "argument --batch-size: must be a positive integer"),
    (["data", "meta", "r", "--format", "mvtek"], "unknown format 'mvtek' (did you mean 'mvtec'?)"),
    (["data", "demo", "o", "--size", "0"], "argument --size: must be a positive integer"),
    (["demo", "--epochs", "0"], "argument --epochs: must be a positive integer"),
    (["export", "onnx", "CKPT", "--out", "m.onnx", "--precision", "fp61"], "unknown precision 'fp61' (did you mean"),
    (["export", "onnx", "CKPT", "--out", "m.onnx", "--frame-size", "1080x"], "argument --frame-size: expected HxW"),
    (["export", "onnx", "CKPT", "--out", "m.onnx", "--opset", "0"], "argument --opset: must be a positive integer"),
    (["export", "onnx", "CKPT", "--out", "m.onnx", "--flavor", "plugins"], "(did you mean 'plugin'?)"),
    (["export", "trt", "CKPT", "--out", "e", "--batch", "8:1:2"], "argument --batch: batch range '8:1:2'"),
    (["export", "trt", "CKPT", "--out", "e", "--workspace-gb", "0"], "argument --workspace-gb: must be a positive"),
    (["export", "aoti", "CKPT", "--out", "a.pt2", "--max-batch", "0"], "argument --max-batch: must be a positive"),
    (["export", "reference", "m.onnx", "--out-dir", "o", "--batch", "0"], "argument --batch: must be a positive"),
    (["bench", "CKPT", "--backends", "ort-cpux"], "unknown backend 'ort-cpux' (did you mean 'ort-cpu'?)"),
    (["bench", "CKPT", "--batch", "1,0"], "argument --batch: must be a positive integer, got 0"),
    (["bench", "CKPT", "--repeats", "0"], "argument --repeats: must be a positive integer"),
    (["bench", "CKPT", "--warmup", "-1"], "argument --warmup: must be 0 or more"),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from wmoe.model.checkpoint import save_checkpoint
    from wmoe.model.config import ModelConfig
    from wmoe.model.wmoe_clip import WMoECLIP

    return save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(),
                           tmp_path_factory.mktemp("ck") / "m.safetensors")


@pytest.mark.parametrize("argv,fragment", BAD_OPTIONS, ids=[" ".join(a[:2]) + " " + a[-2] for a, _ in BAD_OPTIONS])
def test_every_option_is_validated_at_parse_time(capsys, ckpt, argv, fragment):
    argv = [str(ckpt) if v == "CKPT" else v for v in argv]
    line = _usage_error(capsys, wmoe_main, argv)
    assert fragment in line, line
    if argv[0] in ("export", "bench"):  # the standalone programs say the same about the same option
        fn = export_cli.main if argv[0] == "export" else bench_cli.main
        line2 = _usage_error(capsys, fn, argv[1:])
        assert line2.split(": error: ")[1].split(" (see ")[0] == line.split(": error: ")[1].split(" (see ")[0]
        assert line2.startswith(f"wmoe-{argv[0]}")


def test_conflicts_and_image_size_are_one_line(capsys, tmp_path):
    for argv, fragment in [
        (["train", str(tmp_path), "--tiny", "--pretrained", __file__], "--tiny and --pretrained conflict"),
        (["train", str(tmp_path), "--tiny", "--backbone", "ViT-B-16"], "--tiny and --backbone conflict"),
        (["train", str(tmp_path), "--image-size", "500"], "--image-size 500 is not a multiple of "
                                                          "ViT-L-14-336-quickgelu's patch size 14 (e.g. 504)"),
        (["train", str(tmp_path), "--tiny", "--resume", "--overwrite", "--out", str(tmp_path / "r")],
         "--resume and --overwrite contradict"),
    ]:
        assert wmoe_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("wmoe train: error: ") and fragment in err[0], err


def test_out_is_checked_before_any_work(capsys, tmp_path, ckpt):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv in (["train", str(tmp_path), "--out", str(afile)], ["eval", str(ckpt), str(tmp_path), "--out", str(afile)],
                 ["predict", str(ckpt), str(tmp_path), "--out", str(afile)], ["demo", "--out", str(afile)],
                 ["data", "demo", str(afile)], ["bench", str(ckpt), "--out", str(afile / "sub")]):
        line = _usage_error(capsys, wmoe_main, argv)
        assert str(afile) in line and ("is an existing file" in line or "is a file" in line), line
    line = _usage_error(capsys, wmoe_main, ["export", "onnx", str(ckpt), "--out", str(tmp_path)])
    assert "is an existing folder; give a file name" in line
    line = _usage_error(capsys, wmoe_main, ["data", "meta", str(tmp_path), "--format", "mvtec", "--out",
                                             str(tmp_path)])
    assert "is an existing folder" in line


def test_misspelt_command_or_choice_gets_a_suggestion(capsys):
    """issue 22: argparse said "argument command: invalid choice: 'trian' (choose from 'data', 'train', ...)"."""
    line = _usage_error(capsys, wmoe_main, ["trian", "data"])
    assert line.startswith("wmoe: error: unknown command 'trian' (did you mean 'train'?); choose from data, train,")
    line = _usage_error(capsys, wmoe_main, ["export", "onx", "m"])
    assert line.startswith("wmoe export: error: unknown command 'onx' (did you mean 'onnx'?); choose from onnx, ")
    line = _usage_error(capsys, export_cli.main, ["onx", "m"])
    assert line.startswith("wmoe-export: error: unknown command 'onx' (did you mean 'onnx'?)")
    line = _usage_error(capsys, wmoe_main, ["export", "triton", "m", "--out", "r", "--backend", "onnxrt"])
    assert "argument --backend: unknown choice 'onnxrt' (did you mean 'onnxruntime'?)" in line
    assert "did you mean" not in _usage_error(capsys, wmoe_main, ["zzz"])


def test_no_empty_output_folder_is_left_by_a_failed_command(capsys, tmp_path):
    """issue 22: train (its run-folder lock), eval and predict made their --out folders and left them empty when
    they failed before writing; a folder that existed before is kept, and so is one with something in it."""
    missing = str(tmp_path / "missing.safetensors")
    for argv in (["train", str(tmp_path / "no-data"), "--tiny", "--out", str(tmp_path / "runs" / "a")],
                 ["eval", missing, str(tmp_path), "--out", str(tmp_path / "ev" / "a")],
                 ["predict", missing, str(tmp_path), "--out", str(tmp_path / "pr")],
                 ["export", "trt", __file__, "--out", str(tmp_path / "eng" / "m.engine")]):
        assert wmoe_main(argv) == 2, argv
        assert "error: " in capsys.readouterr().err
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == [], (argv, left)
    (tmp_path / "mine").mkdir()
    assert wmoe_main(["predict", missing, str(tmp_path), "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine").is_dir()  # the user's own folder stays


def test_config_file_print_config_and_the_run_folder_keeps_the_resolved_config(capsys, tmp_path):
    """issue 22: `wmoe train --config run.yaml` (LightningCLI's convention), --print-config on every command, the
    resolved config kept as OUT/config.yaml; the command line wins over the file, the file over the defaults."""
    data = tmp_path / "data"
    assert wmoe_main(["data", "demo", str(data), "--size", "48"]) == 0
    run = tmp_path / "run.yaml"
    run.write_text(f"# a run\ndata: {data}\ntiny: true\nimage-size: 112\nclasses: [brick, grass]\n"
                   f"batch_size: 4\nmax_steps: 1\nlr: 0.001\nout: {tmp_path / 'runs' / 'a'}\n")
    capsys.readouterr()
    assert wmoe_main(["train", "--config", str(run), "--lr", "0.005", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# wmoe train: every option, resolved") and not (tmp_path / "runs").exists()
    import yaml

    doc = yaml.safe_load(printed)
    assert doc["data"] == str(data) and doc["classes"] == "brick,grass" and doc["batch_size"] == 4
    assert doc["lr"] == 0.005 and doc["epochs"] == 20 and doc["tiny"] is True  # command line > file > default
    assert wmoe_main(["train", "--config", str(run)]) == 0
    kept = tmp_path / "runs" / "a" / "config.yaml"
    assert yaml.safe_load(kept.read_text()) == {**doc, "lr": 0.001}
    capsys.readouterr()
    (tmp_path / "again.json").write_text(json.dumps(yaml.safe_load(kept.read_text())))
    assert wmoe_main(["train", "--config", str(tmp_path / "again.json"), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {**doc, "lr": 0.001}  # JSON too; the kept file replays the run
    for text, fragment in (("batch_size: 0", "--config BAD: batch_size: must be a positive integer, got 0"),
                           ("batchsize: 3", "unknown option 'batchsize' (did you mean 'batch_size'?)"),
                           ("tiny: 3", "tiny: expected true or false, got 3"),
                           ("[1, 2", "not valid YAML at line 1"),
                           ("- a", "expected a mapping of option names to values")):
        (tmp_path / "bad.yaml").write_text(text)
        line = _usage_error(capsys, wmoe_main, ["train", str(data), "--config", str(tmp_path / "bad.yaml")])
        assert line.startswith("wmoe train: error: ") and fragment.replace("BAD", str(tmp_path / "bad.yaml")) \
            in line, line
    from wmoe.runtime.camera import build_parser as camera_parser, main as camera_main

    (tmp_path / "cam.json").write_text('{"source": "s", "model": "m", "class": "pcb", "out": "ov", "batch": 2}')
    capsys.readouterr()
    assert camera_main(["--config", str(tmp_path / "cam.json"), "--print-config"]) == 0
    cam = yaml.safe_load(capsys.readouterr().out)  # option names work as keys (--class -> class_name)
    assert (cam["class_name"], cam["overlays"], cam["batch"]) == ("pcb", "ov", 2) and camera_parser()
    for argv in (["--config", str(run)], ["--config", str(run), "train"]):  # before the command
        line = _usage_error(capsys, wmoe_main, argv)
        assert line.startswith("wmoe: error: --config FILE goes after the command: wmoe COMMAND --config FILE")
    line = _usage_error(capsys, export_cli.main, ["onnx", "--config", str(tmp_path / "none.yaml")])
    assert "--config " + str(tmp_path / "none.yaml") + ": no such file" in line


def test_folder_lock_discards_only_the_folder_it_made_empty(tmp_path):
    from wmoe.folder_lock import LOCK_NAME, FolderLock

    with pytest.raises(RuntimeError):
        with FolderLock(tmp_path / "a"):
            raise RuntimeError("failed before writing")
    assert not (tmp_path / "a").exists()
    with pytest.raises(RuntimeError):
        with FolderLock(tmp_path / "b"):
            (tmp_path / "b" / "half.bin").write_bytes(b"x")
            raise RuntimeError("failed after writing")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [LOCK_NAME, "half.bin"]
    with FolderLock(tmp_path / "c"):
        pass
    assert (tmp_path / "c" / LOCK_NAME).is_file()  # success: the folder is the command's output, kept
    # a taker that opened the lock file just before its folder was discarded locks the new file, not the old one
    first = FolderLock(tmp_path / "d").acquire()
    second = FolderLock(tmp_path / "d")
    stale_fd = os.open(first.path, os.O_RDWR)
    first.release(discard_if_empty=True)
    assert not (tmp_path / "d").exists()
    real_lock = second._lock
    calls = []

    def lock_stale_first(f):
        if not calls:
            calls.append(1)
            f.flock(stale_fd, f.LOCK_EX | f.LOCK_NB)
            return stale_fd  # the unlinked file
        return real_lock(f)

    second._lock = lock_stale_first
    second.acquire()
    assert os.path.samestat(os.fstat(second.fd), os.stat(tmp_path / "d" / LOCK_NAME))
    second.release()


def test_debug_after_the_subcommand_shows_the_traceback(capsys, tmp_path):
    from wmoe.model.checkpoint import CheckpointError

    missing = str(tmp_path / "missing.safetensors")
    assert wmoe_main(["eval", missing, str(tmp_path)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    for argv in (["--debug", "eval", missing, str(tmp_path)], ["eval", missing, str(tmp_path), "--debug"]):
        with pytest.raises(CheckpointError, match="missing.safetensors"):
            wmoe_main(argv)
    from wmoe.errors import WMoEError

    with pytest.raises(WMoEError, match="no.onnx: no such ONNX file"):
        export_cli.main(["reference", str(tmp_path / "no.onnx"), "--out-dir", str(tmp_path / "o"), "--debug"])


def test_same_error_same_line_and_status_through_every_entry_point(capsys, tmp_path):
    """``wmoe export ...`` and ``wmoe-export ...`` (the console scripts' functions) print the same line."""
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(256))
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(g), str(foreign))
    expect = {empty: "is empty (0 bytes), not an ONNX model", garbage: "is not an ONNX model",
              foreign: "is not a wmoe model"}
    for path, fragment in expect.items():
        outs = []
        for fn, argv in ((wmoe_main, ["export"]), (export_cli.main, [])):
            assert fn(argv + ["reference", str(path), "--out-dir", str(tmp_path / "o")]) == 2
            err = capsys.readouterr().err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in err, err
            assert str(path) in lines[0] and fragment in lines[0], lines
            outs.append(lines[0])
        assert outs[0] == outs[1]  # identical, prefix included ("wmoe export reference: error: ...")


def test_version_usage_and_defaults_in_help(capsys):
    for fn, name in ((wmoe_main, "wmoe"), (export_cli.main, "wmoe-export"), (bench_cli.main, "wmoe-bench")):
        with pytest.raises(SystemExit) as e:
            fn(["--version"])
        assert e.value.code == 0 and capsys.readouterr().out.startswith(f"{name} ")
    with pytest.raises(SystemExit):
        export_cli.main(["onnx", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: wmoe-export onnx ") and "wmoe-export export" not in out

    def walk(p):
        yield p
        for act in p._actions:
            if isinstance(act, argparse._SubParsersAction):
                for sp in act.choices.values():
                    yield from walk(sp)

    checked = 0
    for p in walk(build_parser()):
        text = p.format_help()
        assert "--debug" in text, p.prog  # --debug is accepted after every subcommand
        for act in p._actions:
            if act.option_strings and act.default not in (None, False, argparse.SUPPRESS) \
                    and not isinstance(act, (argparse._HelpAction, argparse._VersionAction)):
                assert act.help and "default" in act.help.lower(), (p.prog, act.option_strings)
                checked += 1
    assert checked > 25


def _every_option():
    from wmoe.runtime.camera import build_parser as camera_parser

    def walk(p):
        yield p
        for act in p._actions:
            if isinstance(act, argparse._SubParsersAction):
                for sp in dict.fromkeys(act.choices.values()):
                    yield from walk(sp)

    for root in (build_parser(), camera_parser()):
        for p in walk(root):
            for act in p._actions:
                if act.help != argparse.SUPPRESS and not isinstance(
                        act, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                    yield p, act


def test_every_option_has_help_and_writes_its_default_one_way():
    """issue 22: 55 options had no help at all; defaults were written six ways ("(default 8)", "(0.5)" beside the
    appended "(default: 0.5)", "(16; ...)", "(int8 default)", "the default", "by default"). Now: every option and
    argument says what it is, and a default is said once, as "(default: X)" at the end."""
    import re

    bad, n = [], 0
    for p, act in _every_option():
        n += 1
        name = f"{p.prog} {act.option_strings[0] if act.option_strings else act.dest}"
        text = (act.help or "") % {"default": act.default, "prog": p.prog}
        if not text.strip() or text.startswith("(default"):
            bad.append(f"{name}: no help")
            continue
        rest = re.sub(r" \(default: [^()]*(\([^()]*\)[^()]*)*\)$", "", text)
        if re.search(r"\bdefault\b", rest, re.I) or re.search(r"\(\d[\d.]*\)", rest):
            bad.append(f"{name}: {text}")
    assert n > 250 and not bad, "\n".join(bad)


def test_missing_optional_dependency_gives_the_install_command(capsys, monkeypatch, ckpt, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on an install without the export extra
    assert wmoe_main(["export", "onnx", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("wmoe export onnx: error: ONNX export needs the 'onnx' package, which is not installed; "
                   "install it with: pip install \"wmoe[export]\"")


def _drop_root_file_powers():
    """In the child, before exec: root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH obeys file permissions."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: exec'd root gets no such capability
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_permission_errors_are_one_line(tmp_path, ckpt):
    """Unreadable files and unwritable folders (root runs it without its permission-bypassing capabilities)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="wmoe-perm-", dir="/tmp"))
    try:
        d.chmod(0o755)
        shutil.copy(ckpt, d / "m.safetensors")
        (d / "secret.safetensors").write_bytes(ckpt.read_bytes())
        (d / "secret.safetensors").chmod(0)
        (d / "ro").mkdir()
        (d / "ro").chmod(0o555)
        (d / "imgs" / "locked").mkdir(parents=True)
        from PIL import Image

        Image.new("RGB", (30, 20)).save(d / "imgs" / "ok.png")
        Image.new("RGB", (30, 20)).save(d / "imgs" / "locked" / "hidden.png")
        (d / "imgs" / "locked").chmod(0)
        (d / "imgs" / "loop").symlink_to("..")  # a symlink loop: followed once, never forever
        pre = _drop_root_file_powers if os.geteuid() == 0 else None
        script = (  # one process (starting one costs seconds here): the CLI's main() on each command line
            "import contextlib, io, json, sys\n"
            "from wmoe.cli.commands import main\n"
            "res = []\n"
            "for argv in json.loads(sys.argv[1]):\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        try:\n"
            "            code = main(argv)\n"
            "        except SystemExit as e:\n"
            "            code = e.code\n"
            "    res.append([code, err.getvalue()])\n"
            "print(json.dumps(res))\n")
        runs = [["predict", "secret.safetensors", "m.safetensors", "--out", "out1"],
                ["predict", "m.safetensors", "m.safetensors", "--out", "ro/sub"],
                ["train", ".", "--tiny", "--out", "ro"],
                ["predict", "m.safetensors", "imgs", "--out", "out3", "--no-overlays"]]
        import json

        r = subprocess.run([sys.executable, "-c", script, json.dumps(runs)], capture_output=True, text=True,
                           timeout=300, cwd=d, preexec_fn=pre, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        (c1, e1), (c2, e2), (c3, e3), (c4, e4) = json.loads(r.stdout.strip().splitlines()[-1])
        assert c1 == 2 and e1.strip() == \
            "wmoe predict: error: checkpoint secret.safetensors cannot be read (Permission denied)", e1
        assert c2 == 2 and "argument --out: ro/sub:" in e2 and "not writable" in e2 and e2.count("\n") == 1, e2
        assert c3 == 2 and "argument --out: ro:" in e3 and "not writable" in e3, e3
        # a folder that cannot be listed is reported (exit 1), never skipped silently; the rest is scored
        assert c4 == 1 and "imgs/locked: folder cannot be listed (Permission denied)" in e4, e4
        doc = json.loads((d / "out3" / "scores.json").read_text())
        assert [Path(x["path"]).name for x in doc["results"]] == ["ok.png"] and doc["n_failed"] == 1
    finally:
        for p in d.rglob("*"):
            p.chmod(0o700)
        shutil.rmtree(d)


@pytest.mark.slow  # a real ONNX export (~60 s on 2 busy cores)
def test_export_onnx_does_not_touch_the_callers_model(tmp_path):
    pytest.importorskip("onnxscript")
    from wmoe.model.config import ModelConfig
    from wmoe.export.onnx_export import export_onnx
    from wmoe.model.wmoe_clip import WMoECLIP

    model = WMoECLIP(ModelConfig.tiny(image_size=112)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx", precision="fp16")
    assert model.training  # not switched to eval
    after = model.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())
