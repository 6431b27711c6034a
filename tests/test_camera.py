"""The packaged camera loop (wmoe.runtime.camera): drop policies counted deterministically, bad sources and options
refused at once, the final report always printed, and one image loader for every path (same pixels, same EXIF
policy, same refusal of truncated files) — with the real runtime and a real exported model."""
import threading

import numpy as np
import pytest
from PIL import Image

from wmoe.image_io import DataError, load_image
from wmoe.runtime import Runtime
from wmoe.runtime.camera import Frame, SourceError, main, open_source, run_loop


def _frames(n, first_taken=None, hw=(40, 50)):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield Frame(i, f"f{i}", rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
        if i == 0 and first_taken is not None:
            assert first_taken.wait(30)  # frame 0 is being scored: the rest arrive while inference is busy


@pytest.mark.parametrize("drop,kept", [("newest", ["f0", "f1", "f2"]), ("oldest", ["f0", "f8", "f9"]),
                                       ("block", [f"f{i}" for i in range(10)])])
def test_drop_policies_are_counted(tiny_onnx, drop, kept):
    rt = Runtime.open(tiny_onnx[1])
    first_taken, source_done = threading.Event(), threading.Event()
    seen = []

    def frames():
        yield from _frames(10, first_taken if drop != "block" else None)
        source_done.set()

    def score(batch):
        if not first_taken.is_set():
            first_taken.set()
            if drop != "block":
                assert source_done.wait(30)  # inference "falls behind" until the source has delivered everything
        return rt.score(batch)

    stats = run_loop(frames(), score, batch=1, queue_size=2, drop=drop, on_result=lambda f, r, i: seen.append(f.name))
    assert seen == kept
    assert stats.dropped == 10 - len(kept) and stats.read == 10 and stats.scored == len(kept)


def test_capture_failure_is_raised_not_hung(tiny_onnx):
    rt = Runtime.open(tiny_onnx[1])

    def broken():
        yield from _frames(2)
        raise OSError("camera unplugged")

    with pytest.raises(OSError, match="unplugged"):
        run_loop(broken(), rt.score, batch=4)
    with pytest.raises(ValueError, match="queue size"):
        run_loop(_frames(1), rt.score, queue_size=0)
    with pytest.raises(ValueError, match="batch"):
        run_loop(_frames(1), rt.score, batch=0)


def test_external_stop_ends_the_loop(tiny_onnx):
    """A caller's stop event ends the loop even while it waits on a source that blocks forever (a camera that
    stopped sending): the capture thread never queues its end marker then."""
    rt = Runtime.open(tiny_onnx[1])
    stop, forever, stalled_evt, all_scored = (threading.Event() for _ in range(4))
    seen = []

    def stalled():
        yield from _frames(3)
        stalled_evt.set()
        forever.wait()  # never set: the capture thread stays inside the camera read

    def on_result(f, r, i):
        seen.append(f.name)
        if len(seen) == 3:
            all_scored.set()

    done = []
    th = threading.Thread(target=lambda: done.append(run_loop(stalled(), rt.score, batch=1, stop=stop,
                                                              on_result=on_result)), daemon=True)
    th.start()
    assert stalled_evt.wait(30) and all_scored.wait(30)  # the loop now waits on an empty queue
    stop.set()
    th.join(30)
    assert not th.is_alive(), "run_loop hung after the caller's stop"
    assert done and done[0].scored == 3 and seen == ["f0", "f1", "f2"]


def test_cli_bad_sources_and_options(tiny_onnx, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--source", str(tmp_path / "nope"), "--model", str(tiny_onnx[1])]) == 2
    assert "nope: no such file, folder or camera index" in capsys.readouterr().err
    assert main(["--source", str(tmp_path / "empty"), "--model", str(tiny_onnx[1])]) == 2
    assert "no image files found" in capsys.readouterr().err
    for opt, fragment in ((["--batch", "0"], "must be a positive integer, got 0"),
                          (["--batch", "-2"], "must be a positive integer, got -2"),
                          (["--queue", "0"], "must be a positive integer"),
                          (["--drop", "sideways"], "unknown drop policy 'sideways'; choose from oldest, newest, block"),
                          (["--provider", "openvno"], "unknown provider 'openvno' (did you mean 'openvino'?)"),
                          (["--precision", "fp32"], "unknown precision 'fp32' (did you mean 'f32'?)"),
                          (["--threshold", "nan"], "expected a finite number, got 'nan'"),
                          (["--mqtt-drain", "-1"], "must be 0 or more"),
                          (["--results", str(tmp_path / "r.txt")], "results go to a .jsonl or .csv file"),
                          (["--results", str(tmp_path)], "is a folder, not a results file")):
        with pytest.raises(SystemExit) as e:  # issue 22: one line naming the option, not a usage block
            main(["--source", str(tmp_path), "--model", str(tiny_onnx[1]), *opt])
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith(f"wmoe-camera: error: argument {opt[0]}: ") and fragment in err, err


def test_cli_version_and_choices_from_one_definition(capsys):
    """issue 22: --version like every wmoe command; the choices are the runtime's and the contract's own lists,
    and the camera stays torch-free with the shared CLI kit (wmoe.cli.run, wmoe.cli.types)."""
    import subprocess
    import sys

    from wmoe.contract import CPU_PRECISIONS
    from wmoe.runtime.camera import build_parser
    from wmoe.runtime.loop import DROP_POLICIES
    from wmoe.runtime.results import RESULT_SUFFIXES
    from wmoe.runtime.runtime import RUNTIME_PROVIDERS
    from wmoe.runtime.session import PROVIDERS

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("wmoe-camera (wmoe) ")
    assert RUNTIME_PROVIDERS == (*PROVIDERS, "openvino")
    p = build_parser()
    for opt, names in (("--provider", RUNTIME_PROVIDERS), ("--precision", ("auto", *CPU_PRECISIONS)),
                       ("--drop", DROP_POLICIES), ("--results", [f"r{s}" for s in RESULT_SUFFIXES])):
        for n in names:  # every name of the one definition parses
            assert getattr(p.parse_args(["--source", "s", "--model", "m", opt, n]), p._option_string_actions[
                opt].dest) == n
    text = p.format_help()
    assert "--debug" in text and "(default: 4)" in text
    code = ("import sys; sys.modules['torch'] = None\n"
            "from wmoe.runtime.camera import main\n"
            "sys.exit(main(['--source', 'nowhere', '--model', 'm.onnx', '--batch', 'x']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "wmoe-camera: error: argument --batch: expected an integer, got 'x' (see wmoe-camera --help)"], r.stderr


def test_display_without_gui_opencv_is_a_message(tiny_onnx, tmp_path, capsys):
    """The camera extra installs headless OpenCV: --display says what to install instead of a cv2 traceback."""
    cv2 = pytest.importorskip("cv2")
    try:
        cv2.imshow("probe", np.zeros((2, 2, 3), np.uint8))
        cv2.destroyAllWindows()
        pytest.skip("this OpenCV has a GUI")
    except cv2.error:
        pass
    src = tmp_path / "frames"
    src.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(src / "a.png")
    assert main(["--source", str(src), "--model", str(tiny_onnx[1]), "--display"]) == 2
    assert "--display needs OpenCV with a GUI" in capsys.readouterr().err


def test_cli_folder_run_final_report_and_overlays(tiny_onnx, tmp_path, capsys):
    src = tmp_path / "frames"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(src / f"{i:03d}.png")
    (src / "007.png").write_text("not an image")
    rc = main(["--source", str(src), "--model", str(tiny_onnx[1]), "--batch", "3", "--out", str(tmp_path / "out"),
               "--report-every", "0"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    final = [line for line in out.splitlines() if line.startswith("final: ")]
    assert len(final) == 1 and "frames 6:" in final[0] and "skipped 1" in final[0] and "dropped 0" in final[0]
    assert "read 7 = scored 6 + skipped 1 + dropped 0" in final[0]
    assert "007.png" in err
    written = sorted((tmp_path / "out").glob("*.png"))
    assert len(written) == 6 and all(p.stem.rsplit("_", 1)[1] in ("anomalous", "normal") for p in written)


def _same_files(tmp_path):
    """Files that decoded differently per path before: 16-bit PNG, float TIFF, EXIF-rotated JPEG, truncated JPEG."""
    rng = np.random.default_rng(3)
    files = {}
    g16 = (rng.integers(0, 65536, (48, 64))).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    files["g16"] = tmp_path / "g16.png"
    Image.fromarray(rng.random((48, 64)).astype(np.float32), mode="F").save(tmp_path / "f32.tif")
    files["f32"] = tmp_path / "f32.tif"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW" orientation tag
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "exif.jpg", exif=exif)
    files["exif"] = tmp_path / "exif.jpg"
    return files


def test_one_loader_for_every_path(tiny_onnx, tmp_path):
    from wmoe.detector import Detector
    from wmoe.model.preprocess import to_chw_list

    files = _same_files(tmp_path)
    det = Detector.from_checkpoint(tiny_onnx[0])
    for name, path in files.items():
        want = load_image(path)                            # predict / eval / data set
        assert want.dtype == np.uint8 and want.shape == (48, 64, 3), name  # EXIF orientation ignored: as stored
        assert want.std() > 10, name                       # 16-bit/float scaled, not saturated to white
        with Image.open(path) as im:                       # Detector on a PIL image
            got = (to_chw_list(im)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(got, want, err_msg=name)
        cam = [f.rgb for f in open_source(str(path), print)]  # the camera loop's folder/file source
        np.testing.assert_array_equal(cam[0], want, err_msg=name)
        with Image.open(path) as im:
            assert det(im).scores[0] == det(load_image(path)).scores[0]
    # a half-truncated JPEG: refused by the loader, counted unreadable (not scored) by the camera loop
    data = files["exif"].read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.jpg"):
        load_image(tmp_path / "trunc.jpg")
    assert [f.rgb for f in open_source(str(tmp_path / "trunc.jpg"), lambda m: None)] == [None]
    import torch
    with pytest.raises(ValueError, match=r"values in \[0, 1\].*divide 0..255 values by 255"):
        det(torch.full((3, 20, 20), 200.0))


def test_source_errors():
    with pytest.raises(SourceError, match="no such file"):
        open_source("/nonexistent/frames", print)


def test_video_source_through_opencv(tiny_onnx, tmp_path, capsys):
    cv2 = pytest.importorskip("cv2")
    path = str(tmp_path / "clip.avi")
    vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 60))
    assert vw.isOpened()
    for i in range(5):
        vw.write(np.full((60, 80, 3), 40 * i, np.uint8))
    vw.release()
    frames = list(open_source(path, print))
    assert [f.name for f in frames] == [f"frame_{i:06d}" for i in range(5)] and frames[0].rgb.shape == (60, 80, 3)
    assert main(["--source", path, "--model", str(tiny_onnx[1]), "--batch", "2"]) == 0
    assert "final: frames 5:" in capsys.readouterr().out
