"""The loop scores what it is given and every result leaves it (issue 20, items 2 and 3), with the real runtime and a
real exported model: files never drop, damaged frames are skipped and counted while reading goes on, every frame is
accounted, one JSONL/CSV line per frame that survives a crash, the Python API."""
import csv
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from wmoe.runtime import Runtime, stream
from wmoe.runtime import camera
from wmoe.runtime.results import FIELDS
from wmoe.runtime.sources import Frame, Source


def _folder(path, n, hw=(96, 128), seed=0):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def _final(out):
    lines = [line for line in out.splitlines() if line.startswith("final: ")]
    assert len(lines) == 1, out
    return lines[0]


def test_folder_of_24_images_gives_24_jsonl_lines_with_default_options(tiny_onnx, tmp_path, capsys):
    """Before: the default --drop oldest scored 9 of 24 images of a folder, exit 0."""
    src = _folder(tmp_path / "in", 24)  # decoding is faster than scoring: the old loop scored 12 of these 24
    assert camera.main(["--source", str(src), "--model", str(tiny_onnx[1]), "--results",
                        str(tmp_path / "r.jsonl")]) == 0
    out, err = capsys.readouterr()
    assert "read 24 = scored 24 + skipped 0 + dropped 0" in _final(out)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == [f"{i:03d}.png" for i in range(24)] and [r["frame"] for r in rows] == \
        list(range(24))
    want = Runtime.open(tiny_onnx[1]).score([np.asarray(Image.open(src / r["name"])) for r in rows[:4]])
    r0 = rows[0]
    assert list(r0) == list(FIELDS) and r0["source"] == str(src) and r0["time"].endswith("Z")
    assert r0["score"] == pytest.approx(float(want.scores[0]), abs=1e-5) and r0["verdict"] == want.verdicts[0]
    assert r0["threshold"] == 0.25 and r0["class"] is None and r0["latency_ms"] > 0
    assert r0["defect_area"] == pytest.approx(float((want.maps[0] >= 0.5).mean()), abs=1e-6)
    # a folder never drops: asking it to is refused with one line
    assert camera.main(["--source", str(src), "--model", str(tiny_onnx[1]), "--drop", "oldest"]) == 2
    assert "never drops frames; --drop oldest applies to live sources" in capsys.readouterr().err
    # results are never overwritten
    assert camera.main(["--source", str(src), "--model", str(tiny_onnx[1]), "--results",
                        str(tmp_path / "r.jsonl")]) == 2
    assert "exists (results are never overwritten)" in capsys.readouterr().err


def test_damaged_video_frame_is_skipped_and_reading_goes_on(tiny_onnx, tmp_path, capsys):
    """Before: a damaged frame in the middle of a video ended the stream: 17 of 40 scored, no warning."""
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 60))
    for i in range(40):
        vw.write(np.full((60, 80, 3), 5 * i, np.uint8))
    vw.release()
    data = bytearray(path.read_bytes())
    soi = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]  # each frame is one JPEG
    assert len(soi) == 40
    data[soi[17]:soi[18] - 20] = bytes(soi[18] - 20 - soi[17])  # frame 17's JPEG zeroed: undecodable
    path.write_bytes(bytes(data))
    assert camera.main(["--source", str(path), "--model", str(tiny_onnx[1]), "--results", str(tmp_path / "r.csv"),
                        "--report-every", "0"]) == 0
    out, err = capsys.readouterr()
    assert "read 40 = scored 39 + skipped 1 + dropped 0" in _final(out)
    assert "frame 17 cannot be decoded (skipped)" in err
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == FIELDS
    assert [int(r["frame"]) for r in rows] == [i for i in range(40) if i != 17]  # indices never shift


def test_live_source_drops_are_reported_and_fail_on_drop(tiny_onnx, tmp_path, capsys, monkeypatch):
    """A live source faster than inference drops (only it may): said on stderr, exit 3 with --fail-on-drop."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(20)]

    def live(source, warn):
        return Source(source, True, (Frame(i, f"frame_{i:06d}", f, time.time(), time.perf_counter())
                                     for i, f in enumerate(frames)))
    slow_score = Runtime.score

    def score(self, batch, **kw):
        time.sleep(0.05)  # inference slower than the camera
        return slow_score(self, batch, **kw)

    monkeypatch.setattr(camera, "open_source", live)
    monkeypatch.setattr(Runtime, "score", score)
    argv = ["--source", "0", "--model", str(tiny_onnx[1]), "--batch", "1", "--queue", "2", "--results",
            str(tmp_path / "r.jsonl"), "--report-every", "0"]
    assert camera.main(argv + ["--fail-on-drop"]) == 3
    out, err = capsys.readouterr()
    final = _final(out)
    assert "(policy oldest)" in final and "dropped 0" not in final
    assert "warning: dropped" in err and "inference is slower than the live source" in err
    n = len((tmp_path / "r.jsonl").read_text().splitlines())
    assert f"read 20 = scored {n} + skipped 0 + dropped {20 - n}" in final
    assert camera.main(argv[:-4] + ["--report-every", "0"]) == 0  # without --fail-on-drop: reported, exit 0
    assert "warning: dropped" in capsys.readouterr().err


def test_python_api_yields_one_result_per_frame(tiny_onnx, tmp_path):
    src = _folder(tmp_path / "in", 6)
    (src / "004.png").write_bytes(b"\x89PNG damaged")
    warnings = []
    with Runtime.open(tiny_onnx[1]) as rt:
        results = stream(src, rt, batch=4, warn=warnings.append)
        got = list(results)
        assert [r.name for r in got] == ["000.png", "001.png", "002.png", "003.png", "005.png"]
        assert results.policy == "block" and results.stats.balance() == \
            "read 6 = scored 5 + skipped 1 + dropped 0"
        assert len(warnings) == 1 and "004.png" in warnings[0]
        want = rt.score([np.asarray(Image.open(src / "005.png"))])
        assert got[-1].score == pytest.approx(float(want.scores[0]), abs=1e-5)
        assert json.loads(got[-1].to_json())["verdict"] == want.verdicts[0]
        # breaking out early stops the capture thread and still accounts for every frame read
        early = stream(src, rt, batch=1, queue_size=1, warn=warnings.append)
        for r in early:
            break
        assert early.stats.accounted and early.stats.scored == 1, early.stats.balance()


def test_results_survive_a_killed_process(tiny_onnx, tmp_path):
    """Each line is flushed when its frame is scored: a process killed mid-run leaves only whole lines."""
    src = _folder(tmp_path / "in", 300, hw=(48, 64))
    res = tmp_path / "r.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "wmoe.runtime.camera", "--source", str(src), "--model",
                          str(tiny_onnx[1]), "--batch", "1", "--results", str(res)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not res.exists() or res.read_text().count("\n") < 10):
            assert p.poll() is None, p.stderr.read()
            time.sleep(0.05)
    finally:
        p.kill()  # SIGKILL, but only while p is unreaped: os.kill(p.pid) after it exited could hit a reused pid
        p.wait()
    text = res.read_text()
    lines = text.splitlines()
    assert len(lines) >= 10 and text.endswith("\n")
    assert [json.loads(line)["frame"] for line in lines] == list(range(len(lines)))


def test_full_disk_is_one_line_and_keeps_the_lines_written(tiny_onnx, tmp_path):
    """The results file hits the file-size limit (a full disk, simulated with prlimit --fsize): one line naming the
    file, exit 2, the lines written before intact."""
    src = _folder(tmp_path / "in", 40, hw=(48, 64))
    res = tmp_path / "r.jsonl"
    r = subprocess.run(["prlimit", "--fsize=3000", sys.executable, "-m", "wmoe.runtime.camera", "--source", str(src),
                        "--model", str(tiny_onnx[1]), "--results", str(res)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and str(res) in errors[0] and "lines written before" in errors[0], r.stderr
    assert "Traceback" not in r.stderr and "final: " in r.stdout
    text = res.read_text()  # whole lines only: the line cut short by the full disk is removed (the old code left it)
    assert text.endswith("\n"), text[-200:]
    lines = text.splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(len(lines))) and len(lines) > 5
    assert f"the {len(lines)} lines written before are kept" in errors[0], errors


def test_per_class_thresholds_reach_every_result_line(tiny_onnx, tmp_path, capsys):
    """--class picks the product's thresholds (wmoe calibrate per class): verdict, threshold and defect area in the
    result lines follow it; an unknown class is refused before the first frame."""
    from wmoe.contract import Decision, write_decision
    src = _folder(tmp_path / "in", 4)
    scores = Runtime.open(tiny_onnx[1]).score([np.asarray(Image.open(p)) for p in sorted(src.iterdir())]).scores
    model = write_decision(tiny_onnx[1], Decision(
        threshold=float(scores.mean()), pixel_threshold=0.5,
        class_thresholds={"pcb": float(scores.min()) - 0.01, "screw": float(scores.max()) + 0.01},
        class_pixel_thresholds={"pcb": 0.0, "screw": 1.0}), out=tmp_path / "per_class.onnx")
    rows = {}
    for cls in ("pcb", "screw"):
        assert camera.main(["--source", str(src), "--model", str(model), "--class", cls, "--report-every", "0",
                            "--results", str(tmp_path / f"{cls}.jsonl")]) == 0
        rows[cls] = [json.loads(line) for line in (tmp_path / f"{cls}.jsonl").read_text().splitlines()]
    capsys.readouterr()
    assert {r["verdict"] for r in rows["pcb"]} == {"anomalous"} and {r["verdict"] for r in rows["screw"]} == {"normal"}
    assert {r["class"] for r in rows["pcb"]} == {"pcb"} and rows["screw"][0]["threshold"] == pytest.approx(
        float(scores.max()) + 0.01)
    assert {r["defect_area"] for r in rows["pcb"]} == {1.0} and {r["defect_area"] for r in rows["screw"]} == {0.0}
    assert camera.main(["--source", str(src), "--model", str(model), "--class", "pbc"]) == 2
    assert "no threshold for class 'pbc'" in capsys.readouterr().err
