"""One overlay for `wmoe predict` and `wmoe-camera --overlays` (wmoe.overlay.overlay_panel): the same picture from
both, a fixed colour scale (a good part is not painted red because its map was rescaled), and the pixel threshold
drawn (changing it changes the picture)."""
import json

import numpy as np
from PIL import Image

from wmoe.overlay import JET_LUT, overlay_panel
from wmoe.runtime.camera import main as camera_main


def _frames(folder, n=2, hw=(96, 128)):
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return sorted(folder.glob("*.png"))


def _read(p):
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


def test_predict_and_camera_write_the_same_picture(tiny_onnx, tmp_path, capsys):
    from wmoe.predict import predict
    ckpt, onnx_path = tiny_onnx  # exported with threshold 0.25, pixel threshold 0.5
    files = _frames(tmp_path / "in")
    doc = predict(ckpt, [tmp_path / "in"], tmp_path / "pred", threshold=0.25, pixel_threshold=0.5, progress=False)
    assert camera_main(["--source", str(tmp_path / "in"), "--model", str(onnx_path), "--overlays",
                        str(tmp_path / "cam"), "--report-every", "0"]) == 0
    capsys.readouterr()
    for f, rec in zip(files, doc["results"]):
        want = _read(tmp_path / "pred" / rec["overlay"])
        got = _read(next((tmp_path / "cam").glob(f"{f.stem}_*.png")))
        assert got.shape == want.shape  # image | heatmap | colour bar under a two-line banner, both
        diff = np.abs(got.astype(int) - want.astype(int)).max(axis=2)
        # torch (predict) and ONNX Runtime (camera) maps differ by float rounding: the banner's last digits and a
        # few contour pixels may move, nothing else
        assert (diff > 24).mean() < 0.01, (f.name, (diff > 24).mean())
        assert np.array_equal(got[2, 2], want[2, 2])  # the same verdict colour


def test_fixed_scale_colour_bar_and_pixel_threshold_change_the_picture():
    img = np.full((64, 80, 3), 128, np.uint8)
    yy, xx = np.mgrid[0:64, 0:80]
    amap = (0.1 + 0.6 * np.exp(-((yy - 30) ** 2 + (xx - 40) ** 2) / 200.0)).astype(np.float32)
    lo = overlay_panel(img, amap * 0.2, 0.1, 0.5, pixel_threshold=0.4)
    hi = overlay_panel(img, amap, 0.9, 0.5, pixel_threshold=0.4)
    heat = np.s_[40 + 5:40 + 10, 80 + 4 + 2:80 + 4 + 8]  # a corner of the heatmap panel, map 0.02 / 0.1 there
    blue = (0.5 * 128 + 0.5 * JET_LUT[int(0.02 * 255)].astype(float))
    assert np.abs(lo[heat].astype(float) - blue).max() <= 2  # fixed scale: low maps stay blue, not rescaled to red
    assert not np.array_equal(lo[heat], hi[heat])
    bar = hi[40:, 2 * 80 + 8:2 * 80 + 8 + 14]
    assert tuple(bar[0, 7]) == tuple(JET_LUT[255]) and tuple(bar[-1, 7]) == tuple(JET_LUT[0])  # the colour bar
    assert (hi[40:, 84:164] == 255).all(axis=2).sum() > 20  # the white defect contour at map >= 0.4
    no_px = overlay_panel(img, amap, 0.9, 0.5)
    other_px = overlay_panel(img, amap, 0.9, 0.5, pixel_threshold=0.6)
    assert (no_px[40:, 84:164] == 255).all(axis=2).sum() == 0
    assert not np.array_equal(other_px, hi) and not np.array_equal(no_px, hi)


def test_camera_pixel_threshold_changes_the_overlay(tiny_onnx, tmp_path, capsys):
    _frames(tmp_path / "in", n=1)
    pics = []
    for px in ("0.3", "0.6"):
        out = tmp_path / f"o{px}"
        assert camera_main(["--source", str(tmp_path / "in"), "--model", str(tiny_onnx[1]), "--overlays", str(out),
                            "--pixel-threshold", px, "--report-every", "0"]) == 0
        pics.append(_read(next(out.glob("*.png"))))
    capsys.readouterr()
    assert not np.array_equal(pics[0], pics[1])



def test_banner_fits_a_small_image_and_keeps_the_pixel_thresholds_digits():
    """A 96 px crop: the banner's first line (verdict, score and threshold) and second line fit the picture's width
    (they ran off its right edge, cutting the threshold); a pixel threshold of 0.99988 is not printed as '1'."""
    img = np.full((96, 96, 3), 128, np.uint8)
    amap = np.full((96, 96), 0.2, np.float32)
    pic = overlay_panel(img, amap, 1.2092, 1.0, pixel_threshold=0.999879, label="000.png  class brick")
    # the banner's right margin is clear of text (white on red): nothing ran off the edge
    margin = pic[:40, -4:].astype(int)
    assert (np.abs(margin - margin[0, 0]).max(axis=2) < 40).all()
    from PIL import Image, ImageDraw

    from wmoe.overlay import banner_fonts, banner_lines
    width = pic.shape[1]
    lines = banner_lines(1.2092, 1.0, 0.999879, amap >= 0.999879, "000.png  class brick")
    assert ">= 1.0000" in lines[0] and "map >= 0.999879:" in lines[1]
    assert "map >= 0.999972:" in banner_lines(1.0, 1.0, 0.999972, amap >= 0.999972)[1]  # not 'map >= 1'
    assert "map >= 0.5:" in banner_lines(1.0, 1.0, 0.5, amap >= 0.5)[1]
    draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    for line, font in zip(lines, banner_fonts(lines, width)):
        assert draw.textlength(line, font=font) <= width - 12, (line, width)  # x = 6 and a 6 px margin
    # a large picture keeps the full-size fonts
    big = banner_lines(1.2, 1.0, 0.5, amap >= 0.5, "x.png")
    assert [f.size for f in banner_fonts(big, 600)] == [15, 12]
