"""Issue 20 item 1: calibration as its own step — the statistics, the decision record and its carriers, and
``wmoe calibrate`` on a checkpoint (torch) and on an exported ONNX (the torch-free runtime)."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from wmoe.evaluation.calibration import (CalibrationConfig, CalibrationError, ScoredImages, conformal_rank, decide,
                              f1_max_threshold, false_reject_threshold, frr_upper_bound, min_good_images,
                              recall_threshold, summary_lines)
from wmoe.contract import (ContractError, Decision, EngineSidecar, ModelMeta, read_decision, threshold_path,
                           write_decision)


# ------------------------------------------------------------------------------------------------ statistics
def test_finite_sample_quantile_rule_and_the_images_it_needs():
    assert [min_good_images(r) for r in (0.01, 0.05, 0.1, 0.5)] == [99, 19, 9, 1]
    for r in (0.01, 0.02, 0.05, 0.1, 0.25):  # the smallest n for which k <= n
        n = min_good_images(r)
        assert conformal_rank(n, r) <= n and conformal_rank(n - 1, r) > n - 1
    s = np.arange(1.0, 21.0)  # 20 good scores 1..20; rate 0.05 -> k = ceil(21 * 0.95) = 20
    thr, info = false_reject_threshold(s, 0.05)
    assert info["k"] == 20 and info["score_k"] == 20.0 and thr > 20.0 and np.nextafter(20.0, -np.inf) < thr
    assert Decision(threshold=thr).verdicts([20.0, thr]) == ["normal", "anomalous"]  # score == s_(k) is normal
    # float32 scores compared in float32 (numpy 2 does so with a Python float) agree
    assert (np.float32([20.0, thr]) >= thr).tolist() == [False, True]
    with pytest.raises(CalibrationError, match="18 good image.*0.05 needs at least 19"):
        false_reject_threshold(s[:18], 0.05)


def test_false_reject_rate_on_fresh_good_parts_stays_at_the_target():
    """The guarantee, checked by simulation: over many calibration draws the FRR on new good parts averages
    (n+1-k)/(n+1) <= rate, for a skewed score distribution; the upper bound holds ~90 % of the time."""
    rng = np.random.default_rng(0)
    n, rate, frr, below = 59, 0.05, [], 0
    for _ in range(2000):
        thr, info = false_reject_threshold(rng.gamma(2.0, size=n), rate)
        fresh = rng.gamma(2.0, size=4000)
        frr.append(np.mean(fresh >= thr))
        below += frr[-1] <= info["rate_upper_bound"]
    assert abs(np.mean(frr) - info["expected_rate"]) < 0.003 and info["expected_rate"] <= rate
    assert 0.86 < below / 2000 < 0.94
    assert frr_upper_bound(20000, conformal_rank(20000, 0.01)) < 0.0112  # large n: the bound tightens


def test_labelled_operating_points_and_confusion():
    from wmoe.evaluation.metrics import image_metrics
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(60), np.ones(30)]
    s = np.r_[rng.normal(0, 1, 60), rng.normal(2, 1, 30)]
    thr, info = f1_max_threshold(s, y)
    assert thr == pytest.approx(image_metrics(y, s)["threshold"]) and info["f1"] == pytest.approx(
        image_metrics(y, s)["f1_max"])
    t95, _ = recall_threshold(s, y, 0.95)
    assert np.mean(s[y == 1] >= t95) >= 0.95 and np.mean(s[y == 1] >= np.nextafter(t95, np.inf)) < 0.95
    d = decide(ScoredImages(s, labels=y), CalibrationConfig(false_reject_rate=0.05, pixel=False))
    pts = d.record.operating_points
    assert set(pts) == {"false-reject-rate", "f1-max", "defect-recall"}
    c = pts["f1-max"]["confusion"]
    assert c["tp"] + c["fn"] == 30 and c["fp"] + c["tn"] == 60 and c["tp"] == int(np.sum(s[y == 1] >= thr))
    assert d.threshold == pts["false-reject-rate"]["threshold"] and d.record.method == "false-reject-rate"
    with pytest.raises(CalibrationError, match="f1-max needs good and defective"):
        decide(ScoredImages(s[:60]), CalibrationConfig(method="f1-max"))
    assert any("TP" in line for line in summary_lines(d))


def test_per_class_thresholds_and_pixel_threshold():
    rng = np.random.default_rng(2)
    classes = ["pcb"] * 40 + ["screw"] * 40
    s = np.r_[rng.normal(1.0, 0.1, 40), rng.normal(2.0, 0.1, 40)]
    mx = np.r_[rng.uniform(0.2, 0.4, 40), rng.uniform(0.5, 0.7, 40)]
    d = decide(ScoredImages(s, mx, classes=classes), CalibrationConfig(false_reject_rate=0.05))
    assert set(d.class_thresholds) == {"pcb", "screw"}
    assert d.class_thresholds["pcb"] < 1.5 < d.class_thresholds["screw"] and 1.5 < d.threshold
    assert 0.4 < d.pixel_threshold < 0.7 and d.class_pixel_thresholds["pcb"] < 0.45
    assert d.verdicts([1.4, 1.4], ["pcb", "screw"]) == ["anomalous", "normal"]
    assert d.mask(np.array([0.45]), "pcb").all() and not d.mask(np.array([0.45]), "screw").any()
    with pytest.raises(ContractError, match="no threshold for class 'nut'.*pcb, screw"):
        d.check_class("nut")
    with pytest.raises(CalibrationError, match="class 'pcb': 5 good image"):
        decide(ScoredImages(np.r_[s[:5], s[40:]], classes=classes[:5] + classes[40:]),
               CalibrationConfig(false_reject_rate=0.05))


# ---------------------------------------------------------------------------------------------- the record
def test_decision_record_is_backwards_compatible_and_round_trips(tmp_path):
    old = '{"calibration": {"n_images": 60, "rule": "F1-max over all evaluated images"}, "pixel_threshold": null, ' \
          '"score": "s", "threshold": 1.281}'
    d = Decision.from_json(old)
    assert d.threshold == 1.281 and d.threshold_for("anything") == 1.281 and d.record.method == ""
    assert d.record.extra["rule"].startswith("F1-max") and json.loads(d.to_json()) == json.loads(old)
    new = Decision(threshold=1.5, pixel_threshold=0.4, class_thresholds={"pcb": 1.28, "screw": 1.74},
                   calibration={"method": "false-reject-rate", "target": 0.01, "n_good": 300,
                                "quantile_rule": "k = ..."})
    back = Decision.from_json(new.to_json())
    assert back == new and back.threshold_for("pcb") == 1.28 and back.threshold_for(None) == 1.5
    assert back.record.target == 0.01 and back.record.n_good == 300
    with pytest.raises(ContractError, match="class_thresholds\\['x'\\] must be a finite number"):
        Decision(class_thresholds={"x": float("nan")})
    with pytest.raises(ContractError, match="unknown calibration method"):
        Decision(calibration={"method": "guess"})
    # the carriers: ONNX metadata (and so the Triton parameters), the engine sidecar, the checkpoint's file
    meta = ModelMeta(image_size=112, decision=new)
    assert ModelMeta.from_metadata(meta.to_metadata()).decision == new
    side = EngineSidecar("m.engine", "a", "b", "fp16", "10.16", "gpu", "8.9", metadata=meta.to_metadata())
    side.write(tmp_path / "m.json")
    (tmp_path / "m.engine").write_bytes(b"engine")
    assert read_decision(tmp_path / "m.engine") == new
    moved = Decision(threshold=2.0, class_thresholds={"pcb": 1.9})
    write_decision(tmp_path / "m.engine", moved)
    side2 = EngineSidecar.read(tmp_path / "m.json")
    assert side2.model_meta.decision == moved and side2.metadata["wmoe.threshold"] == "2.0"
    assert side2.metadata["wmoe.image_size"] == "112"  # the rest of the contract untouched
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights")
    assert read_decision(ckpt) == Decision()
    assert write_decision(ckpt, new) == threshold_path(ckpt) and read_decision(ckpt) == new


def test_onnx_decision_rewritten_without_onnx_or_torch(tiny_onnx, tmp_path):
    import onnx
    import onnxruntime as ort
    _, src = tiny_onnx
    d = Decision(threshold=0.3, pixel_threshold=0.6, class_thresholds={"a": 0.2})
    out = write_decision(src, d, out=tmp_path / "copy.onnx")
    m0, m1 = onnx.load(str(src)), onnx.load(str(out))
    onnx.checker.check_model(m1)
    assert m0.graph == m1.graph  # the graph and weights byte-identical
    props = {p.key: p.value for p in m1.metadata_props}
    assert len(props) == len(m1.metadata_props)  # no duplicated keys
    assert Decision.from_json(props["wmoe.decision"]) == d and props["wmoe.threshold"] == "0.3"
    assert {k: v for k, v in props.items() if k not in ("wmoe.decision", "wmoe.threshold")} == {
        p.key: p.value for p in m0.metadata_props if p.key not in ("wmoe.decision", "wmoe.threshold")}
    assert read_decision(out) == d and read_decision(src).threshold == 0.25  # the source left as it was
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert Decision.from_json(sess.get_modelmeta().custom_metadata_map["wmoe.decision"]) == d


# ----------------------------------------------------------------------------------------- wmoe calibrate
def _good_folder(root, n, seed, size=48):
    rng = np.random.default_rng(seed)
    for c in ("pcb", "screw"):
        (root / c).mkdir(parents=True)
        base = rng.integers(0, 256, (size, size, 3))
        for i in range(n):
            img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c / f"{i:03d}.png")
    return root


def test_calibrate_checkpoint_writes_the_decision_beside_it(tiny_onnx, tmp_path):
    import shutil

    from wmoe.cli.commands import main
    ckpt = tmp_path / "m.safetensors"
    shutil.copy(tiny_onnx[0], ckpt)
    good = _good_folder(tmp_path / "good", 12, 0)
    assert main(["calibrate", str(ckpt), str(good), "--false-reject-rate", "0.1", "--classes-from-folders",
                 "--scores-csv", str(tmp_path / "scores.csv")]) == 0
    d = read_decision(ckpt)
    assert d.record.method == "false-reject-rate" and d.record.target == 0.1 and d.record.n_good == 24
    assert set(d.class_thresholds) == {"pcb", "screw"} and d.pixel_threshold is not None
    assert d.record.quantile_rule.startswith("k = ceil((n+1)(1-rate))")
    assert d.calibration["checkpoint_sha256"]  # a retrained checkpoint refuses this file (decision_for_checkpoint)
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 25
    from wmoe.detector import Detector
    assert Detector.from_checkpoint(ckpt).threshold == d.threshold
    # too few good images for the rate: refused with the number, nothing written
    before = threshold_path(ckpt).read_text()
    r = subprocess.run([sys.executable, "-m", "wmoe", "calibrate", str(ckpt), str(good), "--false-reject-rate",
                        "0.01"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "24 good image(s); a false-reject rate of 0.01 needs at least 99" in r.stderr, \
        r.stderr[-2000:]
    assert threshold_path(ckpt).read_text() == before


def test_calibrate_exported_model_without_torch(tiny_onnx, tmp_path):
    """``wmoe calibrate model.onnx good/`` runs in the runtime (no torch imported) and the runtime then judges by
    the stored per-class thresholds."""
    import shutil
    onnx_path = tmp_path / "m.onnx"
    shutil.copy(tiny_onnx[1], onnx_path)
    good = _good_folder(tmp_path / "good", 10, 1)
    code = ("import sys\nfrom wmoe.cli.commands import main\n"
            f"rc = main(['calibrate', {str(onnx_path)!r}, {str(good)!r}, '--false-reject-rate', '0.1', "
            "'--classes-from-folders'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nsys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "class pcb: image threshold" in r.stdout and "wrote the decision to" in r.stdout
    from wmoe.runtime import Runtime
    rt = Runtime.open(onnx_path, class_name="pcb")
    d = rt.decision
    assert d.record.method == "false-reject-rate" and d.record.n_good == 20 and set(d.classes) == {"pcb", "screw"}
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((good / "pcb").glob("*.png"))]
    res = rt.score(frames)
    assert res.threshold == d.class_thresholds["pcb"]
    assert res.verdicts == ["anomalous" if s >= d.class_thresholds["pcb"] else "normal" for s in res.scores]
    assert res.verdicts.count("anomalous") <= 1  # k = ceil(11 * 0.9) = 10 of 10: none of its own images rejected
    with pytest.raises(ContractError, match="no threshold for class 'nut'"):
        Runtime.open(onnx_path, class_name="nut")
    # dry run: nothing changes
    before = onnx_path.read_bytes()
    from wmoe.cli.commands import main
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["calibrate", str(onnx_path), str(good), "--false-reject-rate", "0.2", "--dry-run"]) == 0
    assert onnx_path.read_bytes() == before


def test_predict_class_picks_the_products_thresholds(tiny_onnx, tmp_path, capsys):
    """``wmoe predict --class NAME`` judges by that product's stored thresholds (scores.json, the overlay's banner);
    a class the decision does not know is refused in one line before scoring."""
    import shutil

    from wmoe.cli.commands import main
    ckpt = tmp_path / "m.safetensors"
    shutil.copy(tiny_onnx[0], ckpt)
    good = _good_folder(tmp_path / "good", 1, 3)
    img = good / "pcb" / "000.png"
    assert main(["predict", str(ckpt), str(img), "--out", str(tmp_path / "p0"), "--no-overlays"]) == 0
    score = json.loads((tmp_path / "p0" / "scores.json").read_text())["results"][0]["score"]
    write_decision(ckpt, Decision(threshold=score + 1.0, pixel_threshold=0.5,
                                  class_thresholds={"pcb": score - 0.01, "screw": score + 0.01},
                                  class_pixel_thresholds={"pcb": 0.0, "screw": 1.0}))
    docs = {}
    for cls in ("pcb", "screw", None):
        out = tmp_path / f"p_{cls}"
        assert main(["predict", str(ckpt), str(img), "--out", str(out)] + (["--class", cls] if cls else [])) == 0
        docs[cls] = json.loads((out / "scores.json").read_text())
        docs[cls]["picture"] = np.asarray(Image.open(out / docs[cls]["results"][0]["overlay"]).convert("RGB"))
    capsys.readouterr()
    assert docs["pcb"]["threshold"] == pytest.approx(score - 0.01) and docs["pcb"]["results"][0]["anomalous"]
    assert docs["screw"]["threshold"] == pytest.approx(score + 0.01) and not docs["screw"]["results"][0]["anomalous"]
    assert docs[None]["threshold"] == pytest.approx(score + 1.0) and docs["pcb"]["pixel_threshold"] == 0.0
    # the banner's colour is the class's verdict: red for pcb, green for screw
    assert tuple(docs["pcb"]["picture"][2, 2]) == (215, 30, 30) and tuple(docs["screw"]["picture"][2, 2]) == (40, 170, 60)
    assert main(["predict", str(ckpt), str(img), "--out", str(tmp_path / "px"), "--class", "pbc"]) == 2
    err = capsys.readouterr().err
    assert "no threshold for class 'pbc'" in err and "pcb, screw" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "px").exists()  # refused before anything was written
