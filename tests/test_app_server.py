"""``wmoe app``'s server without a browser: an exported ONNX through the torch-free runtime, scored over HTTP exactly
as :class:`wmoe.runtime.Runtime` scores it; thresholds re-decided from the cache; every bad request answered with
one line while the server keeps serving. (The page itself is tested in a real browser: test_app_browser.py.)"""
from __future__ import annotations

import http.client
import io
import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from wmoe.app import AppService, open_scorer
from wmoe.app.demo_set import DemoSet
from wmoe.app.server import make_server
from wmoe.app.service import AppConfig
from wmoe.image_io import load_image
from wmoe.overlay import fit_size


@pytest.fixture(scope="module")
def served(tiny_onnx, tmp_path_factory):
    from wmoe.data import make_demo_dataset

    d = tmp_path_factory.mktemp("app_server")
    root = make_demo_dataset(d / "demo", image_size=64, n_train_good=0, n_test_good=1, n_test_defect=1,
                             categories=("brick",))
    svc = AppService(open_scorer(tiny_onnx[1]), DemoSet(root), AppConfig(max_upload_bytes=200_000, cache_entries=3))
    server = make_server(svc, port=0)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield {"server": server, "svc": svc, "root": root, "onnx": tiny_onnx[1], "url": server.url}
    server.shutdown()
    server.server_close()


def _req(served, method, path, body=None, headers=None):
    req = urllib.request.Request(served["url"] + path.lstrip("/"), data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            data, status, ctype = r.read(), r.status, r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        data, status, ctype = e.read(), e.code, e.headers.get("Content-Type")
    return status, (json.loads(data) if ctype == "application/json" else data)


def _demo(served, label):
    meta = json.loads((served["root"] / "meta.json").read_text())["test"]["brick"]
    return next(e["img_path"] for e in meta if (e["anomaly"] == 1) == (label == "defect"))


def test_exported_model_scores_over_http_as_the_runtime_does(served):
    from wmoe.runtime import Runtime

    rel = _demo(served, "defect")
    data = (served["root"] / rel).read_bytes()
    before = served["svc"].stats()
    status, doc = _req(served, "POST", "/api/score?name=" + urllib.parse.quote("part 1.png"), data)
    assert status == 200, doc
    r = doc["result"]
    img = load_image(served["root"] / rel)
    want = Runtime.open(served["onnx"]).score([img])
    assert r["score"] == float(want.scores[0]) and r["verdict"] == want.verdicts[0]
    assert r["name"] == "part 1.png" and (r["height"], r["width"]) == img.shape[:2]
    mask = want.mask_at(0, fit_size(*img.shape[:2], 512))  # tiny_onnx stores pixel threshold 0.5
    assert r["defect_area"] == pytest.approx(float(mask.mean()))
    assert r["threshold"] == 0.25 and r["pixel_threshold"] == 0.5  # the decision stored in the ONNX
    # re-decide at thresholds around the score: the verdict flips, the model does not run again
    for thr, verdict in ((r["score"] + 0.01, "normal"), (r["score"] - 0.01, "anomalous")):
        status, d2 = _req(served, "POST", "/api/decide", json.dumps({"ids": [r["id"]], "threshold": thr,
                                                                       "pixel_threshold": 1.0}).encode())
        assert status == 200 and d2["results"][0]["verdict"] == verdict and d2["results"][0]["defect_area"] == 0.0
    status, png = _req(served, "GET", f"/api/overlay?id={r['id']}&threshold={r['score'] + 0.01}")
    assert status == 200 and Image.open(io.BytesIO(png)).format == "PNG"
    after = served["svc"].stats()
    assert after["scored"] - before["scored"] == 1 and after["decided"] - before["decided"] == 2
    assert after["rendered"] - before["rendered"] == 1
    # the demo picker: listed images by path, scored the same as their bytes
    status, listing = _req(served, "GET", "/api/demo")
    assert rel in [im["path"] for im in listing["images"]]
    status, d3 = _req(served, "POST", "/api/score?demo=" + urllib.parse.quote(rel))
    assert status == 200 and d3["result"]["score"] == r["score"] and d3["result"]["cls"] == "brick"


def _raw(served, method, path, headers, body=b""):
    """http.client, for requests urllib would not send (a wrong Host, chunked, a lying Content-Length)."""
    host, port = served["server"].server_address[:2]
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
    for k, v in headers.items():
        c.putheader(k, v)
    c.endheaders()
    if body:
        try:
            c.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


def test_bad_requests_get_one_line_and_the_server_keeps_serving(served, monkeypatch):
    svc = served["svc"]
    before = svc.stats()
    big = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    cases = [
        (_raw(served, "POST", "/api/score?name=big.png", {"Content-Length": str(len(big))}, big),
         413, "big.png: 0.3 MB is above the upload limit of 0.2 MB"),
        (_raw(served, "POST", "/api/score?name=c.png", {"Transfer-Encoding": "chunked"}), 411, "Content-Length"),
        (_raw(served, "GET", "/api/info", {"Host": "attacker.example:80"}), 403, "not this app's address"),
        (_req(served, "POST", "/api/score?name=t.png", b"GIF89a not really"), 400, "not an image): t.png"),
        (_req(served, "POST", "/api/score?name=e.png", b""), 400, "empty (0 bytes): e.png"),
        (_req(served, "POST", "/api/score?demo=" + urllib.parse.quote("../../../etc/passwd")), 400,
         "not an image of the demo set"),
        (_req(served, "GET", "/api/overlay?id=r999"), 404, "no longer kept"),
        (_req(served, "POST", "/api/decide", b"{not json"), 400, "not valid JSON"),
        (_req(served, "POST", "/api/decide", json.dumps({"ids": [], "threshold": "nan"}).encode()), 400,
         "threshold must be finite"),
        (_req(served, "POST", "/api/decide", json.dumps({"ids": [], "cls": "gizmo"}).encode()), 400,
         "class 'gizmo' has no threshold of its own"),
        (_req(served, "GET", "/etc/passwd"), 404, "no such page"),
    ]
    for (status, doc), want_status, phrase in cases:
        assert status == want_status and phrase in doc["error"], (status, doc, phrase)
        assert "\n" not in doc["error"] and "Traceback" not in doc["error"]
    # a bug inside scoring: a 500 with one line (the traceback goes to the log), and the next request works
    monkeypatch.setattr(svc.scorer, "_score", lambda image, max_side: 1 / 0)
    data = (served["root"] / _demo(served, "good")).read_bytes()
    status, doc = _req(served, "POST", "/api/score?name=g.png", data)
    assert status == 500 and doc["error"].startswith("internal error (ZeroDivisionError")
    monkeypatch.undo()
    ids = []
    for i in range(4):  # the cache keeps 3: the first result is gone, and decide says so
        status, doc = _req(served, "POST", f"/api/score?name=g{i}.png", data)
        assert status == 200, doc
        ids.append(doc["result"]["id"])
    status, doc = _req(served, "POST", "/api/decide", json.dumps({"ids": ids, "threshold": 0}).encode())
    assert status == 200 and doc["missing"] == ids[:1] and len(doc["results"]) == 3
    after = svc.stats()
    assert after["rejected"] - before["rejected"] == len(cases) and after["failed"] - before["failed"] == 1
    assert after["scored"] - before["scored"] == 4 and after["cached"] == 3


def test_page_and_static_files_are_served(served):
    status, html = _req(served, "GET", "/")
    assert status == 200 and b'<script src="/static/app.js">' in html and b'id="file-input"' in html
    for name in ("app.js", "app.css"):
        status, body = _req(served, "GET", f"/static/{name}")
        assert status == 200 and len(body) > 500
    status, info = _req(served, "GET", "/api/info")
    assert info["kind"] == "onnx" and info["threshold"] == 0.25 and info["demo"] is True


def test_cli_refuses_a_missing_model_and_a_demo_folder_without_meta(tmp_path, tiny_onnx, capsys):
    from wmoe.cli.commands import main

    with pytest.raises(SystemExit) as e:  # checked while parsing, before anything loads
        main(["app", str(tmp_path / "nope.onnx")])
    assert e.value.code == 2 and "nope.onnx: no such file" in capsys.readouterr().err
    assert main(["app", str(tiny_onnx[1]), "--demo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no meta.json" in err and "wmoe data demo" in err and len(err.strip().splitlines()) == 1
