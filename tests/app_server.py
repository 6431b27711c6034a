"""Start and stop a real ``wmoe app`` process on a free loopback port (shared by the app's tests)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional, Sequence


class AppProcess:
    """``wmoe app ...`` in a subprocess; ``url`` is read from its first line (``--port 0``: a free port)."""

    def __init__(self, args: Sequence[str], command: Optional[List[str]] = None, env: Optional[dict] = None,
                 cwd: Optional[Path] = None, start_timeout: float = 180.0) -> None:
        cmd = (command or [sys.executable, "-m", "wmoe"]) + ["app", *map(str, args), "--port", "0"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=cwd)
        self.stderr: List[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._url = ""
        self._deadline = time.monotonic() + start_timeout

    @property
    def url(self) -> str:
        """The app's URL, once it serves (the first access waits: the process starts while the caller works)."""
        while not self._url:
            line = self.proc.stdout.readline()
            if not line:  # the process ended before serving
                self.proc.wait(timeout=10)
                raise RuntimeError(f"wmoe app exited with {self.proc.returncode}: {''.join(self.stderr)[-3000:]}")
            if "serving" in line and "http://" in line:
                self._url = "http://" + line.split("http://", 1)[1].split()[0]
            elif time.monotonic() > self._deadline:
                self.stop()
                raise RuntimeError(f"wmoe app did not start in time: {''.join(self.stderr)[-3000:]}")
        return self._url

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def get(self, path: str) -> "tuple[int, bytes]":
        try:
            with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def post(self, path: str, body: bytes = b"", headers: Optional[dict] = None) -> "tuple[int, dict]":
        req = urllib.request.Request(self.url + path.lstrip("/"), data=body, method="POST", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stats(self) -> dict:
        status, body = self.get("/api/stats")
        assert status == 200, body
        return json.loads(body)

    def stop(self) -> int:
        """SIGTERM (a clean shutdown, status 0); killed after 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

