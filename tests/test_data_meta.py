"""meta.json generators on small fabricated trees."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wmoe.data import DataError, build_meta, list_formats, read_meta, write_meta
from wmoe.data.meta import dumps_meta


def png(path: Path, size=(8, 8), value: int = 128, ext_format: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), value, np.uint8)).save(path, format=ext_format)
    return path


def make_mvtec(root: Path, reverse: bool = False) -> Path:
    files = [
        "bottle/train/good/001.png",
        "bottle/train/good/000.png",
        "bottle/test/good/000.png",
        "bottle/test/broken/001.png",
        "bottle/test/broken/000.png",
        "bottle/ground_truth/broken/000_mask.png",
        "bottle/ground_truth/broken/001_mask.png",
        "aaa_cable/test/good/000.png",
        "aaa_cable/test/cut/000.png",
        "aaa_cable/ground_truth/cut/000_mask.png",
    ]
    for f in reversed(files) if reverse else files:
        png(root / f)
    (root / "license.txt").write_text("not a class")
    png(root / "bottle/test/good/._000.png")  # macOS resource fork: must be ignored
    return root


# ------------------------------------------------------------------------------------------------- mvtec
def test_mvtec_layout(tmp_path: Path) -> None:
    meta = build_meta(make_mvtec(tmp_path), "mvtec")
    assert list(meta) == ["train", "test"]
    assert list(meta["test"]) == ["aaa_cable", "bottle"]
    assert list(meta["train"]) == ["bottle"]  # a split lists only the classes it has
    test = meta["test"]["bottle"]
    assert [e["img_path"] for e in test] == [
        "bottle/test/broken/000.png",
        "bottle/test/broken/001.png",
        "bottle/test/good/000.png",
    ]
    assert test[0] == {
        "img_path": "bottle/test/broken/000.png",
        "mask_path": "bottle/ground_truth/broken/000_mask.png",
        "cls_name": "bottle",
        "specie_name": "broken",
        "anomaly": 1,
    }
    assert test[2]["mask_path"] == "" and test[2]["anomaly"] == 0 and test[2]["specie_name"] == "good"
    train = [e["img_path"] for e in meta["train"]["bottle"]]
    assert train == ["bottle/train/good/000.png", "bottle/train/good/001.png"]
    for split in meta.values():
        for entries in split.values():
            for e in entries:
                assert not Path(e["img_path"]).is_absolute()
                assert (tmp_path / e["img_path"]).is_file()


def test_deterministic_regardless_of_creation_order(tmp_path: Path) -> None:
    a = build_meta(make_mvtec(tmp_path / "a"), "mvtec")
    b = build_meta(make_mvtec(tmp_path / "b", reverse=True), "mvtec")
    assert dumps_meta(a) == dumps_meta(b)


def test_write_meta_default_and_custom_path(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "d")
    out = write_meta(root, "mvtec")
    assert out == root / "meta.json"
    assert json.loads(out.read_text()) == build_meta(root, "mvtec")
    # rerunning with meta.json present in the root does not index it or change it
    before = out.read_bytes()
    write_meta(root, "mvtec")
    assert out.read_bytes() == before
    custom = write_meta(root, "mvtec", out=tmp_path / "elsewhere" / "m.json")
    assert custom.read_bytes() == before
    assert read_meta(custom) == build_meta(root, "mvtec")
    assert not [p for p in (tmp_path / "elsewhere").iterdir() if p.name != "m.json"]  # no temp file left


def test_mvtec_missing_mask(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    (root / "bottle/ground_truth/broken/001_mask.png").unlink()
    with pytest.raises(DataError, match=r"mask missing.*001\.png"):
        build_meta(root, "mvtec")


def test_missing_root_and_empty_class(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        build_meta(tmp_path / "nope", "mvtec")
    root = make_mvtec(tmp_path / "r")
    (root / "empty/test/good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images.*empty"):
        build_meta(root, "mvtec")
    with pytest.raises(ValueError, match="unknown data-set format"):
        build_meta(root, "no-such-format")


def test_formats_registered() -> None:
    for f in ["mvtec", "visa", "folder", "btad", "dtd", "mpdd", "brainmri", "br35h", "headct", "isic", "kvasir",
              "cvc-clinicdb", "cvc-colondb", "endo"]:
        assert f in list_formats()


# --------------------------------------------------------------------------------------------------- btad
def test_btad(tmp_path: Path) -> None:
    png(tmp_path / "01/train/ok/0000.bmp", ext_format="BMP")
    png(tmp_path / "01/test/ok/0001.bmp", ext_format="BMP")
    png(tmp_path / "01/test/ko/0002.bmp", ext_format="BMP")
    png(tmp_path / "01/ground_truth/ko/0002.png")
    meta = build_meta(tmp_path, "btad")
    ko, ok = meta["test"]["01"]
    assert ko["mask_path"] == "01/ground_truth/ko/0002.png" and ko["specie_name"] == "ko" and ko["anomaly"] == 1
    assert ok["specie_name"] == "good" and ok["anomaly"] == 0
    assert meta["train"]["01"][0]["img_path"] == "01/train/ok/0000.bmp"


# --------------------------------------------------------------------------------------------------- visa
def make_visa(root: Path) -> Path:
    png(root / "candle/Data/Images/Normal/0000.JPG", ext_format="JPEG")
    png(root / "candle/Data/Images/Normal/0001.JPG", ext_format="JPEG")
    png(root / "candle/Data/Images/Anomaly/000.JPG", ext_format="JPEG")
    png(root / "candle/Data/Masks/Anomaly/000.png", value=1)
    rows = [
        "object,split,label,image,mask",
        "candle,train,normal,candle/Data/Images/Normal/0001.JPG,",
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
        "candle,test,normal,candle/Data/Images/Normal/0000.JPG,",
    ]
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa(tmp_path: Path) -> None:
    meta = build_meta(make_visa(tmp_path), "visa")
    assert [e["img_path"] for e in meta["train"]["candle"]] == ["candle/Data/Images/Normal/0001.JPG"]
    an, no = meta["test"]["candle"]
    assert an["mask_path"] == "candle/Data/Masks/Anomaly/000.png" and an["anomaly"] == 1
    assert no["mask_path"] == "" and no["anomaly"] == 0 and no["specie_name"] == "good"


def test_visa_errors(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    (root / "candle/Data/Masks/Anomaly/000.png").unlink()
    with pytest.raises(DataError, match=r"mask missing.*000\.JPG"):
        build_meta(root, "visa")
    (root / "split_csv/1cls.csv").write_text("object,split,image\ncandle,test,x.png\n")
    with pytest.raises(DataError, match=r"lacks columns.*1cls\.csv"):
        build_meta(root, "visa")
    (root / "split_csv/1cls.csv").unlink()
    with pytest.raises(DataError, match=r"1cls\.csv"):
        build_meta(root, "visa")


# ------------------------------------------------------------------------------------------------- folder
def test_folder_flat(tmp_path: Path) -> None:
    png(tmp_path / "widget/good/b.png")
    png(tmp_path / "widget/good/a.jpg", ext_format="JPEG")
    png(tmp_path / "widget/scratch/s1.png")
    png(tmp_path / "widget/scratch/s2.png")
    png(tmp_path / "widget/masks/scratch/s1_mask.png")
    png(tmp_path / "widget/masks/scratch/s2.png")  # plain <stem>.png accepted too
    png(tmp_path / "widget/dent/d1.png")  # no masks/dent/: image-level label only
    meta = build_meta(tmp_path, "folder")
    assert meta["train"] == {}
    entries = meta["test"]["widget"]
    assert [e["img_path"] for e in entries] == [
        "widget/dent/d1.png", "widget/good/a.jpg", "widget/good/b.png", "widget/scratch/s1.png",
        "widget/scratch/s2.png",
    ]
    by = {e["img_path"]: e for e in entries}
    assert by["widget/dent/d1.png"]["mask_path"] == "" and by["widget/dent/d1.png"]["anomaly"] == 1
    assert by["widget/scratch/s1.png"]["mask_path"] == "widget/masks/scratch/s1_mask.png"
    assert by["widget/scratch/s2.png"]["mask_path"] == "widget/masks/scratch/s2.png"
    assert by["widget/good/a.jpg"]["anomaly"] == 0 and by["widget/good/a.jpg"]["specie_name"] == "good"


def test_folder_errors(tmp_path: Path) -> None:
    png(tmp_path / "w/good/a.png")
    png(tmp_path / "w/scratch/s1.png")
    png(tmp_path / "w/scratch/s2.png")
    png(tmp_path / "w/masks/scratch/s1_mask.png")
    with pytest.raises(DataError, match=r"mask missing.*s2\.png"):  # a masks/ folder must cover its defect
        build_meta(tmp_path, "folder")
    png(tmp_path / "w/masks/scratch/s2_mask.png")
    build_meta(tmp_path, "folder")
    png(tmp_path / "w/loose.png")
    with pytest.raises(DataError, match=r"loose\.png"):
        build_meta(tmp_path, "folder")
    (tmp_path / "w/loose.png").unlink()
    (tmp_path / "empty/good").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images.*empty"):
        build_meta(tmp_path, "folder")


def test_folder_split(tmp_path: Path) -> None:
    png(tmp_path / "w/train/good/t.png")
    png(tmp_path / "w/test/good/g.png")
    png(tmp_path / "w/test/crack/c.png")
    png(tmp_path / "w/test/masks/crack/c_mask.png")
    meta = build_meta(tmp_path, "folder")
    assert [e["img_path"] for e in meta["train"]["w"]] == ["w/train/good/t.png"]
    crack = meta["test"]["w"][0]
    assert crack["img_path"] == "w/test/crack/c.png" and crack["mask_path"] == "w/test/masks/crack/c_mask.png"
    png(tmp_path / "w/masks/crack/c_mask.png")
    with pytest.raises(DataError, match=r"mixes.*masks"):
        build_meta(tmp_path, "folder")


# ------------------------------------------------------------------------------------------------ medical
def test_brainmri_yes_no(tmp_path: Path) -> None:
    png(tmp_path / "no/1 no.jpeg", ext_format="JPEG")
    png(tmp_path / "yes/Y1.jpg", ext_format="JPEG")
    png(tmp_path / "pred/p.jpg", ext_format="JPEG")  # Br35H's unlabeled folder: ignored
    meta = build_meta(tmp_path, "br35h")
    e = meta["test"]["brain"]
    got = [(x["img_path"], x["anomaly"], x["mask_path"]) for x in e]
    assert got == [("no/1 no.jpeg", 0, ""), ("yes/Y1.jpg", 1, "")]
    (tmp_path / "yes/Y1.jpg").unlink()
    with pytest.raises(DataError, match="yes"):
        build_meta(tmp_path, "brainmri")


def test_headct(tmp_path: Path) -> None:
    png(tmp_path / "head_ct/head_ct/000.png")
    png(tmp_path / "head_ct/head_ct/001.png")
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n0,1\n1,0\n")
    e = build_meta(tmp_path, "headct")["test"]["brain"]
    got = [(x["img_path"], x["anomaly"]) for x in e]
    assert got == [("head_ct/head_ct/000.png", 1), ("head_ct/head_ct/001.png", 0)]


def test_segmentation_sets(tmp_path: Path) -> None:
    png(tmp_path / "kv/images/a.jpg", ext_format="JPEG")
    png(tmp_path / "kv/masks/a.jpg", value=255, ext_format="JPEG")
    e = build_meta(tmp_path / "kv", "kvasir")["test"]["colon"]
    assert e == [{"img_path": "images/a.jpg", "mask_path": "masks/a.jpg", "cls_name": "colon",
                  "specie_name": "anomaly", "anomaly": 1}]
    png(tmp_path / "isic/ISBI2016_ISIC_Part1_Test_Data/ISIC_0000003.jpg", ext_format="JPEG")
    png(tmp_path / "isic/ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png")
    e = build_meta(tmp_path / "isic", "isic")["test"]["skin"]
    assert e[0]["mask_path"] == "ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000003_Segmentation.png"
    png(tmp_path / "kv/images/b.jpg", ext_format="JPEG")
    with pytest.raises(DataError, match=r"mask missing.*b\.jpg"):
        build_meta(tmp_path / "kv", "cvc-colondb")


def test_folder_loads_maskless_mvtec_repack(tmp_path: Path) -> None:
    # AdaCLIP's HeadCT re-pack: headct/{train/good (empty), test/good, test/defect}, no masks
    (tmp_path / "headct/train/good").mkdir(parents=True)
    png(tmp_path / "headct/test/good/000.png")
    png(tmp_path / "headct/test/defect/001.png")
    meta = build_meta(tmp_path, "folder")
    assert meta["train"] == {}
    assert [(e["specie_name"], e["anomaly"], e["mask_path"]) for e in meta["test"]["headct"]] == [
        ("defect", 1, ""), ("good", 0, "")]
    with pytest.raises(DataError, match="mask missing"):  # mvtec insists on masks
        build_meta(tmp_path, "mvtec")
