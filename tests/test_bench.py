"""The bench CLI on the CPU backends (smoke test): JSON, markdown and PNG with numbers and skip reasons."""
import json
import subprocess
import sys

import pytest
import torch

from wmoe.bench.harness import count_flops
from wmoe.model.checkpoint import save_checkpoint
from wmoe.model.config import ModelConfig
from wmoe.data import make_demo_dataset
from wmoe.model.wmoe_clip import WMoECLIP


def test_bench_cli_cpu(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), tmp_path / "m.safetensors")
    data = make_demo_dataset(tmp_path / "demo", image_size=64, n_test_good=2, n_test_defect=2,
                             categories=["gravel", "cell"])
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "wmoe", "bench", str(ckpt), "--out", str(out), "--backends", "auto",
                        "--batch", "1,2", "--warmup", "1", "--repeats", "3", "--parity-data", str(data)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    # a failed accuracy gate fails the command (bf16 on this random model may fail it; f32 backends must pass)
    assert r.returncode == int(not all(g["gate_passed"] for g in doc["auroc_parity"].values())), r.stderr[-3000:]
    assert all(doc["auroc_parity"][b]["gate_passed"] for b in ("torch-fp32", "ort-cpu"))
    got = {(x["backend"], x["batch"]) for x in doc["records"]}
    cpu = {"torch-fp32", "ort-cpu"} | ({"ov-cpu-f32", "ov-cpu-bf16"} - set(doc["skipped"]))  # OpenVINO: dev extra
    assert got == {(b, n) for b in cpu for n in (1, 2)}
    assert "ov-cpu-int8" in doc["skipped"] and "--qdq" in doc["skipped"]["ov-cpu-int8"]
    for rec in doc["records"]:
        assert rec["images_per_s"] > 0 and rec["latency_p99_ms"] >= rec["latency_p50_ms"] > 0
        assert rec["flops_per_image"] > 0 and 0 < rec["fraction_of_matmul_rate"]
        assert rec["max_abs_maps"] <= (1e-4 if rec["matmul_precision"] == "fp32" else 0.2)
    assert "torch-fp16" in doc["skipped"] and "CUDA" in doc["skipped"]["torch-fp16"]
    assert "trt-engine" in doc["skipped"]
    assert abs(doc["auroc_parity"]["ort-cpu"]["delta_image_auroc"]) < 1e-6
    md = (out / "bench.md").read_text()
    assert "| ort-cpu | 112 | 2 |" in md and "Skipped backends" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flop_count_scales_with_input_size():
    m = WMoECLIP(ModelConfig.tiny(image_size=112)).eval()
    m2 = WMoECLIP(ModelConfig.tiny(image_size=224)).eval()
    f1, f2 = count_flops(m, 112), count_flops(m2, 224)
    # 4x the patches: the patch-proportional part of the FLOPs grows ~4x, attention more, text part constant
    assert 2.0 < f2 / f1 < 6.0


@pytest.mark.parametrize("size", [56, 98])
def test_flop_count_matches_a_hand_count_of_a_vit(size):
    """The counted FLOPs of an open_clip ViT image tower equal the textbook count: patch embedding, per layer
    QKV/attention/output projection/MLP, and the final projection of the class token. Before the count turned
    off nn.MultiheadAttention's fused fast path (and the CPU flash kernel) it missed the attention entirely."""
    import open_clip

    from wmoe.model.backbone import register_configs
    from wmoe.bench.harness import module_flops
    register_configs()
    cfg = open_clip.get_model_config("wmoe-tiny")
    visual = open_clip.create_model("wmoe-tiny", pretrained=None, force_image_size=size).visual.eval()
    vc = cfg["vision_cfg"]
    w, L, p, e = vc["width"], vc["layers"], vc["patch_size"], cfg["embed_dim"]
    mlp = int(w * vc.get("mlp_ratio", 4.0))
    n = (size // p) ** 2
    T = n + 1  # patches + class token
    hand = (2 * n * (3 * p * p) * w  # patch embedding (a p x p stride-p convolution)
            + L * (2 * T * w * 3 * w  # Q, K, V
                   + 2 * 2 * T * T * w  # Q K^T and A V over all heads
                   + 2 * T * w * w  # output projection
                   + 2 * 2 * T * w * mlp)  # MLP up and down
            + 2 * w * e)  # projection of the pooled class token
    x = torch.randn(1, 3, size, size)
    assert module_flops(visual, x) == hand
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        visual(x)
    assert fc.get_total_flops() < hand  # what the plain count (fast path) reports


def test_kernel_bench_keeps_every_measurement(tmp_path):
    """bench_kernels writes its JSON after every measurement; one that raises is recorded and the run goes on."""
    from wmoe.bench.bench_kernels import Recorder
    rec = Recorder(tmp_path / "kernels.json", "test device")
    rec.measure({"impl": "a", "batch": 1}, lambda: {"median_ms": 1.5})
    assert json.loads((tmp_path / "kernels.json").read_text())["records"] == [{"impl": "a", "batch": 1,
                                                                               "median_ms": 1.5}]

    def crash():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    rec.measure({"impl": "b", "batch": 8}, crash)
    rec.measure({"impl": "c", "batch": 8}, lambda: {"median_ms": 2.0})
    doc = json.loads((tmp_path / "kernels.json").read_text())
    assert doc["device"] == "test device" and [r["impl"] for r in doc["records"]] == ["a", "b", "c"]
    assert doc["records"][1]["error"].startswith("RuntimeError: CUDA error")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernels.json"]  # atomic: no temporaries left


def test_tegrastats_parser():
    from wmoe.bench.tegrastats import PowerSampler, parse_line
    orin = ("11-24-2026 10:00:00 RAM 2448/7772MB (lfb 1x4MB) CPU [2%@1190,1%@1190] GR3D_FREQ 0% cpu@45.5C "
            "VDD_IN 5123mW/4980mW VDD_CPU_GPU_CV 1502mW/1410mW VDD_SOC 1430mW/1420mW")
    p = parse_line(orin)
    assert p["total"] == 5.123 and p["VDD_CPU_GPU_CV"] == 1.502
    nano = "RAM 1500/3964MB CPU [10%@1479] EMC_FREQ 0% GR3D_FREQ 0% POM_5V_IN 3280/3280 POM_5V_GPU 1020/1020"
    assert parse_line(nano)["total"] == 3.28
    assert parse_line("RAM 1/2MB CPU [1%@100]") == {}
    s = PowerSampler(exe=None)
    if not s.available:
        with s:
            pass
        assert s.mean_watts is None


def test_backends_set_their_kernels_per_call_and_compile_only_when_asked(tiny_model):
    import numpy as np
    import pytest

    from wmoe.bench.backends import Skip, _torch_backend, make_backend
    from wmoe.bench.harness import BenchConfig, _make

    factory = lambda: tiny_model  # noqa: E731
    if not torch.cuda.is_available():
        with pytest.raises(Skip, match="--backends torch-compile"):
            make_backend("torch-compile", factory)
        be = _make(BenchConfig("unused", allow_compile=True), "torch-compile", factory, True)
        assert be.name == "torch-compile"  # built, not run: compiling takes a while on the CPU
    x = np.random.default_rng(0).standard_normal((2, 3, tiny_model.image_size, tiny_model.image_size)).astype(
        np.float32)
    before = [s.kernels for s in tiny_model.kernel_stages()]
    ref = _torch_backend(tiny_model, "ref", "cpu", torch.float32).run(x)
    fused = _torch_backend(tiny_model, "fused", "cpu", torch.float32, kernels="triton").run(x)  # interpreter
    assert [s.kernels for s in tiny_model.kernel_stages()] == before  # nothing leaks into the next backend
    for k in ("scores", "maps", "text_scores"):
        assert np.abs(fused[k] - ref[k]).max() <= 1e-5


def test_gpu_check_says_which_steps_need_a_gpu(tmp_path):
    """make gpu-check on a machine without a GPU: the plan names the GPU steps; a run skips them with the reason,
    runs what a CPU can, writes its JSON/markdown and exits 2."""
    from wmoe.bench.gpu_check import STEPS, main
    plan = subprocess.run([sys.executable, "-m", "wmoe.bench.gpu_check", "--plan"], capture_output=True, text=True)
    assert plan.returncode == 0
    for s in STEPS:
        assert s.name in plan.stdout
    assert {s.name for s in STEPS if s.needs_gpu} == {"gpu-tests", "kernel-bench", "aoti", "trt-engine", "bench"}
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: make gpu-check runs for real")
    code = main(["--out", str(tmp_path), "--steps", "env,gpu-tests,bench"])
    assert code == 2
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    by = {r["step"]: r for r in doc["results"]}
    assert by["env"]["status"] == "ok" and json.loads((tmp_path / "env.json").read_text())["torch"]
    assert by["gpu-tests"]["status"] == by["bench"]["status"] == "skipped"
    assert "needs an NVIDIA GPU" in by["bench"]["reason"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| gpu-tests | yes | skipped |" in md and "| env | no | ok |" in md


def test_gpu_check_env_names_missing_modules(tmp_path, monkeypatch):
    """On an offline GPU box the interpreter may lack wmoe's dependencies: the env step fails and names them,
    instead of every later step failing on an import."""
    import wmoe.bench.gpu_check as gc
    monkeypatch.setattr(gc, "WMOE_MODULES", ("numpy", "wmoe_no_such_module_xyz"))
    code = gc.main(["--out", str(tmp_path), "--steps", "env"])
    assert code == 1
    env = next(r for r in json.loads((tmp_path / "gpu_check.json").read_text())["results"] if r["step"] == "env")
    assert env["status"] == "failed" and "wmoe_no_such_module_xyz" in env["reason"] and "numpy" not in env["reason"]


@pytest.fixture(scope="module")
def frames_model(tmp_path_factory):
    """A tiny checkpoint and its export with in-graph preprocessing (uint8 frames 60x80: the CLI's default input
    kind), and a demo data set for the accuracy gate."""
    from wmoe.export.onnx_export import export_onnx
    d = tmp_path_factory.mktemp("bench_frames")
    torch.manual_seed(4)
    ckpt = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), d / "m.safetensors")
    onnx_path = export_onnx(ckpt, d / "m.onnx", preprocess=True, frame_size=(60, 80))
    data = make_demo_dataset(d / "demo", image_size=64, n_test_good=2, n_test_defect=2, categories=["gravel"])
    return {"ckpt": ckpt, "onnx": onnx_path, "data": data, "dir": d}


def test_bench_feeds_a_frames_export_frames(frames_model):
    """A frames-input export (what `wmoe export onnx` writes by default and gpu-check benchmarks) is fed uint8
    frames at its contract's frame size, and its parity and accuracy gate are against torch-fp32 on the same pixels.
    The old harness fed it float NCHW images (ONNX Runtime: invalid input)."""
    from wmoe.bench.harness import BenchConfig, run_bench
    cfg = BenchConfig(str(frames_model["ckpt"]), out=str(frames_model["dir"] / "bench"), backends=["ort-cpu"],
                      batches=[1, 3], warmup=0, repeats=1, onnx=str(frames_model["onnx"]),
                      parity_data=str(frames_model["data"]))
    doc = run_bench(cfg, progress=False)
    assert [(r["backend"], r["batch"], r["input"]) for r in doc["records"]] == [
        ("ort-cpu", 1, "frames uint8 60x80"), ("ort-cpu", 3, "frames uint8 60x80")]
    assert all(r["max_abs_maps"] < 1e-4 and r["max_abs_scores"] < 1e-4 for r in doc["records"])
    gate = doc["auroc_parity"]["ort-cpu"]
    assert gate["n_images"] == 4 and gate["max_map_diff"] < 1e-4 and gate["gate_passed"]


def test_bench_takes_the_engine_size_and_input_from_its_sidecar(frames_model, tmp_path):
    """An engine of a frames export (input [-1,60,80,3] uint8) runs at the model's image size from the contract in
    its sidecar, and is skipped at other sizes with that size. The old harness read shape[-1] = 3 and skipped the
    engine at every size ("takes 3 px images"): gpu-check never benchmarked its engine."""
    from wmoe.bench.harness import BenchConfig, run_bench
    from wmoe.contract import EngineSidecar
    from wmoe.onnx_meta import read_onnx_metadata
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"not built here")
    EngineSidecar(engine=eng.name, onnx_sha256="", checkpoint_sha256="", precision="fp32", tensorrt_version="10.9.0",
                  gpu_name="-", compute_capability="9.0", inputs={"frames": [-1, 60, 80, 3]},
                  outputs={"scores": [-1], "maps": [-1, 112, 112], "text_scores": [-1]}, batch_ranges=[[1, 2, 4]],
                  metadata=read_onnx_metadata(frames_model["onnx"])).write(EngineSidecar.path_for(eng))
    cfg = BenchConfig(str(frames_model["ckpt"]), out=str(tmp_path / "bench"), backends=["trt-engine"], batches=[1],
                      warmup=0, repeats=1, engine=str(eng), sizes=[112, 56])
    doc = run_bench(cfg, progress=False)
    assert "trt-engine @ 112px" not in doc["skipped"], doc["skipped"]  # its own size: on to building the backend
    assert "built for 112 px" in doc["skipped"]["trt-engine @ 56px"]
    assert "tensorrt is not installed" in doc["skipped"]["trt-engine"]  # no TensorRT here: the build is skipped


@pytest.fixture(scope="module")
def ov_model(tmp_path_factory):
    """A tiny checkpoint exported as the CLI does (uint8 frames input) and its int8 Q/DQ model, with a demo set."""
    from wmoe.export.onnx_export import export_onnx
    d = tmp_path_factory.mktemp("ovbench")
    torch.manual_seed(0)
    ckpt = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=56)).eval(), d / "m.safetensors")
    onnx_path = export_onnx(ckpt, d / "m.onnx", preprocess=True, frame_size=(56, 56))
    data = make_demo_dataset(d / "demo", image_size=64, n_train_good=6, n_test_good=2, n_test_defect=2,
                             categories=["gravel", "cell"])
    qdq = None
    try:
        from wmoe.export.gate import GateThresholds
        from wmoe.export.quantize import QuantizeConfig, quantize_onnx
        qdq = d / "m.qdq.onnx"
        quantize_onnx(onnx_path, data, qdq, QuantizeConfig(high_precision="fp32", keep="none"), gate_data=data,
                      thresholds=GateThresholds(1.0, -1.0), progress=False)
    except ImportError:  # Model Optimizer not installed: the int8 row is skipped, with its reason
        qdq = None
    return {"ckpt": ckpt, "onnx": onnx_path, "qdq": qdq, "data": data, "dir": d}


def _bench(args, timeout=600):
    return subprocess.run([sys.executable, "-m", "wmoe", "bench", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_bench_openvino_rows_per_precision_rate_and_gate(ov_model, tmp_path):
    """`wmoe bench --backends torch-fp32,ort-cpu,ov-cpu-f32,ov-cpu-bf16,ov-cpu-int8` (the issue's CI run): every
    row's fraction is of the matmul rate of its own precision, measured in the run by the fastest GEMM here (named),
    parity and the gate's verdict per row."""
    pytest.importorskip("openvino")
    out = tmp_path / "b"
    qdq = ["--qdq", ov_model["qdq"]] if ov_model["qdq"] else []
    r = _bench([ov_model["ckpt"], "--onnx", ov_model["onnx"], *qdq, "--out", out,
                "--backends", "torch-fp32,ort-cpu,ov-cpu-f32,ov-cpu-bf16,ov-cpu-int8", "--batch", "1,2",
                "--warmup", "1", "--repeats", "2", "--parity-data", ov_model["data"],
                "--min-spearman", "-1", "--max-auroc-drop", "100"])
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    rates = doc["matmul_rates"]
    for prec in ("fp32", "int8"):
        assert rates[prec]["flops_per_s"] == max(rates[prec]["all"].values()) > 0
    assert any("openvino" in k for k in rates["fp32"]["all"]) and any("onnxruntime" in k for k in rates["fp32"]["all"])
    from wmoe.runtime.openvino_backend import cpu_capabilities
    want = {"torch-fp32", "ort-cpu", "ov-cpu-f32"} | ({"ov-cpu-bf16"} if "BF16" in cpu_capabilities() else set()) \
        | ({"ov-cpu-int8"} if ov_model["qdq"] else set())
    recs = doc["records"]
    assert {x["backend"] for x in recs} == want and all(x not in doc["skipped"] for x in want)
    for x in recs:
        prec = {"ov-cpu-bf16": "bf16", "ov-cpu-int8": "int8"}.get(x["backend"], "fp32")
        assert x["matmul_precision"] == prec and x["matmul_rate_by"].startswith(prec)
        rate = rates[prec]["flops_per_s"]
        assert abs(x["fraction_of_matmul_rate"] - x["images_per_s"] * x["flops_per_image"] / rate) < 1e-9
        assert x["input"] == ("images float32 56x56" if x["backend"] == "torch-fp32" else "frames uint8 56x56")
    by = {(x["backend"], x["batch"]): x for x in recs}
    assert by[("ov-cpu-f32", 1)]["max_abs_maps"] <= 1e-4  # f32 is exact
    if "ov-cpu-bf16" in want:
        assert 0 < by[("ov-cpu-bf16", 1)]["max_abs_maps"] < 0.2  # reduced precision: close, not equal
    gate = doc["auroc_parity"]
    assert set(gate) == want and all(g["gate_passed"] for g in gate.values())
    md = (out / "bench.md").read_text()
    assert "| ov-cpu-f32 | 56 | 1 |" in md and "(fp32) |" in md and "| pass |" in md and "load average" in md
    assert "Measured matmul rate per precision" in md


def test_gpu_check_skips_the_frontend_step_without_the_bindings_wheel(tmp_path):
    """A GPU box whose Python has no tensorrt-cu12-bindings: the frontend step is skipped with its reason instead
    of failing the run (it ran pytest there and failed)."""
    from wmoe.bench.gpu_check import Check
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    check = Check(tmp_path, tmp_path)
    check.py = str(tmp_path / "bare" / "bin" / "python")
    status, reason, _, _ = check.trt_frontend(120)
    assert status == "skipped" and "tensorrt-cu12-bindings" in reason, (status, reason)
