"""Publish every frame's result to an MQTT broker (``wmoe-camera --mqtt host:port/topic``; ``paho-mqtt`` 2.x).

What a line needs from it, and how it is met:

- **Scoring never waits for the network.** :meth:`MqttSink.publish` puts the result's JSON in a bounded buffer and
  returns; a worker thread hands it to paho when connected. When the buffer is full (the broker has been away for
  long), the oldest result is discarded and counted in ``lost`` — bounded memory, counted loss, never a stalled loop.
- **At-least-once delivery (QoS 1).** A result leaves the buffer when it is handed to paho; paho keeps it until the
  broker's PUBACK and re-sends it (DUP) after a reconnect. ``delivered`` counts PUBACKs. A subscriber may see a
  result twice after a broker restart (QoS 1 semantics): ``source`` + ``frame`` identify it.
- **The broker restarts.** paho reconnects (back-off ``reconnect_min``..``reconnect_max`` seconds); results produced
  meanwhile wait in the buffer and are delivered after. :meth:`close` waits up to ``drain_s`` for everything to be
  acknowledged and says what was not.
- **TLS and credentials.** ``ca_file`` turns TLS on (the broker's certificate is verified against it, host name
  included); ``cert_file``/``key_file`` add a client certificate. The password is read from a file or the
  environment (``WMOE_MQTT_PASSWORD``), never from the command line (which ``ps`` shows to every user).

A broker that refuses the connection (bad credentials, not authorized) is reported once on stderr with its reason.
"""
from __future__ import annotations

import collections
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from ..errors import WMoEError

PASSWORD_ENV = "WMOE_MQTT_PASSWORD"


class MqttError(WMoEError, ValueError):
    """The MQTT target or its credentials are not usable (bad host:port/topic, unreadable password file)."""


def parse_target(text: str) -> Tuple[str, int, str, bool]:
    """``host:port/topic`` (also ``mqtt://`` / ``mqtts://`` in front; port default 1883, 8883 for mqtts) ->
    (host, port, topic, tls)."""
    m = re.fullmatch(r"(?:(mqtts?)://)?(\[[^\]]+\]|[^:/\s]+)(?::(\d+))?/(\S+)", text.strip())
    if not m:
        raise MqttError(f"--mqtt {text!r}: expected host:port/topic (e.g. 127.0.0.1:1883/line3/results)")
    scheme, host, port, topic = m.groups()
    tls = scheme == "mqtts"
    port_n = int(port) if port else (8883 if tls else 1883)
    if not 0 < port_n < 65536:
        raise MqttError(f"--mqtt {text!r}: port {port_n} out of range")
    if any(c in topic for c in "+#"):
        raise MqttError(f"--mqtt {text!r}: a topic to publish to cannot hold the wildcards + or #")
    return host.strip("[]"), port_n, topic, tls


def read_password(password_file: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> Optional[str]:
    """The password from ``password_file`` (first line, trailing newline stripped) or ``$WMOE_MQTT_PASSWORD``."""
    if password_file:
        try:
            lines = Path(password_file).read_text(encoding="utf-8").splitlines()
            return lines[0] if lines else ""
        except OSError as e:
            raise MqttError(f"{password_file}: cannot read the MQTT password file ({e.strerror or e})") from None
    return (os.environ if env is None else env).get(PASSWORD_ENV)


@dataclass
class MqttConfig:
    host: str
    port: int
    topic: str
    qos: int = 1
    username: Optional[str] = None
    password: Optional[str] = None
    tls: bool = False
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    client_id: str = ""
    buffer: int = 10000          # results held while the broker is away (the oldest is discarded beyond)
    inflight: int = 100          # results handed to paho and not yet acknowledged
    keepalive: int = 30
    reconnect_min: float = 0.5
    reconnect_max: float = 8.0

    def __post_init__(self) -> None:
        if self.qos not in (0, 1, 2):
            raise MqttError(f"MQTT QoS must be 0, 1 or 2, got {self.qos}")
        if self.buffer < 1 or self.inflight < 1:
            raise MqttError("the MQTT buffer and in-flight window must be >= 1")
        if self.password is not None and not self.username:
            raise MqttError("an MQTT password needs a user name (--mqtt-user)")
        for name in ("ca_file", "cert_file", "key_file"):
            f = getattr(self, name)
            if f and not Path(f).is_file():
                raise MqttError(f"{f}: no such file (MQTT {name.replace('_', ' ')})")
        if (self.cert_file is None) != (self.key_file is None):
            raise MqttError("a client certificate needs both --mqtt-cert and --mqtt-key")
        self.tls = self.tls or self.ca_file is not None


class MqttSink:
    """``sink = MqttSink(cfg); sink.publish(result); ...; sink.close()`` — see the module doc."""

    def __init__(self, cfg: MqttConfig, warn: Optional[Callable[[str], None]] = None) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            from ..errors import MissingDependencyError
            raise MissingDependencyError("paho-mqtt", "mqtt", "publishing results over MQTT") from None
        self.cfg = cfg
        self._warn = warn or (lambda m: None)
        self._mqtt = mqtt
        self._lock = threading.Condition()
        self._buf: "collections.deque[bytes]" = collections.deque()
        self._inflight: Dict[int, bytes] = {}
        self._early: set = set()  # PUBACKs that arrived before publish() returned their mid
        self._closing = False
        self.connected = False
        self.published = 0   # results given to publish()
        self.delivered = 0   # acknowledged by the broker (QoS 1/2) or written to the socket (QoS 0)
        self.lost = 0        # discarded because the buffer was full
        self.connects = 0    # successful connections (a reconnect after a broker restart counts)
        self.last_error = ""
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv311)
        if cfg.username:
            c.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            import ssl
            c.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file,
                      cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.max_inflight_messages_set(cfg.inflight)
        c.reconnect_delay_set(min_delay=max(1, int(cfg.reconnect_min)), max_delay=max(1, int(cfg.reconnect_max)))
        c.on_connect, c.on_disconnect, c.on_publish = self._on_connect, self._on_disconnect, self._on_publish
        self.client = c
        c.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
        c.loop_start()
        self._worker = threading.Thread(target=self._run, name="wmoe-mqtt", daemon=True)
        self._worker.start()

    # --- paho callbacks (its network thread) ---------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            msg = f"MQTT broker {self.cfg.host}:{self.cfg.port} refused the connection: {reason_code}"
            if msg != self.last_error:
                self._warn(msg)
            self.last_error = msg
            return
        with self._lock:
            self.connected = True
            self.connects += 1
            self._lock.notify_all()
        if self.connects > 1:
            self._warn(f"MQTT: reconnected to {self.cfg.host}:{self.cfg.port} ({len(self._buf)} results buffered)")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was = self.connected
            self.connected = False
        if was and not self._closing:
            self._warn(f"MQTT: lost the broker {self.cfg.host}:{self.cfg.port} ({reason_code}); buffering results "
                       f"(at most {self.cfg.buffer}) and reconnecting")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            if self._inflight.pop(mid, None) is not None:
                self.delivered += 1
            else:
                self._early.add(mid)
            self._lock.notify_all()

    # --- the worker: buffer -> paho ----------------------------------------------------------------------------
    def _run(self) -> None:
        mqtt = self._mqtt
        while True:
            with self._lock:
                while not (self._closing and not self._buf) and not (
                        self.connected and self._buf and len(self._inflight) < self.cfg.inflight):
                    self._lock.wait(0.2)
                if self._closing and not self._buf:
                    return
                payload = self._buf.popleft()
            # never hold our lock in publish(): paho may call _on_publish under its own lock meanwhile
            info = self.client.publish(self.cfg.topic, payload, qos=self.cfg.qos)
            with self._lock:
                if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN) and self.cfg.qos > 0:
                    # NO_CONN: paho keeps a QoS>0 message and sends it after the reconnect
                    if info.mid in self._early:
                        self._early.discard(info.mid)
                        self.delivered += 1
                    else:
                        self._inflight[info.mid] = payload
                elif info.rc == mqtt.MQTT_ERR_SUCCESS:
                    self.delivered += 1
                else:  # paho's own queue is full: back to the front, try again shortly
                    self._buf.appendleft(payload)
                    self._lock.wait(0.05)

    # --- the loop's side ---------------------------------------------------------------------------------------
    def publish(self, result) -> None:
        """Queue one result (a :class:`~wmoe.runtime.results.FrameResult`, or bytes/str); never blocks for long."""
        payload = result if isinstance(result, bytes) else (
            result.encode() if isinstance(result, str) else result.to_json().encode())
        with self._lock:
            if len(self._buf) >= self.cfg.buffer:
                self._buf.popleft()
                self.lost += 1
                if self.lost == 1:
                    self._warn(f"MQTT: buffer of {self.cfg.buffer} results full (broker away): discarding the "
                               f"oldest, counted")
            self._buf.append(payload)
            self.published += 1
            self._lock.notify_all()

    @property
    def pending(self) -> int:
        """Results not yet acknowledged (buffered + in flight)."""
        with self._lock:
            return len(self._buf) + len(self._inflight)

    def wait_delivered(self, timeout: float) -> bool:
        """Wait until every published result is acknowledged (True) or ``timeout`` seconds pass (False)."""
        end = time.monotonic() + timeout
        with self._lock:
            while self._buf or self._inflight:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.2))
        return True

    def close(self, drain_s: float = 30.0) -> int:
        """Deliver what is pending (up to ``drain_s`` seconds), disconnect; returns the number of results not
        delivered (lost to a full buffer + still pending)."""
        self.wait_delivered(drain_s)
        with self._lock:
            undelivered = self.lost + len(self._buf) + len(self._inflight)
            self._closing = True
            self._buf.clear()
            self._lock.notify_all()
        self._worker.join(timeout=5)
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
        return undelivered

    def summary(self) -> str:
        return (f"MQTT {self.cfg.host}:{self.cfg.port}/{self.cfg.topic}: published {self.published}, delivered "
                f"{self.delivered}, lost {self.lost} (buffer full), connects {self.connects}")
