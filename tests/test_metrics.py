"""Each metric against a direct, slow implementation of its definition on small crafted and random cases."""
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.ndimage import gaussian_filter
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from wmoe.evaluation.metrics import MetricsTable, evaluate_class, image_metrics, pixel_metrics, smooth_maps


def test_image_auroc_hand_computed_with_ties():
    # pos 0.9, 0.5, 0.3 ; neg 0.5, 0.2, 0.1 -> pairs won: 3 + (2 + 0.5 tie) + 2 = 7.5 of 9
    m = image_metrics([1, 1, 1, 0, 0, 0], [0.9, 0.5, 0.3, 0.5, 0.2, 0.1])
    assert m["auroc"] == pytest.approx(7.5 / 9)


def test_image_ap_and_f1max_vs_definitions():
    rng = np.random.default_rng()
    y = rng.integers(0, 2, 200)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=200) + y, 1)  # rounding makes ties
    m = image_metrics(y, s)
    assert m["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    best, best_t = -1.0, None
    for t in np.unique(s):  # brute force: predict anomalous when score >= t
        pred = s >= t
        tp = (pred & (y == 1)).sum(); fp = (pred & (y == 0)).sum(); fn = (~pred & (y == 1)).sum()
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best:
            best, best_t = f1, t
    assert m["f1_max"] == pytest.approx(best, abs=1e-12)
    assert m["threshold"] == pytest.approx(best_t)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_single_label_class_is_nan_with_warning(labels):
    with pytest.warns(RuntimeWarning, match="only"):
        m = image_metrics(labels, [0.1, 0.2, 0.3])
    assert all(math.isnan(v) for v in m.values())


def _blobs(rng, n=4, size=24):
    masks = np.zeros((n, size, size), bool)
    for i in range(n - 1):  # last image stays normal
        for _ in range(rng.integers(1, 3)):
            r, c = rng.integers(2, size - 6, 2)
            h, w = rng.integers(1, 5, 2)
            masks[i, r:r + h, c:c + w] = True
    masks[0, 0, 0] = masks[0, 1, 1] = True  # a diagonal pair: one region under 8-connectivity
    return masks


def _slow_pro_curve(masks, maps, th):
    """Definition: for threshold th, mean over all GT regions of the covered fraction, and the FPR."""
    pred = maps >= th
    overlaps = []
    for m, p in zip(masks, pred):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        for r in range(1, n + 1):
            overlaps.append(p[lab == r].mean())
    fpr = (pred & ~masks).sum() / (~masks).sum()
    return float(np.mean(overlaps)), float(fpr)


def test_pixel_auroc_ap_vs_sklearn():
    rng = np.random.default_rng()
    masks = _blobs(rng)
    maps = (rng.random(masks.shape) + masks * 0.5).astype(np.float32)
    m = pixel_metrics(masks, maps)
    assert m["auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert m["ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-9)


def test_pro_exact_vs_definition():
    rng = np.random.default_rng()
    masks = _blobs(rng, n=3, size=16)
    maps = np.round(rng.random(masks.shape) + masks * 0.4, 2).astype(np.float32)
    pts = [(0.0, 0.0)]
    for th in np.unique(maps)[::-1]:
        p, f = _slow_pro_curve(masks, maps, th)
        pts.append((f, p))
    f = np.array([a for a, _ in pts]); p = np.array([b for _, b in pts])
    # integrate to 0.3 with interpolation at the limit
    j = np.searchsorted(f, 0.3, side="right")
    fi = np.r_[f[:j], 0.3]; pi = np.r_[p[:j], np.interp(0.3, f, p)]
    expected = np.trapezoid(pi, fi) / 0.3 if hasattr(np, "trapezoid") else np.trapz(pi, fi) / 0.3
    assert pixel_metrics(masks, maps)["pro"] == pytest.approx(expected, abs=1e-9)


def test_pro_binned_vs_anomalyclip_definition():
    rng = np.random.default_rng()
    masks = _blobs(rng, n=3, size=16)
    maps = (rng.random(masks.shape) + masks * 0.4).astype(np.float32)
    lo, hi = maps.min(), maps.max()
    pros, fprs = [], []
    for th in np.arange(lo, hi, (hi - lo) / 200):
        p, f = _slow_pro_curve(masks, maps, np.nextafter(np.float32(th), np.float32(np.inf)))  # AnomalyCLIP: > th
        pros.append(p); fprs.append(f)
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < 0.3
    f = fprs[keep]; f = (f - f.min()) / (f.max() - f.min())
    expected = auc(f, pros[keep])
    assert pixel_metrics(masks, maps)["pro_binned"] == pytest.approx(expected, abs=1e-6)


def test_perfect_and_no_anomaly_pixels():
    masks = np.zeros((2, 8, 8), bool); masks[0, 2:4, 2:4] = True
    m = pixel_metrics(masks, masks.astype(np.float32))
    assert m["auroc"] == pytest.approx(1.0) and m["ap"] == pytest.approx(1.0) and m["pro"] == pytest.approx(1.0)
    with pytest.warns(RuntimeWarning, match="no anomalous pixels"):
        m = pixel_metrics(np.zeros((2, 8, 8), bool), np.random.rand(2, 8, 8))
    assert math.isnan(m["auroc"]) and math.isnan(m["pro"])


def test_smoothing_matches_scipy_per_map():
    maps = np.random.default_rng().random((3, 20, 17)).astype(np.float32)
    out = smooth_maps(maps, sigma=4)
    for a, b in zip(out, maps):
        np.testing.assert_allclose(a, gaussian_filter(b, sigma=4), rtol=1e-6, atol=1e-6)


def test_table_markdown_json_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    t = MetricsTable(extra={"skipped": 1})
    masks = _blobs(rng)
    maps = rng.random(masks.shape).astype(np.float32) + masks
    t.add_row("a", evaluate_class([1, 1, 1, 0], maps.max(axis=(1, 2)), masks, maps), n_images=4, n_anomalous=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.add_row("b", evaluate_class([0, 0], [0.1, 0.2]), n_images=2)
    mean = t.mean()
    assert mean.image_auroc == pytest.approx(t.rows[0].image_auroc)  # NaN row excluded
    md = t.to_markdown()
    assert "| **mean** |" in md and "–" in md and f"{100 * t.rows[0].pixel_auroc:.1f}" in md
    back = MetricsTable.from_json(t.to_json())
    assert back.rows[0] == t.rows[0] and back.extra == {"skipped": 1}
    paths = t.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.json", "metrics.md"]
    assert paths["csv"].read_text().splitlines()[0].startswith("name,n_images")


def test_metrics_benchmark_script_runs(tmp_path):
    from wmoe.bench.bench_metrics import main
    assert main(["--n", "6", "--size", "48", "--classes", "2", "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    assert "| **total (wall clock)** |" in text and "6 maps of 48x48" in text
    assert main(["--n", "6", "--size", "48", "--classes", "2", "--threads", "2"]) == 0
