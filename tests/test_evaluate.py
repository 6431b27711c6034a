"""Evaluation end to end on the demo data, with the bad-input suite: skipped files are counted, not fatal."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from wmoe.model.checkpoint import save_checkpoint
from wmoe.model.config import ModelConfig
from wmoe.contract import ContractError, Decision, decision_for_checkpoint, sha256_file, threshold_path
from wmoe.detector import Detector
from wmoe.data import make_demo_dataset, write_meta
from wmoe.evaluation.evaluate import evaluate
from wmoe.model.wmoe_clip import WMoECLIP


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    return save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), d / "m.safetensors")


@pytest.fixture()
def data(tmp_path):
    return make_demo_dataset(tmp_path / "demo", image_size=64, n_test_good=3, n_test_defect=3,
                             categories=["gravel", "cell"])


def test_eval_reports_and_stores_the_threshold_only_when_asked(ckpt, data, tmp_path):
    before = ckpt.read_bytes()
    table = evaluate(ckpt, data, out_dir=tmp_path / "out", progress=False)
    # issue 20: evaluating never replaces the deployment decision silently (it used to rewrite it every time)
    assert not threshold_path(ckpt).exists()
    rows = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,class,label,score,verdict" and len(rows) == 13  # per-image scores
    assert sorted({r.split(",")[1] for r in rows[1:]}) == ["cell", "gravel"]
    table = evaluate(ckpt, data, out_dir=tmp_path / "out", progress=False, store_threshold=True)
    assert [r.name for r in table.rows] == ["cell", "gravel"]
    for r in table.rows:
        assert r.n_images == 6 and r.n_anomalous == 3
        for v in (r.image_auroc, r.pixel_auroc, r.pixel_pro):
            assert 0.0 <= v <= 1.0
        # AnomalyCLIP's binned PRO is undefined (NaN) when fewer than two of its 200 thresholds reach FPR < 0.3,
        # which an untrained model can produce
        assert math.isnan(r.pixel_pro_binned) or 0.0 <= r.pixel_pro_binned <= 1.0
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert doc["extra"]["skipped_files"] == 0 and doc["mean"]["name"] == "mean"
    # the decision goes beside the checkpoint; the checkpoint (whose hash exports record) is not rewritten
    assert ckpt.read_bytes() == before
    dec = Decision.from_json(threshold_path(ckpt).read_text())
    assert dec.threshold == pytest.approx(doc["extra"]["threshold"])
    assert dec.record.method == "f1-max" and dec.record.n_good == 6 and dec.record.n_defective == 6
    c = dec.record.operating_points["f1-max"]["confusion"]
    assert c["tp"] + c["fn"] == 6 and c["fp"] + c["tn"] == 6
    assert dec.calibration["classes"] == ["cell", "gravel"] and dec.calibration["checkpoint_sha256"] == sha256_file(ckpt)
    assert Detector.from_checkpoint(ckpt).threshold == dec.threshold
    # with a stored decision, the evaluation reports the confusion counts at it (and the verdicts per image)
    stored = evaluate(ckpt, data, out_dir=tmp_path / "out2", progress=False)
    counts = {k: c[k] for k in ("tp", "fp", "tn", "fn")}
    assert stored.extra["decision"]["method"] == "f1-max"
    assert stored.extra["decision"]["confusion"] == {**counts, "undecided": 0}
    assert {r.split(",")[4] for r in (tmp_path / "out2" / "scores.csv").read_text().splitlines()[1:]} <= {
        "anomalous", "normal"}
    assert Decision.from_json(threshold_path(ckpt).read_text()) == dec  # unchanged
    # a threshold calibrated on another checkpoint (this one retrained since) is refused, naming the file
    stale = ckpt.with_name("retrained.safetensors")
    stale.write_bytes(before + b" ")  # other bytes: another SHA-256
    threshold_path(stale).write_text(threshold_path(ckpt).read_text())
    with pytest.raises(ContractError, match="calibrated on another checkpoint"):
        decision_for_checkpoint(stale)
    assert decision_for_checkpoint(ckpt).threshold == dec.threshold
    # deterministic: a second run gives the same table
    again = evaluate(ckpt, data, progress=False, store_threshold=False)
    assert again.rows == table.rows


def test_bad_files_are_skipped_and_counted(ckpt, data, tmp_path):
    test = data / "gravel" / "test"
    goods = sorted((test / "good").glob("*.png"))
    goods[0].write_bytes(b"")                                    # zero-byte file
    goods[1].write_text("this is not an image")                  # text named .png
    raw = goods[2].read_bytes()
    defect = sorted(p for p in test.iterdir() if p.name != "good")[0]
    img = sorted(defect.glob("*.png"))[0]
    img.write_bytes(img.read_bytes()[:200])                      # truncated PNG
    masks = sorted((data / "gravel" / "ground_truth").rglob("*.png"))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks[-1])  # mask of the wrong size
    table = evaluate(ckpt, data, out_dir=tmp_path / "out", progress=False, store_threshold=False)
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert table.extra["skipped_files"] == len(skipped) == 4
    reasons = " ".join(s["reason"] for s in skipped)
    assert str(goods[0]) in reasons or goods[0].name in reasons
    gravel = [r for r in table.rows if r.name == "gravel"][0]
    assert gravel.n_images == 2


def test_class_without_anomalies_gives_nan_not_crash(ckpt, data, tmp_path):
    test = data / "cell" / "test"
    for d in test.iterdir():
        if d.name != "good":
            shutil.rmtree(d)
    shutil.rmtree(data / "cell" / "ground_truth")
    write_meta(data, "mvtec")
    with pytest.warns(RuntimeWarning):
        table = evaluate(ckpt, data, progress=False, store_threshold=False)
    cell = [r for r in table.rows if r.name == "cell"][0]
    assert math.isnan(cell.image_auroc) and math.isnan(cell.pixel_auroc)
    assert not math.isnan(table.mean().image_auroc)  # the mean uses the defined classes


def test_missing_folder_is_a_clear_error(ckpt, tmp_path):
    from wmoe.data import DataError
    with pytest.raises(DataError, match="nope"):
        evaluate(ckpt, tmp_path / "nope", progress=False)


def test_write_threshold_says_what_it_replaces_and_is_never_ignored(ckpt, data, tmp_path, capsys):
    """Issue 20: evaluation changes the stored decision only when asked, never silently. --write-threshold replaces a
    per-class decision by one F1-max threshold: it says the per-class thresholds go (it named only the old global
    one); with --reference nothing can be written (other score units): refused, not silently skipped."""
    from wmoe.cli.commands import main
    from wmoe.contract import read_decision, write_decision
    model = tmp_path / "m.safetensors"
    shutil.copy(ckpt, model)
    write_decision(model, Decision(threshold=1.0, pixel_threshold=0.5, class_thresholds={"cell": 0.9, "gravel": 1.1},
                                   calibration={"method": "false-reject-rate", "target": 0.05, "n_good": 40}))
    before = threshold_path(model).read_text()
    assert main(["eval", str(model), str(data), "--out", str(tmp_path / "r"), "--reference", str(tmp_path / "ref"),
                 "--write-threshold"]) == 2
    err = capsys.readouterr().err
    assert "--write-threshold" in err and "--reference" in err and len(err.strip().splitlines()) == 1, err
    assert threshold_path(model).read_text() == before
    evaluate(model, data, progress=False, store_threshold=True)
    out = capsys.readouterr().out
    assert "was 1 (false-reject-rate)" in out and "per-class thresholds of cell, gravel are removed" in out, out
    assert read_decision(model).class_thresholds == {} and read_decision(model).record.method == "f1-max"
