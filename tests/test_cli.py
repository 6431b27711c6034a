"""The workflow through the real entry points: data demo, train, eval, predict, demo, and their errors."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

WMOE = Path(sys.executable).with_name("wmoe")


def run(*args, cwd=None, ok=True):
    cmd = [str(WMOE)] if WMOE.exists() else [sys.executable, "-m", "wmoe"]
    r = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_version_and_module_entry():
    r = subprocess.run([sys.executable, "-m", "wmoe", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("wmoe ")


def test_train_eval_predict_workflow(tmp_path):
    data = tmp_path / "data"
    run("data", "demo", data, "--size", "64")
    assert (data / "meta.json").is_file()
    run("data", "meta", data, "--format", "mvtec", "--out", tmp_path / "meta2.json")
    assert json.loads((tmp_path / "meta2.json").read_text()) == json.loads((data / "meta.json").read_text())
    run("train", data, "--tiny", "--image-size", "112", "--classes", "brick,grass", "--batch-size", "8",
        "--max-steps", "2", "--out", tmp_path / "run")
    ckpt = tmp_path / "run" / "last.safetensors"
    r = run("eval", ckpt, data, "--classes", "gravel,cell", "--out", tmp_path / "eval")
    assert "| **mean** |" in r.stdout
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["extra"]["threshold"] is not None
    assert not (tmp_path / "run" / "last.safetensors.threshold.json").exists()  # eval reports, it does not decide
    r = run("calibrate", ckpt, data, "--classes", "gravel,cell", "--false-reject-rate", "0.1")
    assert "class gravel: image threshold" in r.stdout and "last.safetensors.threshold.json" in r.stdout
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    imgs = sorted((data / "gravel" / "test" / "good").glob("*.png"))[:2]
    r = run("predict", ckpt, *imgs, bad, "--out", tmp_path / "pred", ok=False)
    assert r.returncode == 1 and "bad.png" in r.stderr
    doc = json.loads((tmp_path / "pred" / "scores.json").read_text())
    assert doc["n_scored"] == 2 and doc["n_failed"] == 1 and doc["threshold"] is not None
    assert all("anomalous" in x and (tmp_path / "pred" / x["overlay"]).is_file() for x in doc["results"])
    assert (tmp_path / "pred" / "scores.csv").read_text().count("\n") == 4


def test_user_errors_are_one_line_exit_2(tmp_path):
    r = run("eval", tmp_path / "missing.safetensors", tmp_path, ok=False)
    assert r.returncode == 2 and "missing.safetensors" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    r = run("predict", junk, tmp_path, ok=False)
    assert r.returncode == 2 and "junk.safetensors" in r.stderr
    r = run("data", "meta", tmp_path / "nowhere", "--format", "mvtec", ok=False)
    assert r.returncode == 2 and "nowhere" in r.stderr


def test_demo_end_to_end(tmp_path):
    r = run("demo", "--out", tmp_path / "demo", "--max-steps", "3")
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| **mean** |" in report and "![](predictions/" in report
    assert "## SA-MoE expert utilization" in report and (tmp_path / "demo" / "expert_usage.png").is_file()
    check_demo_report(tmp_path / "demo")
    for line in report.splitlines():
        if "](predictions/" in line:
            name = line.split("](predictions/")[1].split(")")[0]
            assert (tmp_path / "demo" / "predictions" / name).is_file()
    # it ends with the command that opens the app on the demo model (make demo prints it last)
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("see it in a browser: ") and " app " in last, r.stdout[-500:]
    cmd = shlex.split(last.split(": ", 1)[1].split("   (")[0])
    assert cmd[1] == "app" and Path(cmd[2]) == tmp_path / "demo" / "run" / "last.safetensors" and cmd[3] == "--demo"
    assert Path(cmd[2]).is_file() and (Path(cmd[4]) / "meta.json").is_file()


def check_demo_report(demo):
    """Issue 20 item 5 (fails on the old demo): the report shows what a quality engineer reads."""
    report = (demo / "report.md").read_text()
    # issue 20: what a quality engineer reads — the decision calibrated on good parts, the false-reject rate it
    # gives on held-out good images, confusion counts, curves and histograms, per-image scores, and whether the
    # head learns (trained vs untrained on fresh images of the training categories; zero-shot at chance level)
    assert "## The decision (calibrated on good parts)" in report and "finite-sample conformal quantile" in report
    assert "**False-reject rate on 120 held-out good images**" in report and "target 5%" in report
    assert "On the zero-shot evaluation set at these thresholds: **TP" in report
    png = demo / "decision.png"
    assert "![](decision.png)" in report and png.is_file() and Image.open(png).size[1] > 3 * 150
    assert "## Does the pipeline learn?" in report and "| training categories, fresh images |" in report
    assert "chance level" in report
    rows = (demo / "eval" / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,class,label,score,verdict" and len(rows) == 1 + 3 * 20
    assert {r.rsplit(",", 1)[1] for r in rows[1:]} <= {"anomalous", "normal"}
    from wmoe.contract import read_decision
    d = read_decision(demo / "run" / "last.safetensors")
    assert set(d.class_thresholds) == {"cell", "gravel", "ihc"} and d.record.target == 0.05
    assert d.record.n_good == 3 * 39
