"""The normal-reference mode: memory, coreset, fusion rule, fit-normal's files, eval --reference, and the ONNX
export scored by the torch-free runtime against PyTorch."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wmoe.checkpoint import load_model, save_checkpoint
from wmoe.config import ModelConfig
from wmoe.model import WMoECLIP
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
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = WMoECLIP(ModelConfig.tiny(image_size=SIZE)).eval()
    with torch.no_grad():
        for p in model.trainable_state_dict().values():
            p.add_(torch.randn_like(p) * 0.02)
    return save_checkpoint(model, tmp_path_factory.mktemp("ck") / "m.safetensors")


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


def test_onnx_export_with_reference_runtime_parity(ckpt, data, ref_dir, tmp_path):
    from wmoe.contract import ModelMeta
    from wmoe.export.onnx_export import ExportError, export_onnx
    from wmoe.onnx_meta import read_onnx_metadata
    from wmoe.reference.fusion import FUSED_SCORE_MEANING
    from wmoe.runtime import Runtime

    path = export_onnx(ckpt, tmp_path / "ref.onnx", reference=ref_dir, product="gravel", threshold=1.5)
    meta = ModelMeta.from_metadata(read_onnx_metadata(path))
    summary = json.loads(meta.reference)
    assert summary["class"] == "gravel" and summary["memory_rows"] == 100
    assert meta.decision.score == FUSED_SCORE_MEANING and meta.decision.threshold == 1.5
    ref = NormalReference.load(ref_dir)
    rm = ReferenceModel(load_model(ckpt), ref.get("gravel"), ref.config).eval()
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        want = rm(x)
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
                                batches=[1], warmup=0, repeats=1, onnx=str(path), reference=str(ref_dir),
                                product="gravel"), progress=False)
    assert doc["reference"]["memory_rows"] == 100 and "Normal-reference mode" in (tmp_path / "bench/bench.md").read_text()
    ort_rec = [r for r in doc["records"] if r["backend"] == "ort-cpu"][0]
    assert ort_rec["max_abs_maps"] <= 1e-4 and ort_rec["max_abs_scores"] <= 1e-4
    # wmoe calibrate on the reference-mode ONNX: i20's calibration through the runtime; the score meaning and the
    # reference metadata stay, the threshold is the good images' quantile of fused scores
    from wmoe.calibrate import calibrate
    from wmoe.calibration import CalibrationConfig
    decision, written = calibrate(path, data / "gravel" / "test" / "good", CalibrationConfig(false_reject_rate=0.3),
                                  out=tmp_path / "cal.onnx", progress=False)
    meta2 = ModelMeta.from_metadata(read_onnx_metadata(written))
    assert meta2.decision.score == FUSED_SCORE_MEANING and meta2.reference == meta.reference
    assert meta2.decision.threshold == decision.threshold and decision.threshold != 1.5


def test_cli_fit_normal_and_eval_reference(ckpt, data, tmp_path, capsys):
    from wmoe.cli import main
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
    lines = reference_section(tmp_path, load_model(ckpt).eval(), data, ["gravel", "cell"], ks=(1, 4))
    rows = [ln for ln in lines if ln.startswith("| 1 |") or ln.startswith("| 4 |") or ln.startswith("| full (5)")]
    assert len(rows) == 3 and all(len(r.split("|")) == 11 for r in rows)
    doc = json.loads((tmp_path / "reference_mode.json").read_text())
    assert set(doc["results"]) == {"gravel", "cell"} and doc["memory"]["cell"]["4"]["k"] == 4
