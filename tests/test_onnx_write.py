"""export/onnx_write.py: the file parses to the same proto, and writing it costs about one tensor of memory, not
several copies of the model (what onnx.save costs: ViT-L-14-336's export peaked at 10.7 GB with it, 6.1 GB now)."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wmoe.export.onnx_write import write_model


def _model(n_tensors: int, elems: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(elems).astype(np.float32), f"w{i}") for i in range(n_tensors)]
    nodes = [helper.make_node("Add", ["x" if i == 0 else f"y{i - 1}", f"w{i}"], [f"y{i}"]) for i in range(n_tensors)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [elems])],
                          [helper.make_tensor_value_info(f"y{n_tensors - 1}", TensorProto.FLOAT, [elems])], inits)
    m = helper.make_model(g, producer_name="wmoe", opset_imports=[helper.make_opsetid("", 18)])
    m.metadata_props.add(key="wmoe.k", value="v")
    return m


def test_round_trip_equals_the_proto(tmp_path, tiny_onnx):
    exported = onnx.load(str(tiny_onnx[1]))  # a real export: every field the exporter sets, metadata included
    for m in (exported, _model(5, 1000 + 37), onnx.ModelProto()):
        buf = io.BytesIO()
        write_model(m, buf)
        assert onnx.load_from_string(buf.getvalue()) == m
        assert len(buf.getvalue()) == m.ByteSize()
    write_model(exported, tmp_path / "m.onnx")
    back = onnx.load(str(tmp_path / "m.onnx"))
    assert back == exported
    onnx.checker.check_model(str(tmp_path / "m.onnx"))


PEAK = """
import sys, onnx
sys.path.insert(0, {here!r})
from test_onnx_write import _model
def status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) // 1024
m = _model(8, 12_500_000)  # 8 x 50 MB
open("/proc/self/clear_refs", "w").write("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
base = status("VmRSS")
if sys.argv[1] == "onnx.save":
    onnx.save(m, sys.argv[2])
else:
    from wmoe.export.onnx_write import write_model
    write_model(m, sys.argv[2])
print(status("VmHWM") - base)
"""


def test_writing_costs_one_tensor_not_copies_of_the_model(tmp_path):
    """400 MB of weights in 8 tensors: onnx.save's extra peak is a multiple of the model; write_model's is bounded
    by a couple of tensors (50 MB each). Each in a fresh process, so the peaks do not mask each other."""
    from pathlib import Path
    code = PEAK.format(here=str(Path(__file__).parent))
    extra = {}
    for how in ("onnx.save", "write_model"):
        r = subprocess.run([sys.executable, "-c", code, how, str(tmp_path / f"{how}.onnx")], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        extra[how] = int(r.stdout.split()[-1])
    assert (tmp_path / "write_model.onnx").stat().st_size == (tmp_path / "onnx.save.onnx").stat().st_size
    assert extra["onnx.save"] >= 400, extra  # the old way: at least one more copy of the 400 MB
    assert extra["write_model"] <= 150, extra  # measured 95: one 50 MB tensor at a time (buffer + bytes)
