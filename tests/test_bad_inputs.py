"""The bad-input suite: broken parts never pass, every bad input gets a clear error, nothing is silently wrong.

The corpus is generated here (no files checked in): broken and overflowing models, huge images, non-UTF-8 file
names and CSVs, unwritable outputs, NaN inputs. The command-line classes (options, entry points, --out, ONNX
files) are in ``test_cli_conventions.py``.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from wmoe.model.checkpoint import CheckpointError, load_model, save_checkpoint
from wmoe.model.config import ModelConfig
from wmoe.errors import NonFiniteError, WMoEError, printable
from wmoe.model.wmoe_clip import WMoECLIP

CFG = ModelConfig.tiny(image_size=112)
LATIN1 = os.fsdecode(b"caf\xe9")  # a Latin-1 name on a UTF-8 system: not decodable, arrives with a surrogate


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    torch.manual_seed(0)
    model = WMoECLIP(CFG).eval()
    good = save_checkpoint(model, d / "good.safetensors", extra={"threshold": 0.5})
    with torch.no_grad():
        sd = model.trainable_state_dict()
        for p in sd.values():
            p.mul_(1e30)  # finite weights whose forward pass overflows
    overflow = save_checkpoint(model, d / "overflow.safetensors", extra={"threshold": 0.5})
    with torch.no_grad():
        next(iter(sd.values())).fill_(float("nan"))
    nan = save_checkpoint(model, d / "nan.safetensors", extra={"threshold": 0.5})
    imgs = d / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", LATIN1):
        Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(imgs / f"{name}.png")
    return {"dir": d, "good": good, "overflow": overflow, "nan": nan, "imgs": imgs}


# ---------------------------------------------------------------- a NaN never passes
def test_nan_weights_are_refused_at_load(corpus):
    with pytest.raises(CheckpointError, match=r"nan.safetensors: tensor .* holds NaN or infinite values"):
        load_model(corpus["nan"])


def test_overflowing_model_gets_no_verdict_in_detector_predict_and_eval(corpus, tmp_path):
    from wmoe.detector import DetectionResult, Detector
    from wmoe.evaluation.evaluate import evaluate
    from wmoe.predict import predict

    det = Detector.from_checkpoint(corpus["overflow"])
    img = np.zeros((40, 40, 3), np.uint8)
    r = det(img)  # the one NaN policy (the runtime's): undecided and said why, never an exception, never normal
    assert det.threshold == 0.5 and r.verdicts == ["undecided"] and r.faults[0].startswith("non-finite score")
    res = DetectionResult(np.array([np.nan, 2.0], np.float32), np.zeros(2, np.float32), [np.zeros((2, 2))] * 2)
    assert res.verdicts == ["undecided", "undecided"] and res.faults[0] and not res.faults[1]
    with pytest.warns(DeprecationWarning, match="is_anomalous is deprecated"), pytest.raises(NonFiniteError):
        res.is_anomalous(1.0)  # NaN >= t would be False: "normal". It must be an error instead.
    doc = predict(corpus["overflow"], [corpus["imgs"]], tmp_path / "pred", progress=False)
    assert doc["n_scored"] == 0 and doc["n_failed"] == 2
    assert all(e["error"].startswith("undecided: ") for e in doc["errors"])
    assert "True" not in (tmp_path / "pred" / "scores.csv").read_text()
    assert "False" not in (tmp_path / "pred" / "scores.csv").read_text()
    from wmoe.data import make_demo_dataset

    data = make_demo_dataset(tmp_path / "data", image_size=32, n_test_good=1, n_test_defect=1,
                             categories=["brick"])
    with pytest.raises(NonFiniteError, match=r"NaN/inf scores or maps for 2 image\(s\) \(all undecided\)"):
        evaluate(corpus["overflow"], data, progress=False, store_threshold=False)


# ---------------------------------------------------------------- bounded memory: decoding and overlays
def test_huge_images_are_decoded_reduced_or_refused(tmp_path, monkeypatch):
    from wmoe import image_io as images
    from wmoe.data import DataError

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 200 * 200)
    arr = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(arr).save(tmp_path / "big.png")
    with pytest.warns(images.ReducedDecodeWarning, match=r"big.jpg: 640x480 is above .* decoded at 1/4 size"):
        out = images.load_image(tmp_path / "big.jpg")
    assert out.shape == (120, 160, 3)  # JPEG DCT scaling: never the full-size pixels
    with pytest.raises(DataError, match=r"640x480 = 0 MP, above the .* limit: .*big.png"):
        images.load_image(tmp_path / "big.png")


def test_overlay_is_bounded_uint8_and_matches_matplotlib_jet():
    from wmoe.overlay import JET_LUT, decision_text, overlay_panel

    mpl = pytest.importorskip("matplotlib")
    ref = mpl.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255.0
    assert np.abs(ref - JET_LUT).max() <= 0.5 + 1e-9
    image = np.zeros((3000, 2000, 3), np.uint8)  # a large input: the panel is bounded, not the input's size
    mask = np.zeros((3000, 2000), bool)
    mask[1000:2000, 500:1500] = True
    panel = overlay_panel(image, np.full((112, 112), 0.9, np.float32), 2.0, 1.0, mask=mask, max_side=300)
    assert panel.dtype == np.uint8 and panel.shape == (40 + 300, 2 * 200 + 8 + 64, 3)
    heat = panel[40:, 204:404]
    assert (heat == (255, 0, 255)).all(axis=2).sum() > 100  # the magenta ground-truth contour is drawn
    assert tuple(panel[2, 2]) == (215, 30, 30)  # red banner: anomalous
    assert decision_text(float("nan"), 1.0)[0].startswith("UNDECIDED")
    assert decision_text(0.5, 1.0)[0].startswith("NORMAL")  # the contract's word, not "ok"


def test_predict_needs_no_matplotlib_and_handles_latin1_names(corpus, tmp_path):
    mask = np.zeros((60, 90), np.uint8)
    mask[20:40, 30:60] = 255
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    masks = {str(corpus["imgs"] / "a.png"): str(tmp_path / "a_mask.png")}
    script = (
        "import sys; sys.modules['matplotlib'] = None  # as on a plain install\n"
        "from wmoe.predict import predict\n"
        f"doc = predict({str(corpus['good'])!r}, [{str(corpus['imgs'])!r}], {str(tmp_path / 'p')!r}, progress=False,"
        f" masks={masks!r})\n"
        "print(doc['n_scored'])\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "2", r.stderr[-2000:]
    csv_text = (tmp_path / "p" / "scores.csv").read_text(encoding="utf-8")
    assert "caf\\xe9.png" in csv_text  # the undecodable byte is shown escaped, the file is valid UTF-8
    doc = json.loads((tmp_path / "p" / "scores.json").read_text())
    assert all((tmp_path / "p" / r["overlay"]).is_file() for r in doc["results"])
    for r in doc["results"]:
        with Image.open(tmp_path / "p" / r["overlay"]) as im:
            panel = np.asarray(im.convert("RGB"))
        assert max(panel.shape[:2]) <= 2 * 512 + 4
        w = (panel.shape[1] - 8 - 64) // 2
        heat = panel[40:, w + 4:2 * w + 4]
        gt = int((heat == (255, 0, 255)).all(axis=2).sum())  # 'jet' blends are never magenta: only the contour is
        assert (gt > 50) == r["path"].endswith("a.png"), (r["path"], gt)


def test_latin1_file_names_and_csv_in_data_meta(tmp_path):
    from wmoe.data import AnomalyDataset, write_meta

    root = tmp_path / "visa"
    rows = [("obj", "test", "normal", f"obj/Data/Images/Normal/{LATIN1}.png", "")]
    (root / "obj/Data/Images/Normal").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / rows[0][3])
    (root / "split_csv").mkdir()
    text = "object,split,label,image,mask\n" + "\n".join(",".join(r) for r in rows) + "\n"
    (root / "split_csv" / "1cls.csv").write_bytes(os.fsencode(text))  # the Latin-1 byte, as on disk
    path = write_meta(root, "visa")
    ds = AnomalyDataset(root, path, split="test", image_size=32)
    assert len(ds) == 1 and ds[0]["image"].shape == (3, 32, 32)  # the name round-trips and the file opens
    assert printable(ds[0]["img_path"]).endswith("caf\\xe9.png")


# ---------------------------------------------------------------- files written by wmoe
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_get_the_users_umask(tmp_path, umask, mode):
    from wmoe.atomic import atomic_write_text

    old = os.umask(umask)
    try:
        p = atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == mode


def test_output_dir_checked_before_work(tmp_path):
    from wmoe.atomic import ensure_output_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(WMoEError, match=r"--out .*file is an existing file, not a folder"):
        ensure_output_dir(tmp_path / "file")
    if os.geteuid() != 0:  # root writes anywhere: the permission case only means something for a user
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(WMoEError, match="not a writable folder"):
            ensure_output_dir(ro / "sub")
    assert ensure_output_dir(tmp_path / "new" / "deeper").is_dir()
