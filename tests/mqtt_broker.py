"""A real mosquitto broker for the tests: its own config file on a free 127.0.0.1 port, started and stopped (and
restarted on the same port, with its persistence) by the test. TLS and password files made with openssl and
mosquitto_passwd. `make test` installs the Debian package when it is missing."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

import pytest


def need(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").is_file() else None)
    if path is None:
        pytest.fail(f"{tool} not found: the MQTT tests need the Debian package mosquitto (make test installs it: "
                    f"apt-get install -y mosquitto)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """``Broker(dir).start()``; ``stop()`` (SIGTERM: mosquitto saves its persistence) and ``start()`` again."""

    def __init__(self, workdir: Path, extra: str = "", allow_anonymous: bool = True) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.exe = need("mosquitto")
        (self.dir / "data").mkdir(exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"user root\n"  # started as root (CI), mosquitto would switch to its own user and lose our files
            f"per_listener_settings false\n"
            f"allow_anonymous {'true' if allow_anonymous else 'false'}\n"
            f"persistence true\npersistence_location {self.dir / 'data'}/\nautosave_interval 1\n"
            f"log_dest file {self.dir / 'mosquitto.log'}\nlog_type all\n"
            f"listener {self.port} 127.0.0.1\n{extra}")
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 20) -> "Broker":
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.proc.stderr.read().decode()}"
                                   f"{self.log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        p = self.dir / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""


def make_tls(d: Path) -> dict:
    """A throwaway CA and a server certificate for 127.0.0.1 (subjectAltName IP), made with openssl."""
    d.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        r = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=wmoe test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
        "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.pem", "-days", "2", "-extfile", "san.ext")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


def make_password_file(path: Path, user: str, password: str) -> Path:
    r = subprocess.run([need("mosquitto_passwd"), "-b", "-c", str(path), user, password], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    path.chmod(0o600)
    return path


class Subscriber:
    """A real paho client counting what arrives on ``topic`` (QoS 1, persistent session: the broker keeps its
    messages while it is away and across the broker's restart)."""

    def __init__(self, port: int, topic: str, client_id: str = "wmoe-test-sub", tls_ca: Optional[Path] = None,
                 user: Optional[str] = None, password: Optional[str] = None) -> None:
        import threading

        import paho.mqtt.client as mqtt
        self.messages: list = []
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                        protocol=mqtt.MQTTv311)
        if user:
            c.username_pw_set(user, password)
        if tls_ca:
            c.tls_set(ca_certs=str(tls_ca))
        c.reconnect_delay_set(1, 2)

        def on_connect(client, userdata, flags, rc, props):
            if not rc.is_failure:
                client.subscribe(topic, qos=1)

        c.on_connect = on_connect
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = lambda client, userdata, msg: self.messages.append(msg.payload)
        c.connect_async("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(20), "the test subscriber could not subscribe"

    def wait_for(self, n: int, timeout: float = 30) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.messages) < n:
            time.sleep(0.05)
        return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
