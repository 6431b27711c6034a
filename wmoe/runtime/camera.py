"""wmoe-camera: score a folder, a video file, a camera or a stream with an exported model; every frame's result
to a file, to MQTT, to overlays (no torch).

    wmoe-camera --source images/ --model model.onnx --results results.jsonl
    wmoe-camera --source line3.mp4 --model model.onnx --results results.csv --overlays overlays/
    wmoe-camera --source 0 --model model.engine --batch 4 --mqtt 10.0.0.5:1883/line3/results --fail-on-drop

The model file carries its decision (``wmoe calibrate`` / ``wmoe eval`` -> ``wmoe export``), so verdicts need no
flags. Folders, image and video files never drop frames (the capture waits for inference); only a live source
(camera index, stream URL) uses a drop policy: ``oldest`` (default), ``newest`` or ``block``. Damaged frames are
skipped, named on stderr and counted; reading goes on. The final line accounts for every frame:
``read = scored + skipped + dropped``.

Results: ``--results FILE.jsonl|.csv`` (one line per frame, flushed per line), ``--mqtt host:port/topic`` (QoS 1,
buffered while the broker is away; TLS with ``--mqtt-ca``, password from ``--mqtt-password-file`` or
$WMOE_MQTT_PASSWORD), ``--overlays DIR`` (the picture of ``wmoe predict``). The Python API is
:func:`wmoe.runtime.stream`.

Exit status: 0 all scored; 1 a frame was undecided although a threshold is known; 2 bad arguments, source or model;
3 frames were dropped and ``--fail-on-drop`` was given; 4 results could not be delivered over MQTT (buffer overflow
or broker unreachable at the end); 130 interrupted. When several apply, the highest wins.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from pathlib import Path
from typing import List, Optional

import numpy as np

from .. import __version__
from ..cli.run import Parser, finish, run
from ..cli.types import checked, finite_float, non_negative_float, non_negative_int, one_of, output_dir, positive_int
from ..contract import CPU_PRECISIONS
from ..errors import WMoEError
from .loop import DROP_POLICIES, LoopStats, frame_result, resolve_drop, run_loop
from .results import RESULT_SUFFIXES, check_results_path
from .registry import provider_help
from .runtime import RUNTIME_PROVIDERS
from .sources import Frame, SourceError, _cv2, open_source

__all__ = ["main", "build_parser", "Frame", "SourceError", "open_source", "run_loop", "LoopStats", "DROP_POLICIES"]


class _RefusePassword(argparse.Action):
    """``--mqtt-password VALUE`` is refused without echoing the value (a command line is visible to every user in
    ``ps``); without this option argparse would take it as an abbreviation of ``--mqtt-password-file``."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("the MQTT password is never taken from the command line (every user sees it in ps): use "
                     "--mqtt-password-file FILE or the environment variable WMOE_MQTT_PASSWORD")


def build_parser() -> argparse.ArgumentParser:
    """The ``wmoe-camera`` parser, with the conventions of every wmoe command (:mod:`wmoe.cli.run`): a bad value is
    one line naming the option (exit status 2), ``--version``, ``--debug``, defaults shown in ``--help``."""
    ap = Parser(prog="wmoe-camera", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"wmoe-camera (wmoe) {__version__}")
    ap.add_argument("--source", required=True,
                    help="image folder, image file, video file, camera index or stream URL (rtsp://...)")
    ap.add_argument("--model", required=True, help="exported model: .onnx or TensorRT .engine (with its .json)")
    ap.add_argument("--provider", default="cpu", type=one_of(RUNTIME_PROVIDERS, "provider"),
                    help=f"{provider_help()}; one that cannot be had is an error")
    ap.add_argument("--allow-cpu-fallback", action="store_true",
                    help="run on the CPU (with a warning) when --provider cannot be had, instead of failing")
    ap.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                    help="the product class whose thresholds judge the frames (a model calibrated per class)")
    ap.add_argument("--precision", default="auto", type=one_of(("auto", *CPU_PRECISIONS), "precision"),
                    help=f"--provider openvino: {', '.join(CPU_PRECISIONS)}, or auto: the precision the accuracy "
                         "gate chose and stored in the model (wmoe export cpu-precision; f32 without one); an "
                         "explicit one the gate did not pass falls back to f32, saying why")
    ap.add_argument("--batch", type=positive_int, default=4, help="frames per inference")
    ap.add_argument("--queue", type=positive_int, default=8, help="capture queue length, bounded")
    ap.add_argument("--drop", type=one_of(DROP_POLICIES, "drop policy"), default=None,
                    help="live sources only (camera, stream), when the queue is full: drop the oldest queued frame, "
                         "drop the newest, or block the capture; folders and files always block (default: oldest "
                         "for a live source)")
    ap.add_argument("--fail-on-drop", action="store_true",
                    help="exit with status 3 when a frame was dropped (a live source faster than inference)")
    ap.add_argument("--max-frames", type=non_negative_int, default=0,
                    help="stop after N frames read; 0: until the source ends")
    ap.add_argument("--threshold", type=finite_float, default=None,
                    help="override the image threshold stored in the model")
    ap.add_argument("--pixel-threshold", type=finite_float, default=None,
                    help="override the defect-mask threshold stored in the model (defect area, overlay contour)")
    ap.add_argument("--results", default=None, metavar="FILE", type=checked(check_results_path, "results file",
                                                                             keep_text=True),
                    help=f"one line per frame to FILE{'|'.join(RESULT_SUFFIXES)} (source, frame, time, score, "
                         "verdict, class, threshold, defect area, latency); flushed per line, never overwritten")
    ap.add_argument("--results-append", action="store_true", help="append to an existing --results file")
    ap.add_argument("--mqtt", default=None, metavar="HOST:PORT/TOPIC",
                    help="publish each frame's result (JSON, QoS 1) to this MQTT broker and topic")
    ap.add_argument("--mqtt-user", default=None, help="MQTT user name")
    ap.add_argument("--mqtt-password-file", default=None, metavar="FILE",
                    help="file whose first line is the MQTT password (else $WMOE_MQTT_PASSWORD; never a "
                         "command-line value)")
    ap.add_argument("--mqtt-password", action=_RefusePassword, help=argparse.SUPPRESS)
    ap.add_argument("--mqtt-ca", default=None, metavar="PEM",
                    help="CA certificate: connect with TLS and verify the broker against it")
    ap.add_argument("--mqtt-cert", default=None, metavar="PEM", help="client certificate for TLS (with --mqtt-key)")
    ap.add_argument("--mqtt-key", default=None, metavar="PEM", help="client key for TLS")
    ap.add_argument("--mqtt-client-id", default="", help="MQTT client id (default: random)")
    ap.add_argument("--mqtt-buffer", type=positive_int, default=10000,
                    help="results held while the broker is away; beyond, the oldest is discarded and counted")
    ap.add_argument("--mqtt-drain", type=non_negative_float, default=30.0, metavar="S",
                    help="at the end, wait up to S seconds for the broker to acknowledge every result")
    ap.add_argument("--overlays", "--out", dest="overlays", default=None, metavar="DIR", type=output_dir,
                    help="write one overlay per frame here: the picture of wmoe predict (image | fixed-scale heatmap "
                         "with colour bar and the defect contour at the pixel threshold, banner with verdict, score "
                         "and threshold); --out is the older name")
    ap.add_argument("--display", action="store_true", help="show overlays in a window (needs opencv-python)")
    ap.add_argument("--report-every", type=non_negative_int, default=50,
                    help="print a progress line every N scored frames; 0: only the final report")
    ap.set_defaults(func=_camera)
    return finish(ap, "wmoe-camera")


def _open_mqtt(a: argparse.Namespace, warn):
    from .mqtt import MqttConfig, MqttSink, parse_target, read_password
    host, port, topic, tls = parse_target(a.mqtt)
    cfg = MqttConfig(host, port, topic, username=a.mqtt_user,
                     password=read_password(a.mqtt_password_file) if a.mqtt_user else None, tls=tls,
                     ca_file=a.mqtt_ca, cert_file=a.mqtt_cert, key_file=a.mqtt_key, client_id=a.mqtt_client_id,
                     buffer=a.mqtt_buffer)
    return MqttSink(cfg, warn)


def main(argv: Optional[List[str]] = None) -> int:
    """``wmoe-camera`` (the exit statuses are in the module doc)."""
    return run(build_parser(), argv)


def _camera(a: argparse.Namespace) -> int:
    from .results import ResultFile
    from .runtime import Runtime

    def warn(msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)

    def error(e: BaseException) -> int:
        print(f"wmoe-camera: error: {e}", file=sys.stderr, flush=True)
        return 2

    with contextlib.ExitStack() as opened:
        try:
            source = open_source(a.source, warn)
            policy = resolve_drop(source, a.drop)
            ov = {"precision": a.precision, "batch": a.batch} if a.provider == "openvino" else {}
            rt = opened.enter_context(Runtime.open(a.model, provider=a.provider, threshold=a.threshold,
                                                   pixel_threshold=a.pixel_threshold, class_name=a.class_name,
                                                   allow_cpu_fallback=a.allow_cpu_fallback, **ov))
            results = opened.enter_context(ResultFile(a.results, append=a.results_append)) if a.results else None
            mqtt = _open_mqtt(a, warn) if a.mqtt else None
        except (WMoEError, FileNotFoundError, ValueError) as e:
            return error(e)
        thr = rt.decision.threshold_for(rt.class_name)
        if getattr(rt.backend, "description", ""):  # the OpenVINO backend: which precision runs, and why
            note = getattr(rt.backend, "note", "")
            print(f"backend: {rt.backend.description}" + (f" ({note})" if note else ""), flush=True)
        print(f"model {a.model}: input {rt.meta.input} {rt.input_size}px, "
              f"threshold {thr if thr is not None else 'none (verdicts undecided: run wmoe calibrate, re-export)'}; "
              f"source {source.name} ({'live, drop policy ' + policy if source.live else 'file: nothing dropped'})",
              flush=True)
        out_dir = Path(a.overlays) if a.overlays else None
        if out_dir:
            out_dir.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()

        def on_result(fr: Frame, res, i: int) -> None:
            r = frame_result(source.name, fr, res, i)
            if r.fault:
                warn(f"{fr.name}: {r.fault}")
            if results is not None:
                results.write(r)
            if mqtt is not None:
                mqtt.publish(r)
            if out_dir is None and not a.display:
                return
            from ..overlay import overlay_panel
            over = overlay_panel(fr.rgb, res.maps_at(i), float(res.scores[i]), r.threshold, verdict=r.verdict,
                                 pixel_threshold=res.decision.pixel_threshold_for(res.class_name),
                                 label=fr.name + (f"  class {r.class_name}" if r.class_name else ""))
            if out_dir is not None:
                from PIL import Image

                from ..atomic import atomic_path
                with atomic_path(out_dir / f"{Path(fr.name).stem}_{r.verdict}.png") as tmp:
                    Image.fromarray(over).save(tmp, format="PNG")
            if a.display:
                cv2 = _cv2()
                try:
                    cv2.imshow("wmoe", np.ascontiguousarray(over[:, :, ::-1]))
                except cv2.error:  # opencv-python-headless (the camera extra) has no GUI
                    raise SourceError("--display needs OpenCV with a GUI: pip install opencv-python (the headless "
                                      "build that wmoe[camera] installs cannot open windows); or write overlays "
                                      "with --overlays")
                if cv2.waitKey(1) & 0xFF == ord("q"):
                    stop.set()

        stats = LoopStats()
        rc = 0
        try:
            run_loop(source, rt.score, batch=a.batch, queue_size=a.queue, drop=policy, max_frames=a.max_frames,
                     on_result=on_result, report=lambda s: print(s.line(policy), flush=True),
                     report_every=a.report_every, stop=stop, stats=stats)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            rc = 130
        except WMoEError as e:
            rc = error(e)
        finally:
            undelivered = mqtt.close(a.mqtt_drain if rc != 130 else min(a.mqtt_drain, 5.0)) if mqtt else 0
        print("final: " + stats.line(policy), flush=True)
        if results is not None:
            print(f"results: {results.lines} lines -> {results.path}", flush=True)
        if mqtt is not None:
            print(mqtt.summary(), flush=True)
            if undelivered:
                warn(f"{undelivered} results were not delivered over MQTT ({mqtt.lost} lost to a full buffer, the "
                     f"rest unacknowledged after {a.mqtt_drain:g} s{'; ' + mqtt.last_error if mqtt.last_error else ''})")
                rc = max(rc, 4)
        if stats.dropped:
            warn(f"dropped {stats.dropped} of {stats.read} frames: inference is slower than the live source (policy "
                 f"{policy}); a larger --batch, a faster provider, or --drop block"
                 + ("" if a.fail_on_drop else " (--fail-on-drop makes this exit 3)"))
            if a.fail_on_drop:
                rc = max(rc, 3)
        if not stats.accounted:  # a bug, never expected: say so rather than hide it
            warn(f"frames not accounted: {stats.balance()}")
        if rc == 0 and stats.undecided and thr is not None:
            rc = 1
        return rc


if __name__ == "__main__":
    sys.exit(main())
