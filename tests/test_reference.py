"""The normal-reference mode: memory, coreset, fusion rule, fit-normal's files, eval --reference, and the ONNX
export scored by the torch-free runtime against PyTorch."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wmoe.model.checkpoint import load_model, save_checkpoint
from wmoe.model.config import ModelConfig
from wmoe.model.wmoe_clip import WMoECLIP
from wmoe.reference import (FusionStats, NormalReference, ReferenceConfig, ReferenceError, ReferenceModel,
                            find_good_images, fit_normal, fuse)
from wmoe.reference.memory import greedy_coreset, local_features, nn_distance

SIZE = 112


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from wmoe.data import make_demo_dataset
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=0, image_size=64, n_train_good=5, n_test_good=3,
                             n_test_defect=4, categories=["gravel", "cell"])


@pytest.fixture(scope="module")
def ckpt(trained_like_tiny, tmp_path_factory):
    assert trained_like_tiny.cfg.image_size == SIZE
    return save_checkpoint(trained_like_tiny, tmp_path_factory.mktemp("ck") / "m.safetensors")


@pytest.fixture(scope="module")
def ref_dir(ckpt, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    fit_normal(ckpt, data, out, ReferenceConfig(max_memory=100), k=3, progress=False)
    return out


def test_nn_distance_and_coreset_against_brute_force():
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(300, 16, generator=g), torch.randn(2, 50, 16, generator=g)
    brute = torch.cdist(q.double(), bank.double()).amin(-1)
    assert torch.allclose(nn_distance(q, bank).double(), brute, atol=1e-5)
    assert torch.allclose(nn_distance(q, bank, chunk=64).double(), brute, atol=1e-5)  # chunked path, same answer
    idx = greedy_coreset(bank, 40, seed=3)
    assert len(set(idx.tolist())) == 40 and torch.equal(idx, greedy_coreset(bank, 40, seed=3))
    # k-center: every next pick is the row farthest from those before it
    for i in (1, 10, 39):
        far = torch.cdist(bank, bank[idx[:i]]).amin(1)
        assert far[idx[i]] == far.max()
    assert torch.equal(greedy_coreset(bank, 500), torch.arange(300))
    # local averaging: a constant grid stays constant, the border is a mean of what exists
    x = torch.ones(1, 5, 5, 2)
    assert torch.allclose(local_features(x, 3), x)


def test_fusion_rule_R1_R3_and_zero_weight_keeps_zero_shot_ranking():
    g = torch.Generator().manual_seed(1)
    m, t, d = torch.rand(4, 8, 8, generator=g), torch.rand(4, generator=g), torch.rand(4, 8, 8, generator=g) * 3
    st = FusionStats(0.3, 0.2, 1.0, 0.5)
    s, f = fuse(m, t, d, st, 0.25)
    want = 0.75 * (m - 0.3) / 0.2 + 0.25 * (d - 1.0) / 0.5
    assert torch.allclose(f, want, atol=1e-6)
    assert torch.allclose(s, 0.75 * t / 0.2 + want.flatten(1).amax(1), atol=1e-5)
    s0, _ = fuse(m, t, d, st, 0.0)  # w = 0: an increasing affine function of s_hat = s_txt + max(M)
    s_hat = t + m.flatten(1).amax(1)
    assert torch.allclose(s0, (s_hat - 0.3) / 0.2, atol=1e-5)
    s1, f1 = fuse(m, t, d, st, 1.0)  # w = 1: PatchCore's max of the reference map
    assert torch.allclose(s1, ((d - 1.0) / 0.5).flatten(1).amax(1), atol=1e-5)
    with pytest.raises(ReferenceError):
        FusionStats(float("nan"), 1, 1, 1)


def test_fit_normal_files_stats_and_refusals(ckpt, data, ref_dir, tmp_path):
    doc = json.loads((ref_dir / "reference.json").read_text())
    assert [c["class"] for c in doc["classes"]] == ["cell", "gravel"]
    ref = NormalReference.load(ref_dir, checkpoint=ckpt)
    c = ref.get("gravel")
    g = SIZE // 14
    assert c.n_images == 3 and c.n_patches == 3 * g * g and c.bank.shape == (100, 64)  # coreset to max_memory
    # leave-one-out: a good image's reference map is measured without its own rows, so its mean is > 0
    assert c.stats.ref_mean > 0.05 and c.stats.zs_std > 0
    assert not list(ref_dir.glob("*.pt")) and not list(ref_dir.glob("*.pkl"))
    # a damaged product file is refused with its name
    f = ref_dir / doc["classes"][0]["file"]
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in ref_dir.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / f.name).write_bytes(f.read_bytes()[:-9] + b"123456789")
    with pytest.raises(ReferenceError, match=f.name):
        NormalReference.load(bad)
    # another checkpoint: refused, naming both
    other = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=SIZE, backbone_seed=5)), tmp_path / "o.safetensors")
    with pytest.raises(ReferenceError, match="another checkpoint"):
        NormalReference.load(ref_dir, checkpoint=other)
    with pytest.raises(ReferenceError, match="not in the reference"):
        ref.get("ihc")
    with pytest.raises(ReferenceError, match="fewer than k=9"):
        find_good_images(data, k=9)
    # a folder of images is one product named after it
    assert list(find_good_images(data / "cell" / "train" / "good")) == ["good"]


def test_reference_model_scores_a_defect_above_good(ckpt, data, ref_dir):
    from wmoe.data import AnomalyDataset, collate, read_meta
    model = load_model(ckpt).eval()
    ref = NormalReference.load(ref_dir)
    rm = ReferenceModel(model, ref.get("gravel"), ref.config).eval()
    ds = AnomalyDataset(data, read_meta(data / "meta.json"), split="test", classes=["gravel"], image_size=SIZE)
    batch, _ = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        out = rm(batch["image"])
    assert out.maps.shape == (len(ds), SIZE, SIZE) and torch.isfinite(out.scores).all()
    lab = batch["label"].numpy().astype(bool)
    assert out.scores.numpy()[lab].mean() > out.scores.numpy()[~lab].mean()


def test_onnx_export_with_reference_runtime_parity(ckpt, data, ref_dir, experts_ref_dir, tmp_path):
    """The memory and the three-level experts in one ONNX graph, scored by the torch-free runtime within 1e-4."""
    from wmoe.contract import ModelMeta
    from wmoe.data import AnomalyDataset, read_meta
    from wmoe.export.onnx_export import ExportError, export_onnx
    from wmoe.onnx_meta import read_onnx_metadata
    from wmoe.reference.fusion import FUSED_SCORE_MEANING
    from wmoe.runtime import Runtime

    path = export_onnx(ckpt, tmp_path / "ref.onnx", reference=experts_ref_dir, product="gravel", threshold=1.5)
    meta = ModelMeta.from_metadata(read_onnx_metadata(path))
    summary = json.loads(meta.reference)
    assert summary["class"] == "gravel" and summary["memory_rows"] == 100 and summary["experts"]["dim"] == 64
    assert meta.decision.score == FUSED_SCORE_MEANING and meta.decision.threshold == 1.5
    ref = NormalReference.load(experts_ref_dir)
    rm = ReferenceModel(load_model(ckpt), ref.get("gravel"), ref.config).eval()
    assert rm.experts is not None
    ds = AnomalyDataset(data, read_meta(data / "meta.json"), split="test", classes=["gravel"], image_size=SIZE)
    # good and defective parts (random noise would score hundreds of SD of a good part: beyond a 1e-4 of float32)
    x = torch.stack([ds[i]["image"] for i in (0, len(ds) // 2, len(ds) - 1)])
    with torch.no_grad():
        want = rm(x)
        memory_only = ReferenceModel(load_model(ckpt), ref.get("gravel"), ref.config, experts_weight=0.0)(x)
    assert (want.maps - memory_only.maps).abs().max() > 1e-2  # the graph holds the experts: they change the map
    with Runtime.open(path) as rt:
        got = rt.score_preprocessed(x.numpy())
    assert np.abs(got.scores - want.scores.numpy()).max() <= 1e-4
    assert np.abs(np.stack(got.maps) - want.maps.numpy()).max() <= 1e-4
    assert len(got.verdicts) == 3 and set(got.verdicts) <= {"anomalous", "normal"}
    with pytest.raises(ExportError, match="name one"):
        export_onnx(ckpt, tmp_path / "x.onnx", reference=ref_dir)
    # wmoe bench on the same file: memory size in bench.md, torch vs ONNX Runtime parity in its records
    from wmoe.bench.harness import BenchConfig, run_bench
    doc = run_bench(BenchConfig(str(ckpt), out=str(tmp_path / "bench"), backends=["torch-fp32", "ort-cpu"],
                                batches=[1], warmup=0, repeats=1, onnx=str(path), reference=str(experts_ref_dir),
                                product="gravel"), progress=False)
    assert doc["reference"]["memory_rows"] == 100 and "Normal-reference mode" in (tmp_path / "bench/bench.md").read_text()
    ort_rec = [r for r in doc["records"] if r["backend"] == "ort-cpu"][0]
    assert ort_rec["max_abs_maps"] <= 1e-4 and ort_rec["max_abs_scores"] <= 1e-4
    # wmoe calibrate on the reference-mode ONNX: i20's calibration through the runtime; the score meaning and the
    # reference metadata stay, the threshold is the good images' quantile of fused scores
    from wmoe.evaluation.calibrate import calibrate
    from wmoe.evaluation.calibration import CalibrationConfig
    decision, written = calibrate(path, data / "gravel" / "test" / "good", CalibrationConfig(false_reject_rate=0.3),
                                  out=tmp_path / "cal.onnx", progress=False)
    meta2 = ModelMeta.from_metadata(read_onnx_metadata(written))
    assert meta2.decision.score == FUSED_SCORE_MEANING and meta2.reference == meta.reference
    assert meta2.decision.threshold == decision.threshold and decision.threshold != 1.5


def test_cli_fit_normal_and_eval_reference(ckpt, data, tmp_path, capsys):
    from wmoe.cli.commands import main
    ref = tmp_path / "ref"
    assert main(["fit-normal", str(ckpt), str(data), "--out", str(ref), "--k", "2", "--classes", "cell"]) == 0
    assert "| cell | 2 |" in capsys.readouterr().out
    assert main(["eval", str(ckpt), str(data), "--classes", "cell", "--reference", str(ref), "--fusion-weight", "1",
                 "--out", str(tmp_path / "ev"), "--no-pro"]) == 0
    extra = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "reference" in json.dumps(extra)
    # a product the reference lacks: one line naming it, exit 2
    assert main(["eval", str(ckpt), str(data), "--classes", "gravel", "--reference", str(ref),
                 "--out", str(tmp_path / "ev2")]) == 2
    assert "'gravel' is not in the reference" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # refused while parsing, before any work
        main(["fit-normal", str(ckpt), str(data), "--out", str(ref), "--fusion-weight", "1.5"])
    assert e.value.code == 2 and "between 0 and 1" in capsys.readouterr().err


def test_demo_report_section(ckpt, data, tmp_path):
    from wmoe.reference.report import reference_section
    from wmoe.reference import ExpertsConfig
    lines = reference_section(tmp_path, load_model(ckpt).eval(), data, ["gravel", "cell"], ks=(1, 4),
                              experts_cfg=ExpertsConfig(**FAST_EXPERTS))
    rows = [ln for ln in lines if ln.startswith("| 1 |") or ln.startswith("| 4 |") or ln.startswith("| full (5)")]
    # per k: the memory alone and memory + experts
    assert len(rows) == 6 and all(len(r.split("|")) == 12 for r in rows)
    assert sum("memory + experts" in r for r in rows) == 3
    doc = json.loads((tmp_path / "reference_mode.json").read_text())
    assert set(doc["results"]) == {"gravel", "cell"} and doc["memory"]["cell"]["4"]["k"] == 4
    assert "4 v=0.5" in doc["results"]["cell"] and doc["memory"]["cell"]["4"]["experts"]["n_images"] == 4


# ------------------------------------------------------------------ the three-level reconstruction experts (issue 25)
#: few steps: the tests check the mechanics, bench/results/reference_cpu.md the quality
FAST_EXPERTS = dict(steps=40, hidden=32, bottleneck=4)


@pytest.fixture(scope="module")
def good_embeddings(ckpt, data):
    from wmoe.reference.fit import _load_batch
    model = load_model(ckpt).eval()
    paths = find_good_images(data, ["gravel"], 3)["gravel"]
    with torch.no_grad():
        return model.backbone.patch_embedding(_load_batch(paths, SIZE)).float()


@pytest.fixture(scope="module")
def experts_ref_dir(ckpt, data, tmp_path_factory):
    from wmoe.reference import ExpertsConfig
    out = tmp_path_factory.mktemp("ref_experts")
    fit_normal(ckpt, data, out, ReferenceConfig(max_memory=100, experts=True), classes=["gravel"], k=3,
               progress=False, experts_cfg=ExpertsConfig(**FAST_EXPERTS))
    return out


def test_experts_fit_is_deterministic_and_learns_the_good_images(good_embeddings):
    from wmoe.reference.experts import ExpertsConfig, LEVELS, fit_experts, objective
    cfg = ExpertsConfig(**FAST_EXPERTS)
    a, info, z_held = fit_experts(good_embeddings, cfg, upsample=SIZE)
    b, _, _ = fit_experts(good_embeddings, cfg, upsample=SIZE)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # the same seed, the same weights, bit for bit
    # every level's reconstruction error on the good images falls well below that of the untrained experts
    for lvl in LEVELS:
        assert info["loss_after"][f"rec_{lvl}"] < 0.7 * info["loss_before"][f"rec_{lvl}"], lvl
    # X3: the experts' map is in standard deviations of an unseen good part (mean 0, spread 1 over the held-out
    # good pixels); on the images they were trained on the experts do better than on unseen ones
    assert abs(float(z_held.mean())) < 1e-4 and abs(float(z_held.std()) - 1) < 1e-3
    with torch.no_grad():
        z_in = a(good_embeddings)
    assert float(z_in.mean()) < float(z_held.mean())
    t = objective(a, good_embeddings)
    assert torch.allclose(t["loss"], sum(t[f"rec_{lvl}"] for lvl in LEVELS) + t["router"] + cfg.balance * t["esb"]
                          + cfg.repulsion * t["eir"])


def test_experts_loss_holds_esb_and_eir(good_embeddings):
    """Training with ESB gives a more balanced router, with EIR more dissimilar expert codes, than without: both
    regularizers of wmoe.model.expert_health act on the experts' fit (this fails if either is dropped from the loss)."""
    from wmoe.model.expert_health import balance_loss, repulsion_loss
    from wmoe.reference.experts import ExpertsConfig, fit_experts

    def after(**kw):
        return fit_experts(good_embeddings, ExpertsConfig(**{**FAST_EXPERTS, **kw}))[1]["loss_after"]
    off, esb, eir = after(balance=0.0, repulsion=0.0), after(balance=3.0, repulsion=0.0), after(balance=0.0, repulsion=3.0)
    assert esb["esb"] < off["esb"] - 0.05 and esb["esb"] < 1.5  # uniform routing is 1, one level only 3
    assert eir["eir"] < off["eir"] - 0.05
    # the terms are the SA-MoE ones, not copies: the same numbers from wmoe.model.expert_health on the same tensors
    m = fit_experts(good_embeddings, ExpertsConfig(**FAST_EXPERTS))[0]
    from wmoe.reference.experts import objective
    with torch.no_grad():
        codes, _, g = m.parts(good_embeddings)
        t = objective(m, good_embeddings)
        p = g.reshape(-1, 3)
        assert torch.allclose(t["esb"], balance_loss(p, p.argmax(-1, keepdim=True)))
        assert torch.allclose(t["eir"], repulsion_loss(torch.stack(codes, -2).reshape(-1, 3, codes[0].shape[-1])))


def test_experts_reference_files_and_scores(ckpt, data, experts_ref_dir):
    from safetensors.torch import load_file

    doc = json.loads((experts_ref_dir / "reference.json").read_text())
    entry = doc["classes"][0]
    assert doc["config"]["experts"] is True and entry["experts"]["levels"] == ["patch", "component", "global"]
    assert -1 <= entry["experts"]["memory_correlation"] <= 1
    keys = load_file(str(experts_ref_dir / entry["file"]))
    assert any(k.startswith("experts.enc1.2") for k in keys) and "bank" in keys  # one file, no pickle
    ref = NormalReference.load(experts_ref_dir, checkpoint=ckpt)
    c = ref.get("gravel")
    model = load_model(ckpt).eval()
    rm = ReferenceModel(model, c, ref.config).eval()
    mem_only = ReferenceModel(model, c, ref.config, experts_weight=0.0).eval()
    assert rm.experts is not None and mem_only.experts is None
    from wmoe.data import AnomalyDataset, read_meta
    ds = AnomalyDataset(data, read_meta(data / "meta.json"), split="test", classes=["gravel"], image_size=SIZE)
    x = torch.stack([ds[0]["image"], ds[len(ds) - 1]["image"]])  # a good and a defective part: scores in a few SD
    with torch.no_grad():
        want, plain = rm(x), mem_only(x)
    assert (want.maps - plain.maps).abs().max() > 1e-2  # the experts change the map
    # R4: the reference map is (1 - v) z_D + v z_E, in units of its spread on the good images
    with torch.no_grad():
        r, st = rm.reference_map(x)
        d = mem_only.distance_map(x)
        z_e = rm.experts_map(x)
    v, s = ref.config.experts_weight, c.stats
    assert torch.allclose(r, (1 - v) * (d - s.ref_mean) / s.ref_std + v * z_e, atol=1e-5)
    rho = c.extra["experts"]["memory_correlation"]
    assert st.ref_mean == 0 and abs(st.ref_std - ((1 - v) ** 2 + v ** 2 + 2 * v * (1 - v) * rho) ** 0.5) < 1e-9


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_experts_bad_reference_folder_one_line_naming_the_file(ckpt, data, experts_ref_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    from wmoe.cli.commands import main
    from wmoe.contract import sha256_file

    doc = json.loads((experts_ref_dir / "reference.json").read_text())
    name = doc["classes"][0]["file"]
    # the product file lost its experts' weights (its hash updated, so only the content is wrong)
    bad = _copy(experts_ref_dir, tmp_path / "noweights")
    t = {k: v for k, v in load_file(str(bad / name)).items() if not k.startswith("experts.")}
    save_file(t, str(bad / name))
    doc2 = json.loads((bad / "reference.json").read_text())
    doc2["classes"][0]["sha256"] = sha256_file(bad / name)
    (bad / "reference.json").write_text(json.dumps(doc2))
    with pytest.raises(ReferenceError, match=f"{name}: the manifest names trained experts but the file holds no"):
        NormalReference.load(bad)
    assert main(["eval", str(ckpt), str(data), "--classes", "gravel", "--reference", str(bad),
                 "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0]
    # a damaged experts entry in the manifest: named
    bad2 = _copy(experts_ref_dir, tmp_path / "badentry")
    doc3 = json.loads((bad2 / "reference.json").read_text())
    del doc3["classes"][0]["experts"]["config"]
    (bad2 / "reference.json").write_text(json.dumps(doc3))
    with pytest.raises(ReferenceError, match="reference.json: damaged experts entry"):
        NormalReference.load(bad2)
    # weights of another shape than their config says
    bad3 = _copy(experts_ref_dir, tmp_path / "shape")
    doc4 = json.loads((bad3 / "reference.json").read_text())
    doc4["classes"][0]["experts"]["config"]["hidden"] = 7
    (bad3 / "reference.json").write_text(json.dumps(doc4))
    with pytest.raises(ReferenceError, match=f"{name}: expert weights do not match their config"):
        NormalReference.load(bad3)


def test_cli_fit_normal_experts(ckpt, data, tmp_path, capsys):
    from wmoe.cli.commands import main
    ref = tmp_path / "ref"
    assert main(["fit-normal", str(ckpt), str(data), "--out", str(ref), "--k", "2", "--classes", "cell",
                 "--experts", "--experts-weight", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "| cell | 2 |" in out and "router top-1 share" in out and "experts weight 0.4" in out
    loaded = NormalReference.load(ref)
    assert loaded.config.experts and loaded.config.experts_weight == 0.4 and loaded.get("cell").experts is not None
    # wmoe eval --reference scores with the experts (the metrics record them)
    assert main(["eval", str(ckpt), str(data), "--classes", "cell", "--reference", str(ref), "--out",
                 str(tmp_path / "ev"), "--no-pro"]) == 0
    per_class = json.loads((tmp_path / "ev" / "metrics.json").read_text())["extra"]["reference"]["per_class"]
    assert per_class["cell"]["experts"]["n_images"] == 2


def test_reference_frames_model_on_the_line_triton_and_tensorrt(ckpt, data, experts_ref_dir, tmp_path, monkeypatch):
    """The deployable claim, run: a frames-input reference-mode export (memory + experts in the graph) scores camera
    frames in the torch-free runtime as PyTorch does (1e-4), is served by a real Triton Inference Server with the
    runtime's answers, and builds a serialized TensorRT engine under the generated TensorRT double — with no
    reference-specific code in any of them."""
    import cuda_double
    import trt_double as D
    from triton_server import LocalTriton, Unavailable

    from wmoe.cli.commands import main as wmoe_main
    from wmoe.contract import EngineSidecar
    from wmoe.export.onnx_export import export_onnx
    from wmoe.export.trt_plugins import unregister_plugins
    from wmoe.model.preprocess import frames_to_images
    from wmoe.runtime import Runtime

    frame = (60, 80)
    path = export_onnx(ckpt, tmp_path / "ref_frames.onnx", reference=experts_ref_dir, product="gravel",
                       preprocess=True, frame_size=frame, threshold=1.5)
    ref = NormalReference.load(experts_ref_dir)
    rm = ReferenceModel(load_model(ckpt), ref.get("gravel"), ref.config).eval()
    # frames made from real test images (good and defective), resized to the camera's frame size
    from PIL import Image
    files = sorted((data / "gravel" / "test").rglob("*.png"))
    files = [files[0], files[len(files) // 2], files[-1]]
    frames = np.stack([np.asarray(Image.open(f).convert("RGB").resize(frame[::-1])) for f in files]).astype(np.uint8)
    with Runtime.open(path) as rt:
        got = rt.score(frames)
        spec = rt.meta.preprocess
    with torch.no_grad():
        want = rm(frames_to_images(torch.from_numpy(frames), spec))
    assert np.abs(got.scores - want.scores.numpy()).max() <= 1e-4
    assert np.abs(np.stack(got.maps) - want.maps.numpy()).max() <= 1e-4

    # Triton: `wmoe export triton` from the ONNX (Python backend: the runtime), served by the real server
    repo = tmp_path / "repo"
    assert wmoe_main(["export", "triton", str(path), "--out", str(repo), "--backend", "python", "--device", "cpu"]) \
        in (0, None)
    srv = LocalTriton(repo, tmp_path / "server")
    try:
        srv.start()
    except Unavailable as e:
        pytest.skip(f"Triton Inference Server cannot run here: {e}")
    try:
        import tritonclient.http as httpclient
        c = httpclient.InferenceServerClient(f"127.0.0.1:{srv.http_port}")
        c.load_model("wmoe_python")
        inp = httpclient.InferInput("frames", list(frames.shape), "UINT8")
        inp.set_data_from_numpy(frames)
        r = c.infer("wmoe_python", [inp])
        np.testing.assert_allclose(r.as_numpy("scores")[:, 0], got.scores, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r.as_numpy("maps"), np.stack(got.maps), rtol=1e-5, atol=1e-5)
    finally:
        srv.stop()

    # TensorRT: `wmoe export trt` to a serialized engine under the double generated from TensorRT's published API
    cuda_double.install(monkeypatch)
    unregister_plugins()
    try:
        D.load("10.9")
        engine = tmp_path / "ref.engine"
        assert wmoe_main(["export", "trt", str(path), "--out", str(engine), "--precision", "fp16",
                          "--batch", "1:2:4"]) in (0, None)
        side = EngineSidecar.read(EngineSidecar.path_for(engine))
        assert engine.stat().st_size > 0 and json.loads(side.model_meta.reference)["class"] == "gravel"
    finally:
        unregister_plugins()
        D.unload()
