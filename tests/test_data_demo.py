"""The embedded demo set: determinism, exact masks, MVTec layout."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wmoe.data import (
    DEFECT_TYPES,
    DEMO_CATEGORIES,
    DEMO_TEST_CLASSES,
    DEMO_TRAIN_CLASSES,
    AnomalyDataset,
    build_meta,
    make_defect,
    make_demo_dataset,
)
from wmoe.data.demo import _augment, _source_image

SMALL = dict(image_size=64, n_train_good=2, n_test_good=2, n_test_defect=4)


def tree_hash(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "d", seed=0, **SMALL)


def test_same_seed_same_bytes_other_seed_differs(demo: Path, tmp_path: Path) -> None:
    again = make_demo_dataset(tmp_path / "again", seed=0, **SMALL)
    h0, h1 = tree_hash(demo), tree_hash(again)
    assert h0 == h1 and len(h0) > 6 * 8
    other = tree_hash(make_demo_dataset(tmp_path / "other", seed=1, **SMALL))
    assert set(other) == set(h0)  # same layout ...
    images = [k for k in h0 if k.endswith(".png")]
    assert all(other[k] != h0[k] for k in images)  # ... different pixels everywhere


def test_layout_and_masks(demo: Path) -> None:
    meta = build_meta(demo, "mvtec")
    assert json.loads((demo / "meta.json").read_text()) == meta
    assert sorted(meta["test"]) == sorted(DEMO_CATEGORIES) and len(DEMO_CATEGORIES) >= 5
    for cls, entries in meta["test"].items():
        assert len(entries) == 6
        species = {e["specie_name"] for e in entries}
        assert species == {"good", *DEFECT_TYPES}
        for e in entries:
            img = np.asarray(Image.open(demo / e["img_path"]))
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8
            if e["anomaly"]:
                m = np.asarray(Image.open(demo / e["mask_path"]))
                assert m.shape == (64, 64) and set(np.unique(m)) == {0, 255}
                assert e["mask_path"].endswith("_mask.png")
            else:
                assert e["mask_path"] == "" and e["specie_name"] == "good"
    assert not list(demo.glob("*/ground_truth/good"))
    assert all(len(v) == 2 for v in meta["train"].values())


def test_class_split() -> None:
    assert set(DEMO_TRAIN_CLASSES).isdisjoint(DEMO_TEST_CLASSES)
    assert set(DEMO_TRAIN_CLASSES) | set(DEMO_TEST_CLASSES) <= set(DEMO_CATEGORIES)
    assert DEMO_TRAIN_CLASSES and DEMO_TEST_CLASSES


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defect_mask_is_exactly_the_changed_pixels(kind: str) -> None:
    for cat in ("coins", "cell"):  # dark flat backgrounds: where a naive hole or patch changes nothing
        src = _source_image(cat)
        for s in range(8):
            rng = np.random.default_rng(s)
            img = _augment(src, 64, rng)
            out, mask = make_defect(img, kind, rng, donor=_augment(src, 64, rng))
            assert mask.any()
            assert np.array_equal(mask, (out != img).any(axis=2))


def test_dataset_over_demo_and_rerun(demo: Path, tmp_path: Path) -> None:
    ds = AnomalyDataset(demo, classes=list(DEMO_TEST_CLASSES), image_size=32, on_error="raise")
    assert len(ds) == 3 * 6
    items = [ds[i] for i in range(len(ds))]
    for it in items:
        assert (it["mask"].sum() > 0) == bool(it["label"])
    # rerunning into an existing demo folder replaces it; a foreign non-empty folder is refused
    out = make_demo_dataset(tmp_path / "x", seed=3, categories=["brick"], **SMALL)
    make_demo_dataset(out, seed=3, categories=["brick"], **SMALL)
    assert sorted(p.name for p in out.iterdir()) == ["brick", "demo_info.json", "meta.json"]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        make_demo_dataset(tmp_path / "foreign", **SMALL)
    assert (tmp_path / "foreign" / "keep.txt").read_text() == "mine"
