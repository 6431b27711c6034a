"""AOTInductor package: compiled on the CPU (C++), loaded in a process that never imports wmoe, parity."""
import subprocess
import sys

import numpy as np
import torch

from wmoe.model.config import ModelConfig
from wmoe.export.aoti import export_aoti
from wmoe.model.wmoe_clip import WMoECLIP


def test_aoti_package_runs_without_wmoe(tmp_path):
    torch.manual_seed(0)
    model = WMoECLIP(ModelConfig.tiny(image_size=56)).eval()
    pkg = export_aoti(model, tmp_path / "detector.pt2", max_batch=8)
    x = torch.randn(3, 3, 56, 56)
    np.save(tmp_path / "x.npy", x.numpy())
    code = ("import sys, numpy as np, torch\n"
            f"r = torch._inductor.aoti_load_package({str(pkg)!r})\n"
            f"out = r(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})))\n"
            f"np.savez({str(tmp_path / 'out.npz')!r}, *[o.numpy() for o in out])\n"
            "assert not any(m.startswith('wmoe') for m in sys.modules), 'wmoe imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    with torch.no_grad():
        o = model(x)
    for g, ref in zip([got[f"arr_{i}"] for i in range(3)], (o.scores, o.maps, o.text_scores)):
        assert np.abs(g - ref.numpy()).max() <= 1e-4
