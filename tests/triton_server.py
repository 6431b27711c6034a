"""A real Triton Inference Server for the tests: the ``tritonserver`` binary that the nvidia-pytriton wheel bundles
(server 2.51, Python backend only), run from the Python 3.12 env that ``make test`` creates (``.venv-triton``).

What the bundle needs, found by running it: the Python-backend stub built for the env's Python copied into
``backends/python``, ``LD_LIBRARY_PATH`` at the wheel's bundled libraries and at that interpreter's
``libpython3.12.so``, and the env's ``bin`` first on ``PATH`` (the embedded interpreter finds the env's
site-packages, where wmoe's runtime is installed, through it). Under Python 3.11 the bundled stub fails.
Loopback only, free ports, bounded waits; :meth:`LocalTriton.stop` sends SIGTERM and reports the exit code.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]


class Unavailable(RuntimeError):
    """The server cannot run on this machine; the message says why (tests skip with it)."""


def server_env() -> Path:
    env = Path(os.environ.get("WMOE_TRITON_ENV", ROOT / ".venv-triton"))
    py = env / "bin" / "python"
    if not py.exists():
        raise Unavailable(f"no Triton server env at {env} (make test creates it with a Python 3.12 interpreter; "
                          "none was found, or set WMOE_TRITON_ENV)")
    return env


def _env_python_info(env: Path) -> "tuple[str, str]":
    code = "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); print(sysconfig.get_config_var('LIBDIR'))"
    out = subprocess.run([str(env / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise Unavailable(f"the Python of {env} does not run: {out.stderr[-500:]}")
    version, libdir = out.stdout.split()
    return version, libdir


def free_ports(n: int) -> List[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalTriton:
    """``LocalTriton(repo, workdir).start()`` -> a ready server on 127.0.0.1 (explicit model control: no model
    is loaded until a client asks)."""

    def __init__(self, repo: Path, workdir: Path) -> None:
        self.repo, self.workdir = Path(repo), Path(workdir)
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / "tritonserver.log"
        self.http_port = self.grpc_port = self.metrics_port = 0

    def _layout(self) -> "tuple[Path, dict]":
        env = server_env()
        version, libdir = _env_python_info(env)
        site = next(iter((env / "lib").glob("python*/site-packages")), None)
        dist = site / "pytriton" / "tritonserver" if site else None
        if dist is None or not (dist / "bin" / "tritonserver").is_file():
            raise Unavailable(f"nvidia-pytriton is not installed in {env} (no bundled tritonserver)")
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise Unavailable(f"nvidia-pytriton has no Python-backend stub for Python {version}")
        if not list(Path(libdir).glob(f"libpython{version}*.so*")):
            raise Unavailable(f"no shared libpython{version} in {libdir}: the stub needs a Python built with "
                              "--enable-shared (pyenv's is)")
        server = self.workdir / "tritonserver"
        if not server.exists():
            shutil.copytree(dist, server, ignore=shutil.ignore_patterns("python_backend_stubs"))
            shutil.copy(stub, server / "backends" / "python" / "triton_python_backend_stub")
        libs = [str(site / "nvidia_pytriton.libs"), libdir] + [p for p in [os.environ.get("LD_LIBRARY_PATH")] if p]
        run_env = dict(os.environ, LD_LIBRARY_PATH=":".join(libs), PATH=f"{env / 'bin'}:{os.environ['PATH']}")
        run_env.pop("PYTHONPATH", None)
        return server, run_env

    def start(self, timeout: float = 90.0) -> "LocalTriton":
        server, run_env = self._layout()
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        cmd = [str(server / "bin" / "tritonserver"), f"--model-repository={self.repo}",
               f"--backend-directory={server / 'backends'}", f"--cache-directory={server / 'caches'}",
               "--model-control-mode=explicit", "--exit-timeout-secs=20", "--log-verbose=0",
               "--http-address=127.0.0.1", f"--http-port={self.http_port}",
               "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
               "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}"]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=run_env,
                                     cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"tritonserver exited with {self.proc.returncode} at start: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/live", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise Unavailable(f"tritonserver not live after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60.0) -> Optional[int]:
        """SIGTERM, wait for the server to unload its models and exit; SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode
