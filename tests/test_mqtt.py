"""Every result leaves the loop over MQTT (issue 20, item 3), against a REAL mosquitto broker started by the test on
127.0.0.1 with its own config file: QoS 1, the broker restarted in the middle of a run (results buffered, counted,
delivered after, none lost: a real paho subscriber counts them), TLS with a throwaway CA, and a user whose password
comes from a file or the environment against a broker that requires them."""
import json
import time

import numpy as np
import pytest
from PIL import Image

from mqtt_broker import Broker, Subscriber, make_password_file, make_tls
from wmoe.runtime import Runtime, stream
from wmoe.runtime import camera
from wmoe.runtime.mqtt import MqttConfig, MqttError, MqttSink, parse_target

pytestmark = pytest.mark.timeout(300)


def _folder(path, n):
    path.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def test_every_result_is_delivered_across_a_broker_restart(tiny_onnx, tmp_path):
    broker = Broker(tmp_path / "broker").start()
    sub = sink = None
    try:
        sub = Subscriber(broker.port, "wmoe/line1")
        sink = MqttSink(MqttConfig("127.0.0.1", broker.port, "wmoe/line1", reconnect_max=1))
        publish_s, buffered_while_down = [], 0
        with Runtime.open(tiny_onnx[1]) as rt:
            for r in stream(_folder(tmp_path / "in", 30), rt, batch=2):
                t0 = time.perf_counter()
                sink.publish(r)
                publish_s.append(time.perf_counter() - t0)
                if r.frame == 9:
                    assert len(sub.wait_for(10)) == 10  # delivered live
                    broker.stop()                      # the broker goes away in the middle of the run
                if r.frame == 19:
                    buffered_while_down = sink.pending
                    broker.start()                     # and comes back on the same port
        assert buffered_while_down >= 5, buffered_while_down  # results produced meanwhile waited in the buffer
        assert max(publish_s) < 0.25  # scoring never waits for the network (reconnecting takes >= 1 s)
        assert sink.wait_delivered(60), sink.summary()
        assert sink.close(drain_s=5) == 0 and sink.lost == 0 and sink.connects >= 2, sink.summary()
        msgs = sub.wait_for(30, timeout=30)
        frames = [json.loads(m)["frame"] for m in msgs]
        assert sorted(set(frames)) == list(range(30)), (sorted(frames), broker.log()[-3000:])  # none lost (QoS 1:
        # a result in flight at the restart may arrive twice)
        assert {json.loads(m)["verdict"] for m in msgs} <= {"anomalous", "normal"}
    finally:
        if sink is not None and sink.client.is_connected():
            sink.close(drain_s=0)
        if sub is not None:
            sub.close()
        broker.stop()


def test_bounded_buffer_counts_what_it_discards(tmp_path):
    """No broker at all: publishing never blocks, the buffer keeps the newest results and counts the rest."""
    from mqtt_broker import free_port
    sink = MqttSink(MqttConfig("127.0.0.1", free_port(), "wmoe/x", buffer=5))
    t0 = time.perf_counter()
    for i in range(12):
        sink.publish(json.dumps({"frame": i}))
    assert time.perf_counter() - t0 < 0.5
    assert sink.lost == 7 and sink.pending == 5
    assert sink.close(drain_s=0.2) == 12


def test_tls_and_password_from_file_or_environment_through_the_cli(tiny_onnx, tmp_path, capsys, monkeypatch):
    tls = make_tls(tmp_path / "tls")
    passwd = make_password_file(tmp_path / "passwd", "line3", "s3cret pass")
    broker = Broker(tmp_path / "broker", allow_anonymous=False,
                    extra=f"cafile {tls['ca']}\ncertfile {tls['cert']}\nkeyfile {tls['key']}\n"
                          f"password_file {passwd}\n").start()
    sub = None
    try:
        sub = Subscriber(broker.port, "wmoe/line3/#", tls_ca=tls["ca"], user="line3", password="s3cret pass")
        src = _folder(tmp_path / "in", 4)
        pw_file = tmp_path / "pw.txt"
        pw_file.write_text("s3cret pass\n")
        base = ["--source", str(src), "--model", str(tiny_onnx[1]), "--report-every", "0", "--mqtt-ca",
                str(tls["ca"]), "--mqtt-user", "line3"]
        monkeypatch.delenv("WMOE_MQTT_PASSWORD", raising=False)
        assert camera.main(base + ["--mqtt", f"127.0.0.1:{broker.port}/wmoe/line3/a", "--mqtt-password-file",
                                   str(pw_file)]) == 0
        assert "published 4, delivered 4, lost 0" in capsys.readouterr().out
        monkeypatch.setenv("WMOE_MQTT_PASSWORD", "s3cret pass")
        assert camera.main(base + ["--mqtt", f"127.0.0.1:{broker.port}/wmoe/line3/b"]) == 0
        capsys.readouterr()
        topics = [json.loads(m)["name"] for m in sub.wait_for(8)]
        assert sorted(topics) == sorted([f"{i:03d}.png" for i in range(4)] * 2)
        # a wrong password: the broker's refusal is named, the results are counted as not delivered, exit 4
        monkeypatch.setenv("WMOE_MQTT_PASSWORD", "wrong")
        assert camera.main(base + ["--mqtt", f"127.0.0.1:{broker.port}/wmoe/line3/c", "--mqtt-drain", "2"]) == 4
        err = capsys.readouterr().err
        assert "refused the connection" in err and "4 results were not delivered over MQTT" in err, err
    finally:
        if sub is not None:
            sub.close()
        broker.stop()


def test_bad_targets_and_credentials_are_one_line_errors(tiny_onnx, tmp_path, capsys):
    assert parse_target("10.0.0.5:1884/line3/results") == ("10.0.0.5", 1884, "line3/results", False)
    assert parse_target("mqtts://broker.local/a") == ("broker.local", 8883, "a", True)
    for bad in ("10.0.0.5:1884", "host:99999/t", "host:1883/a/#"):
        with pytest.raises(MqttError):
            parse_target(bad)
    src = _folder(tmp_path / "in", 1)
    assert camera.main(["--source", str(src), "--model", str(tiny_onnx[1]), "--mqtt", "h:1883/t", "--mqtt-user",
                        "u", "--mqtt-password-file", str(tmp_path / "missing")]) == 2
    assert "cannot read the MQTT password file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a password on the command line is refused, and not echoed
        camera.main(["--source", str(src), "--model", str(tiny_onnx[1]), "--mqtt", "h:1883/t", "--mqtt-user", "u",
                     "--mqtt-password", "hunter2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "never taken from the command line" in err and "hunter2" not in err
