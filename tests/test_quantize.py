"""Quantization: calibration images, the Q/DQ graph edit, the accuracy gate and the whole path on the tiny model,
with the real Model Optimizer and the real ONNX Runtime executing the Q/DQ graphs."""
import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from wmoe.model.checkpoint import save_checkpoint
from wmoe.model.config import ModelConfig
from wmoe.data import DataError, make_demo_dataset, preprocess, write_meta
from wmoe.export.calib import load_calibration, normal_image_paths
from wmoe.export.gate import GateThresholds, compare, failures, run_session
from wmoe.export.onnx_export import export_onnx
from wmoe.runtime.session import make_session
from wmoe.model.wmoe_clip import WMoECLIP

pytest.importorskip("modelopt.onnx.quantization")
from wmoe.export.quantize import (  # noqa: E402
    QuantizeConfig,
    QuantizeError,
    keep_high_precision,
    node_groups,
    quantize_onnx,
    quantized_nodes,
    report_path,
    switchable,
)
from wmoe.export.quantize import MIN_SENSITIVITY_IMAGES, _select_keep, _Switch  # noqa: E402

SIZE = 56


def _png(path, seed, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


# ------------------------------------------------------------------------------------------ calibration data
def test_calibration_folder_reads_nested_images_and_skips_broken(tmp_path):
    imgs = [_png(tmp_path / "cam" / f"a{i}.png", i) for i in range(3)] + [_png(tmp_path / "cam" / "sub" / "b.png", 9)]
    (tmp_path / "cam" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "cam" / "notes.txt").write_text("not an image")
    with pytest.warns(RuntimeWarning, match="broken.png"):
        cs = load_calibration(tmp_path / "cam", 28, min_images=2)
    assert cs.inputs.shape == (4, 3, 28, 28) and cs.available == 5 and len(cs.skipped) == 1
    # the data layer's preprocessing, bit for bit (sorted order: a0, a1, a2, sub/b)
    np.testing.assert_array_equal(cs.inputs[0], preprocess(imgs[0], 28).numpy())
    np.testing.assert_array_equal(cs.inputs[3], preprocess(imgs[3], 28).numpy())
    # a seeded subset, the same every time
    a = load_calibration(tmp_path / "cam", 28, max_images=2, seed=1, min_images=1)
    b = load_calibration(tmp_path / "cam", 28, max_images=2, seed=1, min_images=1)
    assert a.paths == b.paths and len(a.paths) == 2
    # frames models: camera-size uint8 frames
    f = load_calibration(tmp_path / "cam", 28, frame_size=(24, 32), min_images=2)
    assert f.inputs.shape == (4, 24, 32, 3) and f.inputs.dtype == np.uint8
    with pytest.raises(DataError, match="only 4 readable"):
        load_calibration(tmp_path / "cam", 28, min_images=8)


def test_calibration_meta_json_uses_good_images_only(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", image_size=32, n_train_good=2, n_test_good=1, n_test_defect=2,
                             categories=["gravel", "cell"])
    meta = json.loads((root / "meta.json").read_text())
    good = {e["img_path"] for s in meta.values() for es in s.values() for e in es if not e["anomaly"]}
    paths = normal_image_paths(root / "meta.json")
    assert len(paths) == len(good) == 6 and all(p.relative_to(root.resolve()).as_posix() in good for p in paths)
    assert normal_image_paths(root) == paths  # a folder holding a meta.json is read as that meta.json
    test_imgs = [root / e["img_path"] for es in meta["test"].values() for e in es]
    cs = load_calibration(root / "meta.json", 16, exclude=test_imgs, min_images=1)
    assert len(cs.paths) == 4 and not {str(p.resolve()) for p in test_imgs} & set(cs.paths)


def test_calibration_errors_name_the_source(tmp_path):
    with pytest.raises(DataError, match="not found.*nowhere"):
        load_calibration(tmp_path / "nowhere", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images.*empty"):
        load_calibration(tmp_path / "empty", 16)
    _png(tmp_path / "bad" / "x.png", 0)
    (tmp_path / "bad" / "meta.json").write_text(json.dumps(
        {"train": {}, "test": {"c": [{"img_path": "x.png", "mask_path": "", "cls_name": "c", "specie_name": "bad",
                                      "anomaly": 1, }]}}))
    with pytest.raises(DataError, match="no normal"):
        load_calibration(tmp_path / "bad" / "meta.json", 16)


# ------------------------------------------------------------------------------------------------------ gate
def test_gate_figures_and_failures():
    rng = np.random.default_rng(0)
    n = 40
    labels = np.r_[np.zeros(20, int), np.ones(20, int)]
    masks = np.zeros((n, 8, 8), bool)
    masks[20:, 2:5, 2:5] = True
    maps = rng.random((n, 8, 8)).astype(np.float32) + 2 * masks
    ref = {"scores": maps.max((1, 2)) + labels * 0.5, "maps": maps}
    same = compare(ref, {k: v.copy() for k, v in ref.items()}, labels, masks)
    assert same["spearman_scores"] == 1.0 and same["max_map_diff"] == 0 and same["image_auroc_change"] == 0
    assert failures(same, GateThresholds()) == []
    # a model that ranks the images the other way round fails both criteria
    bad = {"scores": -ref["scores"], "maps": ref["maps"] + 0.1}
    fig = compare(ref, bad, labels, masks)
    why = failures(fig, GateThresholds())
    assert fig["image_auroc_change"] < -0.5 and len(why) == 2 and "Spearman" in why[0] and "AUROC" in why[1]
    assert abs(fig["mean_map_diff"] - 0.1) < 1e-6 and abs(fig["pixel_auroc_change"]) < 1e-9
    # no labels: AUROC is not measured and not gated; a small perturbation keeps the ranking
    small = {"scores": ref["scores"] + 1e-6 * rng.standard_normal(n), "maps": ref["maps"]}
    f2 = compare(ref, small)
    assert "image_auroc_change" not in f2 and f2["spearman_scores"] > 0.99 and failures(f2) == []
    # an AUROC gain is reported, never a failure
    assert failures({"spearman_scores": 1.0, "image_auroc_change": 0.03}) == []


def test_gate_checks_verdict_agreement_at_the_stored_threshold():
    """Issue 20: scores that keep their ranking (Spearman 1) but shift across the stored threshold flip verdicts;
    the old gate passed them."""
    from wmoe.contract import Decision
    from wmoe.export.gate import gate, verdict_agreement
    s = np.linspace(0.0, 1.0, 100)
    ref = {"scores": s, "maps": np.zeros((100, 4, 4), np.float32)}
    shifted = {"scores": s + 0.05, "maps": ref["maps"]}  # int8 moves scores by up to ~0.1
    d = Decision(threshold=0.5)
    va = verdict_agreement(s, s + 0.05, d)
    assert va["verdict_flips"] == 5 and va["flips_to_anomalous"] == 5 and va["verdict_agreement"] == 0.95
    g = gate(ref, shifted, decision=d)
    assert g["spearman_scores"] == pytest.approx(1.0) and not g["passed"]
    assert "verdict agreement at the stored threshold 95.0% < 99%" in g["failures"][0]
    assert gate(ref, shifted)["passed"]  # no decision: not measured
    assert gate(ref, shifted, decision=d, thresholds=GateThresholds(min_verdict_agreement=0.9))["passed"]
    # per-class thresholds judge each image by its class
    dc = Decision(class_thresholds={"a": 0.2, "b": 0.9})
    classes = ["a"] * 50 + ["b"] * 50
    t = np.where(np.array(classes) == "a", 0.2, 0.9)
    assert verdict_agreement(s, s + 0.05, dc, classes)["verdict_flips"] == int(np.sum((s < t) & (s + 0.05 >= t)))


# ----------------------------------------------------------------------------------- the tiny model, end to end
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("quant")
    torch.manual_seed(0)
    model = WMoECLIP(ModelConfig.tiny(image_size=SIZE)).eval()
    with torch.no_grad():  # train-like heads, not their init
        for p in model.trainable_state_dict().values():
            p.add_(torch.randn_like(p) * 0.02)
    ckpt = save_checkpoint(model, d / "m.safetensors")
    onnx_path = export_onnx(ckpt, d / "m.onnx")
    # 24 normal train images: 11 held out (the fewest a 0.99 Spearman means something on, min_heldout) + 13
    data = make_demo_dataset(d / "demo", image_size=64, n_train_good=12, n_test_good=3, n_test_defect=3,
                             categories=["gravel", "cell"])
    return {"dir": d, "onnx": onnx_path, "data": data, "ckpt": ckpt}


def test_quantize_keep_auto_gate_and_report(tiny, monkeypatch):
    out = tiny["dir"] / "auto.qdq.onnx"
    loose = GateThresholds(max_image_auroc_drop=1.0, min_spearman=-1.0)
    # a held-out target strict enough that some groups must stay in fp32: the measured selection runs
    cfg = QuantizeConfig(precision="int8", high_precision="fp32", holdout=11, max_groups_per_tower=1, target=0.9999,
                         sensitivity_images=5)
    # every ONNX Runtime session the quantizer opens is counted (each is a full graph load: 1.8 GB for a ViT-L)
    import wmoe.export.quantize as wq
    opened = []
    monkeypatch.setattr(wq, "make_session", lambda p, *a, **k: opened.append(p) or make_session(p, *a, **k))
    r = quantize_onnx(tiny["onnx"], tiny["data"], out, cfg, gate_data=tiny["data"], thresholds=loose,
                      progress=False)
    # the fp32 reference, the one switchable graph every candidate of the selection runs on, the gated file: the
    # selection's 1 + groups + log2(groups) candidates no longer load a graph each (the old code opened 17 here)
    assert len(opened) == 3, opened
    sel = r.selection
    assert sel["sessions"] == 1 and sel["sensitivity_images"] == 5 and sel["groups"] == len(r.groups)
    assert len(r.groups) + 2 <= sel["runs"] <= 1 + len(r.groups) + (len(r.groups) + 1).bit_length() + 1
    assert {"calibration_s", "load_s", "selection_s", "gate_s"} <= set(r.timings)
    rep = json.loads(report_path(out).read_text())
    assert rep["calibration"]["images"] == 13 and rep["calibration"]["held_out"] == 11  # 24 train normals
    assert rep["calibration"]["method"] == "entropy" and "nvidia-modelopt" in rep["tool"]
    assert set(rep["sensitivity"]) == set(rep["groups"]) and 0 < len(rep["kept_groups"]) <= len(rep["groups"])
    # kept = the most sensitive groups, and keeping them reached the target on the held-out images
    sens = sorted(rep["sensitivity"], key=lambda g: -rep["sensitivity"][g]["sensitivity"])
    assert rep["kept_groups"] == sens[:len(rep["kept_groups"])]
    assert rep["held_out"]["spearman_scores"] >= 0.9999 and rep["held_out"]["pearson_maps"] >= 0.9999
    assert rep["gate"]["passed"] and rep["gate"]["n_images"] == 12 and "image_auroc_change" in rep["gate"]
    q = onnx.load(str(out))
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["wmoe.precision"] == "int8" and json.loads(meta["wmoe.quantization"])["kept_groups"] == r.kept_groups
    assert r.quantized_nodes == len(quantized_nodes(q)) > 0
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) > 0
    # the written file is what the gate measured: ORT runs it and reproduces the figures
    x = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    got = run_session(make_session(out), x)
    ref = run_session(make_session(tiny["onnx"]), x)
    assert got["maps"].shape == ref["maps"].shape and np.isfinite(got["maps"]).all()
    assert 0 < np.abs(got["maps"] - ref["maps"]).max() < 0.5  # quantized: close, not equal
    # a gate nobody can pass: refused, nothing written
    out2 = tiny["dir"] / "refused.qdq.onnx"
    with pytest.raises(QuantizeError, match="fails the accuracy gate.*Spearman"):
        quantize_onnx(tiny["onnx"], tiny["data"], out2, QuantizeConfig(high_precision="fp32", keep="none"),
                      gate_data=tiny["data"], thresholds=GateThresholds(min_spearman=1.01), progress=False)
    assert not out2.exists() and not report_path(out2).exists()
    # ... unless overridden: written, with a loud warning and the failure in the report
    with pytest.warns(RuntimeWarning, match="FAILS THE ACCURACY GATE"):
        quantize_onnx(tiny["onnx"], tiny["data"], out2, QuantizeConfig(high_precision="fp32", keep="none"),
                      gate_data=tiny["data"], thresholds=GateThresholds(min_spearman=1.01), allow_gate_failure=True,
                      progress=False)
    assert out2.is_file() and json.loads(report_path(out2).read_text())["gate"]["passed"] is False


def test_quantize_frames_input_model_with_labeled_gate(tiny):
    """The CLI's default export takes uint8 camera frames (in-graph preprocessing): calibration and the labeled
    gate feed it frames, not normalized images."""
    src = export_onnx(tiny["ckpt"], tiny["dir"] / "frames.onnx", preprocess=True, frame_size=(48, 40))
    out = tiny["dir"] / "frames.qdq.onnx"
    r = quantize_onnx(src, tiny["data"], out, QuantizeConfig(high_precision="fp32", keep="none"),
                      gate_data=tiny["data"], thresholds=GateThresholds(max_image_auroc_drop=1.0, min_spearman=-1.0),
                      progress=False)
    gate = json.loads(report_path(out).read_text())["gate"]
    assert gate["n_images"] == 12 and "image_auroc_change" in gate and np.isfinite(gate["spearman_scores"])
    assert r.quantized_nodes > 0
    ins = make_session(out).get_inputs()[0]
    assert ins.type == "tensor(uint8)" and list(ins.shape[1:]) == [48, 40, 3]


def test_keep_high_precision_restores_the_fp32_graph(tiny):
    """Keeping every quantized layer gives back fp32 outputs; keeping none does not."""
    out = tiny["dir"] / "none.qdq.onnx"
    quantize_onnx(tiny["onnx"], tiny["data"], out, QuantizeConfig(precision="fp8", high_precision="fp32",
                                                                  keep="none", holdout=11),
                  thresholds=GateThresholds(-1.0, -1.0), progress=False)
    q = onnx.load(str(out))
    assert json.loads(report_path(out).read_text())["calibration"]["method"] == "max"
    inits = {i.name: i.data_type for i in q.graph.initializer}
    zero_points = {inits.get(n.input[2]) for n in q.graph.node if n.op_type == "QuantizeLinear"}
    assert zero_points == {onnx.TensorProto.FLOAT8E4M3FN}  # fp8 E4M3, what Hopper's tensor cores take
    groups = node_groups(onnx.load(str(tiny["onnx"])), q)
    assert "head (maps, scores)" in groups and any(g.startswith("image blocks") for g in groups)
    restored = keep_high_precision(q, [n for ns in groups.values() for n in ns])
    assert quantized_nodes(restored) == [] and not any(n.op_type == "QuantizeLinear" for n in restored.graph.node)
    p = tiny["dir"] / "restored.onnx"
    onnx.save(restored, str(p))
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    ref = run_session(make_session(tiny["onnx"]), x)
    back = run_session(make_session(p), x)
    quant = run_session(make_session(out), x)
    assert np.abs(back["maps"] - ref["maps"]).max() <= 1e-5 and np.abs(back["scores"] - ref["scores"]).max() <= 1e-5
    assert np.abs(quant["maps"] - ref["maps"]).max() > 1e-4
    # the layer selection's one graph for every candidate: each group switched by a boolean input gives what the
    # candidate graph itself gives (none quantized = fp32, all = the Q/DQ file, one group = the rest kept), as the
    # Q/DQ operators define it: ONNX Runtime's graph optimizations move the optimized Q/DQ file by a few percent of
    # the quantization error (0.0018 of 0.066 here), so the candidates run unoptimized to compare
    quant = run_session(make_session(out, optimization="disabled"), x)
    sw = tiny["dir"] / "switchable.onnx"
    onnx.save(switchable(q, groups), str(sw))
    sess = make_session(sw)
    names = [o.name for o in sess.get_outputs()]

    def switched(on):
        flags = {f"wmoe_quantize_{i}": np.array(g in on) for i, g in enumerate(groups)}
        return dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x, **flags})))
    for got, want in ((switched([]), back), (switched(list(groups)), quant)):
        assert np.abs(got["maps"] - want["maps"]).max() <= 1e-5 and np.abs(got["scores"] - want["scores"]).max() <= 1e-5
    one = "wcma.0"  # alone it moves the maps by ~1e-2 (the head alone does not, in fp8)
    p1 = tiny["dir"] / "one.onnx"
    onnx.save(keep_high_precision(q, [n for g, ns in groups.items() if g != one for n in ns]), str(p1))
    want = run_session(make_session(p1, optimization="disabled"), x)
    got = switched([one])
    assert np.abs(got["maps"] - want["maps"]).max() <= 1e-5 and np.abs(got["maps"] - ref["maps"]).max() > 1e-5
    # the time budget: a budget no run fits measures the sensitivities on the fewest images allowed, and says so
    said = []
    held = np.random.default_rng(2).standard_normal((6, 3, SIZE, SIZE)).astype(np.float32)
    sw_run = _Switch(q, groups, tiny["dir"], 8, progress=False)
    _, sens, _, _, rec = _select_keep(sw_run, held, run_session(make_session(tiny["onnx"]), held), 1.01, said.append,
                                      budget_s=1e-6)
    assert rec["sensitivity_images"] == MIN_SENSITIVITY_IMAGES and set(sens) == set(groups)
    assert any("time budget" in m for m in said)
    assert rec["runs"] == sw_run.runs and sw_run.images == 6 + 4 * len(groups) + 6 * (rec["runs"] - 1 - len(groups))


def test_bench_runs_the_gate_on_the_qdq_model(tiny):
    """``wmoe bench --backends ... --qdq`` measures the quantized model against torch-fp32 with the same gate."""
    from wmoe.bench.harness import BenchConfig, run_bench
    qdq = tiny["dir"] / "bench.qdq.onnx"  # its own file: under xdist the tests of a module may run apart
    quantize_onnx(tiny["onnx"], tiny["data"], qdq, QuantizeConfig(high_precision="fp32", keep="none", holdout=11),
                  thresholds=GateThresholds(-1.0, -1.0), progress=False)
    cfg = BenchConfig(str(tiny["ckpt"]), out=str(tiny["dir"] / "bench"), backends=["ort-cpu", "ort-qdq"],
                      batches=[2], warmup=0, repeats=1, onnx=str(tiny["onnx"]), qdq=str(qdq),
                      parity_data=str(tiny["data"]), gate=GateThresholds(0.005, 0.99))
    doc = run_bench(cfg, progress=False)
    fp32, q = doc["auroc_parity"]["ort-cpu"], doc["auroc_parity"]["ort-qdq"]
    assert fp32["gate_passed"] and fp32["spearman_scores"] > 0.9999 and fp32["max_map_diff"] < 1e-4
    assert q["n_images"] == 12 and 0 < q["max_map_diff"] < 0.5  # quantized: close to fp32, not equal
    assert q["gate_passed"] == (q["spearman_scores"] >= 0.99 and q["delta_image_auroc"] >= -0.005)
    assert {r["backend"] for r in doc["records"]} == {"ort-cpu", "ort-qdq"}
    md = (tiny["dir"] / "bench" / "bench.md").read_text()
    assert "| ort-qdq | 12 |" in md and "Accuracy gate" in md


def test_cli_quantize_refuses_bad_input_and_failed_gate(tiny, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "wmoe", "export", "quantize", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    r = run(tiny["onnx"], "--calib", tmp_path / "nothing", "--out", tmp_path / "q.onnx")
    assert r.returncode == 2 and "nothing" in r.stderr and "not found" in r.stderr
    r = run(tiny["onnx"], "--calib", tiny["data"], "--out", tmp_path / "q.onnx", "--keep", "none",
            "--high-precision", "fp32", "--min-spearman", "0.999", "--max-images", "24", "--holdout", "12",
            "--max-auroc-drop", "100", "--gate-data", tiny["data"], "--gate-images", "0")
    assert r.returncode == 2 and "fails the accuracy gate" in r.stderr and not (tmp_path / "q.onnx").exists()


def test_cli_keep_takes_group_names_with_commas(tiny, tmp_path):
    """Layer-group names hold commas ("head (maps, scores)"): --keep is repeated, one group each, never split."""
    run = lambda *a: subprocess.run([sys.executable, "-m", "wmoe", "export", "quantize", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    base = [tiny["onnx"], "--calib", tiny["data"], "--high-precision", "fp32", "--min-spearman", "-1",
            "--max-auroc-drop", "100", "--gate-data", tiny["data"], "--holdout", "0"]
    out = tmp_path / "k.qdq.onnx"
    r = run(*base, "--out", out, "--keep", "head (maps, scores)", "--keep", "image blocks 0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(report_path(out).read_text())["kept_groups"] == ["head (maps, scores)", "image blocks 0"]
    r = run(*base, "--out", tmp_path / "x.onnx", "--keep", "head (maps)")
    assert r.returncode == 2 and "unknown layer group(s) 'head (maps)'" in r.stderr
    assert "'head (maps, scores)'" in r.stderr and not (tmp_path / "x.onnx").exists()  # the valid names listed
    r = run(*base, "--out", tmp_path / "x.onnx", "--keep", "none", "--keep", "samoe")
    assert r.returncode == 2 and "cannot be combined" in r.stderr


def test_quantize_needs_enough_held_out_images_for_the_spearman(tiny):
    """A Spearman over 2 images is +-1 whatever the model does: --holdout 2 (keep auto, or a gate on held-out
    images) is refused with the size it needs; 11 images for the 0.99 gate."""
    for cfg, gate in ((QuantizeConfig(high_precision="fp32", holdout=2), tiny["data"]),
                      (QuantizeConfig(high_precision="fp32", holdout=2, keep="none"), None)):
        with pytest.raises(QuantizeError, match=r"2 held-out normal image.*at least 11 images.*--holdout 11"):
            quantize_onnx(tiny["onnx"], tiny["data"], tiny["dir"] / "h2.onnx", cfg, gate_data=gate, progress=False)
    assert not (tiny["dir"] / "h2.onnx").exists()
    from wmoe.export.quantize import min_heldout
    assert (min_heldout(0.99), min_heldout(0.995), min_heldout(0.9), min_heldout(1.01)) == (11, 14, 5, 23)
    for n in range(3, 30):  # the definition: one adjacent swap of n ranks still meets the threshold from n on
        assert (1 - 12 / (n ** 3 - n) >= 0.99) == (n >= 11)


def test_quantize_leaves_the_input_onnx_byte_identical(tiny):
    """Model Optimizer writes shape-inferred graphs back over the file it is given: it gets a copy."""
    from wmoe.contract import sha256_file
    before = (sha256_file(tiny["onnx"]), tiny["onnx"].stat().st_size, tiny["onnx"].stat().st_mtime_ns)
    quantize_onnx(tiny["onnx"], tiny["data"], tiny["dir"] / "same.qdq.onnx",
                  QuantizeConfig(high_precision="fp32", keep="none"), gate_data=tiny["data"],
                  thresholds=GateThresholds(1.0, -1.0), progress=False)
    assert (sha256_file(tiny["onnx"]), tiny["onnx"].stat().st_size, tiny["onnx"].stat().st_mtime_ns) == before


def test_engine_build_refuses_fp8_without_fp8_tensor_cores(tmp_path):
    """The rule `wmoe export trt` applies to a Q/DQ ONNX before building (the build itself needs TensorRT + GPU)."""
    from wmoe.export.onnx_export import ExportError
    from wmoe.export.trt_build import check_qdq_gpu
    p = tmp_path / "m.qdq.onnx"
    check_qdq_gpu("fp8", "fp8", (9, 0), "NVIDIA H100 80GB HBM3", p)
    check_qdq_gpu("fp8", "fp8", (8, 9), "NVIDIA L4", p)
    check_qdq_gpu("int8", "int8", (8, 7), "Orin", p)
    with pytest.raises(ExportError, match=r"Orin \(compute capability 8.7\) has no fp8.*8.9.*--precision int8"):
        check_qdq_gpu("fp8", "fp8", (8, 7), "Orin", p)
    with pytest.raises(ExportError, match="A100.*no fp8"):
        check_qdq_gpu("fp8", "fp8", (8, 0), "NVIDIA A100-SXM4-80GB", p)
    with pytest.raises(ExportError, match="quantized to int8.*--precision int8"):
        check_qdq_gpu("int8", "fp16", (9, 0), "H100", p)


def test_quantized_model_decision_inherited_and_gated_or_recalibrated(tiny):
    """Issue 20: the fp32 threshold used to be copied into the int8 model unmarked and ungated. Now the gate
    measures verdict agreement at it and the record says it is inherited; --recalibrate gives the quantized model
    its own thresholds, set the way the fp32 ones were."""
    import shutil

    from wmoe.evaluation.calibrate import calibrate
    from wmoe.evaluation.calibration import CalibrationConfig
    from wmoe.contract import read_decision
    src = tiny["dir"] / "decided.onnx"
    shutil.copy(tiny["onnx"], src)
    fp32, _ = calibrate(src, tiny["data"], CalibrationConfig(false_reject_rate=0.1, per_class=False), split="train",
                        progress=False)
    out = tiny["dir"] / "decided.qdq.onnx"
    impossible = GateThresholds(max_image_auroc_drop=1.0, min_spearman=-1.0, min_verdict_agreement=1.01)
    with pytest.warns(RuntimeWarning, match="FAILS THE ACCURACY GATE.*verdict agreement"):
        r = quantize_onnx(src, tiny["data"], out, QuantizeConfig(high_precision="fp32", keep="none", holdout=11),
                          gate_data=tiny["data"], thresholds=impossible, allow_gate_failure=True, progress=False)
    assert 0.0 <= r.gate["verdict_agreement"] <= 1.0 and r.gate["verdict_threshold"] == fp32.threshold
    q = read_decision(out)
    assert q.threshold == fp32.threshold and q.calibration["inherited_from"]["precision"] == "fp32"
    assert q.calibration["inherited_from"]["verdict_agreement"] == r.gate["verdict_agreement"]
    # recalibrated: its own threshold from its own scores, the same method and target; verdict agreement at the
    # old threshold is reported, not gated
    out2 = tiny["dir"] / "recal.qdq.onnx"
    r2 = quantize_onnx(src, tiny["data"], out2, QuantizeConfig(high_precision="fp32", keep="none", holdout=11),
                       gate_data=tiny["data"], thresholds=impossible, recalibrate=tiny["data"], progress=False)
    q2 = read_decision(out2)
    assert r2.gate["passed"] and "verdict_agreement" in r2.gate
    assert q2.record.method == "false-reject-rate" and q2.record.target == 0.1 and "inherited_from" not in q2.calibration
    assert r2.recalibration["threshold"] == q2.threshold and r2.recalibration["threshold_before"] == fp32.threshold
    assert json.loads(report_path(out2).read_text())["recalibration"]["method"] == "false-reject-rate"
