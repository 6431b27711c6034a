"""``wmoe app`` in a real headless browser: Debian's chromium driven through /usr/bin/chromedriver by Selenium.

One app process (a checkpoint, as ``wmoe predict`` scores it) and one browser serve the module. The page's score,
verdict and overlay picture are compared with ``wmoe predict`` on the same image; the threshold slider must flip
the verdict with no new model run (the server counts them); bad uploads must end as messages on the page while the
server keeps serving. A screenshot of the page is kept (its path is printed).

Skipped, with the reason, only where chromium / chromedriver / selenium are not installed (``make test`` installs
them: apt-get chromium chromium-driver; selenium is in the dev extra). Nothing downloads a browser: the driver is
the system one, given by path, with Selenium Manager off.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_server import AppProcess

CHROMIUM = os.environ.get("WMOE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("WMOE_CHROMEDRIVER", "/usr/bin/chromedriver")
THRESHOLD, PIXEL_THRESHOLD = 1.0, 0.6
CLASS_THRESHOLDS = {"brick": 5.0, "cell": 0.5}  # per product (wmoe calibrate on a set with classes)
UPLOAD_LIMIT_MB = 1.0

pytestmark = pytest.mark.xdist_group("app_browser")


def _missing() -> str:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        return (f"{', '.join(missing)} not installed (Debian: apt-get install chromium chromium-driver; "
                f"`make test` does it when it can)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium; it is in wmoe's dev extra)"
    return ""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny checkpoint with a stored decision and the demo set (two classes, small images)."""
    import torch

    from wmoe.model.checkpoint import save_checkpoint
    from wmoe.model.config import ModelConfig
    from wmoe.contract import Decision, threshold_path
    from wmoe.data import make_demo_dataset
    from wmoe.model.wmoe_clip import WMoECLIP

    d = tmp_path_factory.mktemp("app")
    torch.manual_seed(3)
    ckpt = save_checkpoint(WMoECLIP(ModelConfig.tiny(image_size=112)).eval(), d / "model.safetensors")
    threshold_path(ckpt).write_text(Decision(THRESHOLD, PIXEL_THRESHOLD, class_thresholds=CLASS_THRESHOLDS).to_json())
    root = make_demo_dataset(d / "demo", image_size=96, n_train_good=0, n_test_good=1, n_test_defect=2,
                             categories=("brick", "cell"))
    meta = json.loads((root / "meta.json").read_text())["test"]
    defect = next(e["img_path"] for e in meta["brick"] if e["anomaly"])
    return {"dir": d, "ckpt": ckpt, "root": root, "defect": root / defect, "defect_rel": defect}


@pytest.fixture(scope="module")
def app(workdir):
    """The app process; it starts while the other fixtures work (its URL waits for it on first use)."""
    proc = AppProcess([workdir["ckpt"], "--demo", workdir["root"], "--max-upload-mb", str(UPLOAD_LIMIT_MB)])
    yield proc
    assert proc.stop() == 0, "".join(proc.stderr)[-3000:]  # SIGTERM ends it cleanly
    assert "Traceback" not in "".join(proc.stderr), "".join(proc.stderr)[-3000:]


@pytest.fixture(scope="module")
def predicted(app, workdir):
    """``wmoe predict`` on the defect image (the same checkpoint and stored decision): its score and overlay."""
    from wmoe.cli.commands import main

    out = workdir["dir"] / "pred"
    assert main(["predict", str(workdir["ckpt"]), str(workdir["defect"]), "--out", str(out)]) == 0
    rec = json.loads((out / "scores.json").read_text())["results"][0]
    return {**rec, "overlay_path": out / rec["overlay"]}


@pytest.fixture(scope="module")
def browser():
    reason = _missing()
    if reason:
        pytest.skip(reason)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
              "--disable-gpu", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, cond, what: str, timeout: float = 90.0):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: cond(d), message=what)


def _by_id(driver, name):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, name)


def _idle(driver) -> bool:
    body = driver.find_element("tag name", "body")
    return body.get_attribute("data-busy") == "0"


def _open(driver, app) -> None:
    driver.get(app.url)
    _wait(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "1", "page ready")


def _upload(driver, *paths: Path) -> None:
    _by_id(driver, "file-input").send_keys("\n".join(str(p) for p in paths))


def _rows(driver):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, "#gallery tbody tr")


def _wait_result(driver, n_rows: int) -> None:
    _wait(driver, lambda d: len(_rows(d)) == n_rows and _idle(d)
          and _by_id(d, "overlay").get_attribute("data-loaded") == "1", f"{n_rows} results shown")


def _messages(driver):
    from selenium.webdriver.common.by import By
    return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#messages li")]


def test_upload_shows_predicts_score_verdict_and_picture(app, predicted, browser, workdir, tmp_path_factory):
    before = app.stats()
    _open(browser, app)
    t = time.perf_counter()
    _upload(browser, workdir["defect"])
    _wait_result(browser, 1)
    elapsed = time.perf_counter() - t
    pred = predicted
    score_el = _by_id(browser, "score")
    page_score = float(score_el.get_attribute("data-score"))
    assert page_score == pytest.approx(pred["score"], abs=1e-6)  # the same Detector call as wmoe predict
    assert f"{pred['score']:.4f}" in score_el.text and f"{THRESHOLD:.4f}" in score_el.text
    verdict = _by_id(browser, "verdict")
    assert verdict.get_attribute("data-verdict") == ("anomalous" if pred["anomalous"] else "normal")
    assert verdict.text in ("ANOMALOUS", "NORMAL")
    assert "%" in _by_id(browser, "area").text  # the stored pixel threshold gives a defect area
    assert "model" in _by_id(browser, "latency").text and "ms" in _by_id(browser, "latency").text
    # the picture the browser shows is wmoe predict's overlay of that image, pixel for pixel
    src = _by_id(browser, "overlay").get_attribute("data-src")
    status, png = app.get(src)
    assert status == 200
    shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    np.testing.assert_array_equal(shown, np.asarray(Image.open(predicted["overlay_path"]).convert("RGB")))
    assert browser.execute_script("return document.getElementById('overlay').naturalWidth") == shown.shape[1]
    after = app.stats()
    assert after["scored"] - before["scored"] == 1
    shot = tmp_path_factory.getbasetemp() / "wmoe_app_page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    keep = os.environ.get("WMOE_APP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    print(f"\nscreenshot of the page: {shot} (upload to verdict in the browser: {elapsed:.2f} s)")


def _drop(browser, files) -> None:
    """Drop ``files`` (paths) on the drop zone: real Files in a real DataTransfer, through the page's handler."""
    import base64

    browser.execute_script("""
        const dt = new DataTransfer();
        for (const [b64, name] of arguments[0]) {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            dt.items.add(new File([bytes], name, {type: "image/png"}));
        }
        document.getElementById("drop-zone").dispatchEvent(
            new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    """, [[base64.b64encode(Path(f).read_bytes()).decode(), Path(f).name] for f in files])


def test_dropped_files_one_and_several_at_once(app, predicted, browser, workdir):
    _open(browser, app)
    _drop(browser, [workdir["defect"]])
    _wait_result(browser, 1)
    assert _by_id(browser, "image-name").text == workdir["defect"].name
    assert float(_by_id(browser, "score").get_attribute("data-score")) == pytest.approx(predicted["score"], abs=1e-6)
    good = sorted((workdir["root"] / "brick" / "test" / "good").glob("*.png"))[0]
    _drop(browser, [good, workdir["defect"]])  # two files in one drop: scored one after the other
    _wait_result(browser, 3)
    names = [r.find_element("tag name", "td").text for r in _rows(browser)]
    assert names == [workdir["defect"].name, good.name, workdir["defect"].name]  # newest first


def test_threshold_slider_redecides_without_rescoring(app, predicted, browser, workdir):
    from selenium.webdriver.common.keys import Keys

    _open(browser, app)
    _upload(browser, workdir["defect"])
    _wait_result(browser, 1)
    before = app.stats()
    slider = _by_id(browser, "threshold")
    slider.click()
    slider.send_keys(Keys.END)  # highest threshold: above every score shown -> normal
    _wait(browser, lambda d: _by_id(d, "verdict").get_attribute("data-verdict") == "normal" and _idle(d),
          "verdict normal at the top of the slider")
    top = float(_by_id(browser, "score").get_attribute("data-threshold"))
    assert top > predicted["score"]
    assert "NORMAL" in _by_id(browser, "verdict").text
    slider.send_keys(Keys.HOME)  # lowest: below every score -> anomalous
    _wait(browser, lambda d: _by_id(d, "verdict").get_attribute("data-verdict") == "anomalous" and _idle(d)
          and _by_id(d, "overlay").get_attribute("data-loaded") == "1", "verdict anomalous at the bottom")
    low = float(_by_id(browser, "score").get_attribute("data-threshold"))
    assert low < predicted["score"] < top
    assert f"threshold={low}" in urllib.parse.unquote(_by_id(browser, "overlay").get_attribute("data-src"))
    assert _rows(browser)[0].get_attribute("data-verdict") == "anomalous"
    after = app.stats()
    assert after["scored"] == before["scored"], (before, after)  # re-decided from the cache: no model run
    assert after["decided"] - before["decided"] >= 2 and after["rendered"] - before["rendered"] >= 2


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(app, predicted, browser, workdir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.png").write_text("this is not an image\n")
    (bad / "empty.png").write_bytes(b"")
    good = workdir["defect"].read_bytes()
    (bad / "cut.png").write_bytes(good[: len(good) // 2])
    (bad / "big.png").write_bytes(os.urandom(int(UPLOAD_LIMIT_MB * 1e6) + 1000))
    Image.new("1", (9000, 8000)).save(bad / "huge.png")  # 72 MP: above the 64 MP limit, refused before decoding
    deep = (np.arange(96 * 96, dtype=np.uint16).reshape(96, 96) * 7)
    Image.fromarray(deep).save(bad / "deep16.png")  # uint16 -> mode I;16, a 16-bit PNG
    before = app.stats()
    _open(browser, app)
    expected = {"notes.png": "not a readable image", "empty.png": "empty", "cut.png": "truncated or corrupt",
                "big.png": "above the upload limit", "huge.png": "above the"}
    for name, phrase in expected.items():
        _upload(browser, bad / name)
        _wait(browser, lambda d: any(name in m and phrase in m for m in _messages(d)) and _idle(d),
              f"a message for {name}")
    msgs = _messages(browser)
    assert not any("Traceback" in m or "internal error" in m for m in msgs), msgs
    # a 16-bit image is scored (as wmoe predict reads it) with a note saying so
    _upload(browser, bad / "deep16.png")
    _wait_result(browser, 1)
    assert any("deep16.png" in m and "16-bit" in m for m in _messages(browser))
    # still serving: a good image after all that
    _upload(browser, workdir["defect"])
    _wait_result(browser, 2)
    assert float(_by_id(browser, "score").get_attribute("data-score")) == pytest.approx(predicted["score"],
                                                                                        abs=1e-6)
    after = app.stats()
    assert after["scored"] - before["scored"] == 2
    assert after["rejected"] - before["rejected"] == 4  # big.png never left the browser (checked on the page)
    assert after["failed"] == 0 and app.proc.poll() is None


def test_demo_picker_and_the_class_selector(app, predicted, browser, workdir):
    from selenium.webdriver.support.ui import Select

    _open(browser, app)
    # the stored pixel threshold to 4 decimals, as the score and threshold (a calibrated 0.99988 read 'pixel 1.000')
    assert f"pixel {PIXEL_THRESHOLD:.4f}" in _by_id(browser, "model").text
    assert _by_id(browser, "pixel-threshold-note").text.endswith(f"{PIXEL_THRESHOLD:.4f}")
    assert not _by_id(browser, "demo-box").get_attribute("hidden")
    assert not _by_id(browser, "class-row").get_attribute("hidden")  # the model has per-class thresholds
    classes = Select(_by_id(browser, "class-select"))
    assert [o.get_attribute("value") for o in classes.options] == ["", "brick", "cell"]
    pick = Select(_by_id(browser, "demo-select"))
    assert {o.get_attribute("value") for o in pick.options} >= {workdir["defect_rel"]}
    pick.select_by_value(workdir["defect_rel"])
    _by_id(browser, "demo-score").click()
    _wait_result(browser, 1)
    name = _by_id(browser, "image-name").text
    assert workdir["defect_rel"] in name and "[brick]" in name
    assert float(_by_id(browser, "score").get_attribute("data-score")) == pytest.approx(predicted["score"], abs=1e-6)
    # a brick image is judged by brick's own threshold (picked with the image), which passes this score
    assert classes.first_selected_option.get_attribute("value") == "brick"
    assert float(_by_id(browser, "score").get_attribute("data-threshold")) == CLASS_THRESHOLDS["brick"]
    assert _by_id(browser, "verdict").get_attribute("data-verdict") == "normal"
    before = app.stats()
    classes.select_by_value("cell")
    _wait(browser, lambda d: _by_id(d, "verdict").get_attribute("data-verdict") == "anomalous" and _idle(d),
          "cell's threshold flags it")
    assert float(_by_id(browser, "score").get_attribute("data-threshold")) == CLASS_THRESHOLDS["cell"]
    assert float(_by_id(browser, "threshold-number").get_attribute("value")) == CLASS_THRESHOLDS["cell"]
    classes.select_by_value("")
    _wait(browser, lambda d: float(_by_id(d, "score").get_attribute("data-threshold")) == THRESHOLD and _idle(d)
          and _by_id(d, "verdict").get_attribute("data-verdict") == "anomalous", "back to the global threshold")
    assert app.stats()["scored"] == before["scored"]
