"""Shared fixtures: tiny models are cheap to build (< 1 s); a session-scoped one serves read-only tests."""
from __future__ import annotations

import os

import pytest
import torch

# Triton kernels run under the interpreter on machines without a GPU; must be set before any kernel import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from wmoe.model.config import ModelConfig  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    from wmoe.model.wmoe_clip import WMoECLIP

    torch.manual_seed(0)
    return WMoECLIP(ModelConfig.tiny()).eval()


@pytest.fixture(scope="session")
def trained_like_tiny():
    """A tiny model at 112 px whose trainable parameters are moved off their init, as after training (the heads at
    their init score everything alike). Read-only: save it where a test needs a checkpoint."""
    from wmoe.model.wmoe_clip import WMoECLIP

    torch.manual_seed(0)
    model = WMoECLIP(ModelConfig.tiny(image_size=112)).eval()
    with torch.no_grad():
        for p in model.trainable_state_dict().values():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """A tiny model exported once per session with a stored decision: (checkpoint, onnx path)."""
    from wmoe.model.checkpoint import save_checkpoint
    from wmoe.export.onnx_export import export_onnx
    from wmoe.model.wmoe_clip import WMoECLIP

    d = tmp_path_factory.mktemp("tiny_onnx")
    torch.manual_seed(1)
    ckpt = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), d / "m.safetensors")
    return ckpt, export_onnx(ckpt, d / "m.onnx", threshold=0.25, pixel_threshold=0.5)


def export_tiny_frames(d, seed: int, threshold: float):
    """A tiny (56 px) model exported with in-graph preprocessing for 48x64 uint8 frames and a stored threshold."""
    from wmoe.export.onnx_export import export_onnx
    from wmoe.model.checkpoint import save_checkpoint
    from wmoe.model.wmoe_clip import WMoECLIP

    torch.manual_seed(seed)
    ckpt = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=56)).eval(), d / "m.safetensors")
    return export_onnx(ckpt, d / "m.onnx", preprocess=True, frame_size=(48, 64), threshold=threshold)


@pytest.fixture()
def fresh_tiny():
    from wmoe.model.wmoe_clip import WMoECLIP

    def make(**overrides):
        return WMoECLIP(ModelConfig.tiny(**overrides))

    return make


@pytest.fixture(scope="session")
def plugin_kernels(tmp_path_factory):
    """The TensorRT plugin kernels (main WCMA, router) AOT-compiled for sm_80/87/90, fp16 and fp32, as a KernelStore.

    A subprocess: the test session sets TRITON_INTERPRET=1, under which Triton cannot compile."""
    import subprocess
    import sys

    from wmoe.export.trt_plugins import KernelStore
    d = tmp_path_factory.mktemp("plugin_kernels")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "wmoe.kernels.aot", "--out", str(d), "--kernels", "wcma_main,moe_router",
                        "--dtypes", "fp16,fp32"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and (d / "manifest.json").is_file(), (r.stdout + r.stderr)[-3000:]
    return KernelStore(d)


def _memory_report() -> str:
    """What the machine's memory looked like when a worker died: MemAvailable and the largest processes (an
    out-of-memory kill leaves no traceback, so this is the only trace CI keeps of it)."""
    lines = []
    try:
        info = dict(line.split(":", 1) for line in open("/proc/meminfo", encoding="ascii"))
        lines.append("MemTotal %s, MemAvailable %s" % (info["MemTotal"].strip(), info["MemAvailable"].strip()))
    except (OSError, KeyError, ValueError):
        pass
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = open(f"/proc/{pid}/status", encoding="ascii", errors="replace").read()
            rss = int(status.split("VmRSS:")[1].split()[0]) if "VmRSS:" in status else 0
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        procs.append((rss, pid, cmd[:160]))
    for rss, pid, cmd in sorted(procs, reverse=True)[:8]:
        lines.append(f"  {rss // 1024:6d} MiB  pid {pid}  {cmd}")
    return "\n".join(lines)


def pytest_testnodedown(node, error):
    """xdist: a worker died (``make test`` runs with --max-worker-restart=0, so the run stops here and names the test
    instead of hanging in xdist's rescheduling). Print the memory state beside xdist's 'crashed while running'."""
    if error:
        import sys
        print(f"\n[{node.gateway.id}] worker down ({error}); memory now:\n{_memory_report()}", file=sys.stderr,
              flush=True)
