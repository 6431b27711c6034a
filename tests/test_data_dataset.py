"""Image/mask decoding, preprocessing, AnomalyDataset and skip accounting through a real DataLoader."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from wmoe.data import (
    CLIP_MEAN,
    CLIP_STD,
    AnomalyDataset,
    DataError,
    SkippedFiles,
    collate,
    load_image,
    load_mask,
    preprocess,
    write_meta,
)


def save(path: Path, img: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def rgb(h: int = 12, w: int = 10, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def bad_files(d: Path) -> dict:
    """One file per kind of breakage."""
    d.mkdir(parents=True, exist_ok=True)
    good = save(d / "good_src.png", rgb(64, 64)).read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "zero.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    return {
        "truncated": d / "truncated.png",
        "zero-byte": d / "zero.png",
        "text": d / "text.png",
        "missing": d / "missing.png",
    }


# ---------------------------------------------------------------------------------------------- decoding
def test_load_image_conversions(tmp_path: Path) -> None:
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    out = load_image(save(tmp_path / "gray.png", Image.fromarray(gray, "L")))
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3)
    assert (out == gray[:, :, None]).all()

    rgba = np.random.default_rng(1).integers(0, 256, (12, 10, 4), dtype=np.uint8)
    out = load_image(save(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA")))
    assert out.shape == (12, 10, 3) and (out == rgba[:, :, :3]).all()

    g16 = np.full((12, 10), 257 * 200, dtype=np.uint16)
    g16[0, 0] = 65535
    im16 = Image.fromarray(g16)
    assert im16.mode.startswith("I;16")
    p16 = save(tmp_path / "g16.png", im16)
    assert Image.open(p16).mode in ("I;16", "I")  # really stored as 16-bit
    out = load_image(p16)
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3)
    assert out[1, 1, 0] == 200 and out[0, 0, 0] == 255

    pal = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), "P")
    pal.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9))
    out = load_image(save(tmp_path / "pal.png", pal))
    assert out.shape == (2, 2, 3) and tuple(out[0, 1]) == (200, 100, 50) and tuple(out[1, 1]) == (0, 255, 0)

    bw = Image.new("1", (2, 1), 0)
    bw.putpixel((0, 0), 1)
    out = load_image(save(tmp_path / "bw.png", bw))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (0, 0, 0)


def test_load_mask_binarizes_above_zero(tmp_path: Path) -> None:
    visa = np.zeros((6, 5), np.uint8)
    visa[2:4, 1:3] = 1  # VisA masks store class indices, not 255
    m = load_mask(save(tmp_path / "visa.png", Image.fromarray(visa, "L")))
    assert m.dtype == bool and m.shape == (6, 5) and m.sum() == 4 and m[2, 1]

    m16 = np.zeros((6, 5), np.uint16)
    m16[0, 0] = 1
    m16[5, 4] = 65535
    m = load_mask(save(tmp_path / "m16.png", Image.fromarray(m16)))
    assert m.sum() == 2 and m[0, 0] and m[5, 4]

    pal = Image.fromarray(np.array([[0, 1, 0]], np.uint8), "P")
    pal.putpalette([0, 0, 0, 0, 0, 1] + [0] * (256 * 3 - 6))  # index 1 -> a barely non-black color
    assert load_mask(save(tmp_path / "pal.png", pal)).tolist() == [[False, True, False]]

    col = np.zeros((1, 3, 3), np.uint8)
    col[0, 2, 2] = 1
    assert load_mask(save(tmp_path / "rgb.png", Image.fromarray(col))).tolist() == [[False, False, True]]


@pytest.mark.parametrize("kind", ["truncated", "zero-byte", "text", "missing"])
@pytest.mark.parametrize("loader", [load_image, load_mask])
def test_bad_files_raise_named_data_error(tmp_path: Path, kind: str, loader) -> None:
    path = bad_files(tmp_path)[kind]
    with pytest.raises(DataError) as ei:
        loader(path)
    msg = str(ei.value)
    assert path.name in msg
    expected = {"truncated": "truncated", "zero-byte": "empty", "text": "not a readable image", "missing": "not found"}
    assert expected[kind] in msg
    assert isinstance(ei.value, ValueError)


# ------------------------------------------------------------------------------------------- preprocess
def test_preprocess_matches_definition() -> None:
    img = np.zeros((7, 9, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 128, 0
    img.setflags(write=False)  # callers may hand in read-only arrays
    t = preprocess(img, 16)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    for c, v in enumerate((255, 128, 0)):
        assert torch.allclose(t[c], torch.full((16, 16), (v / 255 - CLIP_MEAN[c]) / CLIP_STD[c]), atol=1e-5)
    # the spec's squash resize (bilinear-box), then normalize: compare with a float64 reference of the definition
    from test_preprocess_spec import reference_resize
    rnd = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ref = reference_resize(rnd, 11) / 255
    ref = (ref - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert np.allclose(preprocess(rnd, 11).permute(1, 2, 0).numpy(), ref, atol=1e-5)
    assert preprocess(rnd[:, :, 0], 8).shape == (3, 8, 8)  # gray HxW accepted
    with pytest.raises(TypeError):
        preprocess(rnd.astype(np.float32), 8)


# --------------------------------------------------------------------------------------------- data set
def make_set(root: Path, n_bad: int = 0) -> Path:
    """An MVTec-style set of 3 normal + 2 anomalous images (one gray, one RGBA) with meta.json."""
    save(root / "obj/train/good/000.png", rgb(20, 30, 1))
    for i in range(3):
        save(root / f"obj/test/good/{i:03d}.png", rgb(20, 30, 10 + i))
    save(root / "obj/test/crack/000.png", Image.fromarray(np.full((20, 30), 90, np.uint8), "L"))
    save(root / "obj/test/crack/001.png", rgb(20, 30, 5).convert("RGBA"))
    for i in range(2):
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, 10:20] = 1 if i == 0 else 255
        save(root / f"obj/ground_truth/crack/{i:03d}_mask.png", Image.fromarray(mask))
    write_meta(root, "mvtec")
    return root


def test_dataset_items(tmp_path: Path) -> None:
    root = make_set(tmp_path)
    ds = AnomalyDataset(root, image_size=16, on_error="raise")
    assert len(ds) == 5 and ds.classes == ["obj"] and ds.labels == [1, 1, 0, 0, 0]
    a = ds[0]
    assert a["image"].shape == (3, 16, 16) and a["image"].dtype == torch.float32
    assert a["mask"].shape == (1, 16, 16) and a["mask"].dtype == torch.float32
    assert set(a["mask"].unique().tolist()) == {0.0, 1.0}
    assert a["label"] == 1 and a["has_mask"] and a["specie_name"] == "crack" and a["cls_name"] == "obj"
    assert a["orig_size"] == (20, 30)
    assert Path(a["img_path"]).is_absolute() and Path(a["img_path"]) == (root / "obj/test/crack/000.png").absolute()
    n = ds[3]
    assert n["label"] == 0 and not n["has_mask"] and n["mask"].sum() == 0 and n["specie_name"] == "good"
    # the item image is exactly preprocess() of the decoded file
    assert torch.equal(ds[4]["image"], preprocess(load_image(root / "obj/test/good/002.png"), 16))
    tr = AnomalyDataset(root, split="train", image_size=16)
    assert len(tr) == 1 and tr[0]["label"] == 0


def test_dataset_meta_errors(tmp_path: Path) -> None:
    root = make_set(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json"):
        AnomalyDataset(root, meta=bad)
    bad.write_text(json.dumps({"test": {"obj": [{"mask_path": ""}]}}))
    with pytest.raises(DataError, match=r"bad\.json.*img_path"):
        AnomalyDataset(root, meta=bad)
    bad.write_text(json.dumps({"test": {}}))
    with pytest.raises(DataError, match=r"bad\.json.*train"):
        AnomalyDataset(root, meta=bad, split="train")
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match=r"bad\.json"):
        AnomalyDataset(root, meta=bad)
    with pytest.raises(DataError, match=r"nothere\.json"):
        AnomalyDataset(root, meta=tmp_path / "nothere.json")
    with pytest.raises(DataError, match=r"classes \['zzz'\]"):
        AnomalyDataset(root, classes=["zzz"])
    with pytest.raises(DataError, match="not found"):
        AnomalyDataset(tmp_path / "no_root")


def test_mask_size_mismatch(tmp_path: Path) -> None:
    root = make_set(tmp_path)
    save(root / "obj/ground_truth/crack/001_mask.png", Image.fromarray(np.ones((21, 30), np.uint8)))
    ds = AnomalyDataset(root, image_size=16, on_error="raise")
    with pytest.raises(DataError, match=r"differs.*001_mask\.png"):
        ds[1]
    item = AnomalyDataset(root, image_size=16, on_error="skip")[1]
    assert item["skipped"] and "001_mask.png" in item["reason"]


def _break(root: Path) -> set:
    """Corrupt two images and one mask of make_set's tree; return the image paths expected to be skipped."""
    (root / "obj/test/good/001.png").write_bytes(b"")
    png = (root / "obj/test/good/002.png").read_bytes()
    (root / "obj/test/good/002.png").write_bytes(png[:40])
    (root / "obj/ground_truth/crack/000_mask.png").write_text("text")
    return {
        str((root / p).absolute())
        for p in ("obj/test/good/001.png", "obj/test/good/002.png", "obj/test/crack/000.png")
    }


def test_collate_counts_skipped(tmp_path: Path) -> None:
    root = make_set(tmp_path)
    expected = _break(root)
    ds = AnomalyDataset(root, image_size=16, on_error="skip")
    batch, skipped = collate([ds[i] for i in range(len(ds))])
    assert {p for p, _ in skipped} == expected
    assert batch["image"].shape == (2, 3, 16, 16) and batch["mask"].shape == (2, 1, 16, 16)
    assert batch["label"].tolist() == [1, 0] and batch["orig_size"].tolist() == [[20, 30], [20, 30]]
    assert batch["has_mask"].tolist() == [True, False]
    none, sk = collate([ds[3], ds[4]])
    assert none is None and len(sk) == 2
    with pytest.raises(DataError, match=r"001\.png"):
        AnomalyDataset(root, image_size=16, on_error="raise")[3]


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_skips_are_counted(tmp_path: Path, workers: int) -> None:
    root = make_set(tmp_path)
    expected = _break(root)
    ds = AnomalyDataset(root, image_size=16, on_error="skip")
    loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate)
    tally = SkippedFiles()
    seen = []
    for batch, skipped in loader:
        tally.add(skipped)
        if batch is not None:
            seen += batch["img_path"]
    assert len(tally) == 3 and {p for p, _ in tally} == expected
    assert len(seen) == 2 and not set(seen) & expected
    assert "skipped 3 file(s)" in tally.summary()
    out = tally.write(tmp_path / "skipped.json")
    assert {d["img_path"] for d in json.loads(out.read_text())} == expected


def test_mask_threshold(tmp_path: Path) -> None:
    m = np.array([[0, 3, 200]], np.uint8)  # 3: JPEG-like edge noise
    p = save(tmp_path / "m.png", Image.fromarray(m))
    assert load_mask(p).tolist() == [[False, True, True]]
    assert load_mask(p, threshold=127).tolist() == [[False, False, True]]
