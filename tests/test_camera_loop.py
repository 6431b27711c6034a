"""The camera loop example over a folder of images, bounded by --max-frames, in a subprocess."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wmoe.config import ModelConfig
from wmoe.export.onnx_export import export_onnx
from wmoe.model import WMoECLIP

ROOT = Path(__file__).resolve().parents[1]


def test_camera_loop_over_folder(tmp_path):
    torch.manual_seed(0)
    onnx_path = export_onnx(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), tmp_path / "m.onnx")
    src = tmp_path / "frames"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(src / f"{i:03d}.png")
    (src / "broken.png").write_text("not an image")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "camera_loop.py"), "--source", str(src), "--model",
                        str(onnx_path), "--batch", "3", "--max-frames", "7", "--out", str(tmp_path / "out"),
                        "--report-every", "3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    written = sorted((tmp_path / "out").glob("frame_*.png"))
    assert len(written) == 7
    assert np.asarray(Image.open(written[0])).shape == (60, 80, 3)
    assert "frames 7:" in r.stdout and "images/s" in r.stdout and "p99" in r.stdout
