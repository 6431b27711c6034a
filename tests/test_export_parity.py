"""Host-side reference files for engine parity on Jetson (Polygraphy's --load-inputs/--load-outputs format)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from wmoe.model.config import ModelConfig
from wmoe.export.onnx_export import ExportError, export_onnx
from wmoe.export.parity import compare, load_arrays, save_reference
from wmoe.model.wmoe_clip import WMoECLIP


def test_reference_files_round_trip_and_match_pytorch(tmp_path):
    torch.manual_seed(0)
    model = WMoECLIP(ModelConfig.tiny(image_size=56)).eval()
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    r = subprocess.run([sys.executable, "-m", "wmoe", "export", "reference", str(onnx_path), "--out-dir",
                        str(tmp_path / "ref"), "--batch", "3", "--seed", "7"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--load-inputs inputs.json" in r.stdout
    [feed] = load_arrays(tmp_path / "ref" / "inputs.json")
    [outs] = load_arrays(tmp_path / "ref" / "outputs.json")
    assert feed["images"].shape == (3, 3, 56, 56) and list(outs) == ["scores", "maps", "text_scores"]
    with torch.no_grad():
        o = model(torch.from_numpy(feed["images"]))
    got = {"scores": o.scores.numpy(), "maps": o.maps.numpy(), "text_scores": o.text_scores.numpy()}
    assert max(compare(outs, got).values()) <= 1e-4
    # same seed -> same bytes
    save_reference(onnx_path, tmp_path / "again", batch=3, seed=7)
    assert (tmp_path / "again" / "inputs.json").read_bytes() == (tmp_path / "ref" / "inputs.json").read_bytes()
    try:  # Polygraphy itself reads them, when installed
        from polygraphy.comparator import RunResults
        from polygraphy.json import load_json
    except ImportError:
        pass
    else:
        rr = RunResults.load(str(tmp_path / "ref" / "outputs.json"))
        np.testing.assert_array_equal(rr[0][1][0]["maps"], outs["maps"])
        np.testing.assert_array_equal(load_json(str(tmp_path / "ref" / "inputs.json"))[0]["images"], feed["images"])
    with pytest.raises(ExportError, match="shape"):
        compare(outs, {**got, "maps": got["maps"][:1]})
    (tmp_path / "bad.json").write_text('{"lst": 1}')
    with pytest.raises(ExportError, match="bad.json"):
        load_arrays(tmp_path / "bad.json")
