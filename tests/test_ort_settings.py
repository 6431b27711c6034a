"""bench/ort_settings.py: every CPU session setting the runtime could ship runs the same model, side by side."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from wmoe.bench.ort_settings import DEFAULT, measure, settings
from wmoe.runtime.session import make_session


def test_every_setting_computes_the_same_model(tiny_onnx):
    doc = measure(tiny_onnx[1], batches=(1, 3), rounds=2, warmup=1, progress=False)
    names = [s.name for s in settings(__import__("os").cpu_count() or 1, openvino=True)]
    rows = {(r["setting"], r["batch"]): r for r in doc["rows"]}
    assert {n for n, _ in rows} == set(names)  # OpenVINO is a dev dependency: its two hints are measured here
    for (name, b), r in rows.items():
        assert len(r["times_s"]) == 2 and r["s_per_image"] > 0
        assert r["maps_max_abs_diff"] <= 1e-4, (name, b, r)  # f32 everywhere: the same maps
    assert rows[DEFAULT, 1]["vs_default"] == 1.0


def test_cli_writes_json_and_markdown(tiny_onnx, tmp_path):
    out = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "wmoe.bench.ort_settings", str(tiny_onnx[1]), "--batch", "2",
                        "--rounds", "1", "--no-openvino", "--out", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [x["setting"] for x in doc["rows"]][0] == DEFAULT and "openvino" not in out.with_suffix(".md").read_text()
    bad = subprocess.run([sys.executable, "-m", "wmoe.bench.ort_settings", str(tmp_path / "none.onnx")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "none.onnx" in bad.stderr


def test_session_optimization_level_is_checked(tiny_onnx):
    import onnxruntime as ort
    s = make_session(tiny_onnx[1], optimization="basic")
    assert s.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(ValueError, match="optimization must be one of"):
        make_session(tiny_onnx[1], optimization="max")
