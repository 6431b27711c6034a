"""The HTTP side of ``wmoe app``: a standard-library ``ThreadingHTTPServer`` with one page and a small JSON API.

Routes (all answers to ``/api/*`` are JSON, errors ``{"error": "one line"}``; nothing else is served):

- ``GET /`` the page, ``GET /static/<file>`` its script and style (``wmoe/app/static``)
- ``GET /api/info`` model, stored decision, per-class thresholds, limits; ``GET /api/demo`` the demo picker's list;
  ``GET /api/stats`` request counts (``scored`` = model runs, ``decided``/``rendered`` = from the cache)
- ``POST /api/score?name=FILE`` with the file's bytes as the body (no multipart: the page sends the File object
  as is), or ``POST /api/score?demo=REL`` for a demo image: decode, score once, cache, answer the result
- ``POST /api/decide`` ``{"ids": [...], "threshold": t, "pixel_threshold": p, "cls": c}``: verdicts and defect
  areas at other thresholds from the cache (no model run)
- ``GET /api/overlay?id=ID&threshold=t&pixel_threshold=p&cls=c``: ``wmoe predict``'s overlay PNG from the cache

A bad request never ends the server: expected problems (a file that is not an image, too large, empty, 16-bit
notes, an unknown id) are 4xx with the message the page shows; anything else is a 500 whose one line is shown and
whose traceback goes to the server's stderr. Only loopback names are accepted in ``Host`` (a web page elsewhere
cannot reach the app through DNS rebinding).
"""
from __future__ import annotations

import json
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from ..errors import WMoEError, printable
from .service import AppService, UnknownResultError

STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
#: a request body above the upload limit is read and dropped up to this many bytes (so the client gets the 413
#: message instead of a reset connection); beyond it the connection is closed after the answer
DRAIN_LIMIT = 256 * 1024 * 1024
MAX_JSON_BODY = 1 << 20
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _static_files() -> Dict[str, Tuple[bytes, str]]:
    return {p.name: (p.read_bytes(), _TYPES.get(p.suffix, "application/octet-stream"))
            for p in STATIC.iterdir() if p.is_file() and p.suffix in _TYPES}


class AppServer(ThreadingHTTPServer):
    """The server; ``service`` answers, ``log_requests`` prints an access log line per request."""

    daemon_threads = True  # a stuck browser connection never blocks shutdown

    def __init__(self, addr: Tuple[str, int], service: AppService, log_requests: bool = False) -> None:
        self.service, self.log_requests = service, log_requests
        self.static = _static_files()
        super().__init__(addr, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser that goes away mid-request is routine, not an error worth a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    server: AppServer
    server_version = "wmoe-app"
    protocol_version = "HTTP/1.1"

    # --- plumbing ---------------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        if self.server.log_requests:
            sys.stderr.write(f"wmoe app: {self.address_string()} {format % args}\n")

    def _send(self, status: int, body: bytes, ctype: str, extra: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc, allow_nan=False).encode(), "application/json")

    def _query(self) -> Dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query, keep_blank_values=True).items()}

    def _check_host(self) -> None:
        bound = str(self.server.server_address[0]).lower()
        if bound not in LOOPBACK:  # served on purpose beyond this machine (--host): any name reaches it
            return
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if host not in LOOPBACK:
            raise _HttpError(HTTPStatus.FORBIDDEN, f"host {printable(host)[:60]!r} is not this app's address")

    def _body(self, limit: int, what: str) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, f"{what}: send it with a Content-Length")
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"{what}: bad Content-Length") from None
        if n < 0:
            self.close_connection = True
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"{what}: bad Content-Length")
        if n > limit:
            self._drain(n)
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"{what}: {n / 1e6:.1f} MB is above the upload limit of {limit / 1e6:.1f} MB "
                             f"(wmoe app --max-upload-mb)")
        data = self.rfile.read(n)
        if len(data) != n:
            self.close_connection = True
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"{what}: the upload was cut short ({len(data)} of {n} bytes)")
        return data

    def _drain(self, n: int) -> None:
        """Read and drop a too-large body (up to DRAIN_LIMIT) so the client reads the answer; then close."""
        self.close_connection = True
        left = min(n, DRAIN_LIMIT)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)

    def _handle(self, route: Callable[[], None]) -> None:
        svc = self.server.service
        try:
            self._check_host()
            route()
        except _HttpError as e:
            svc.count("rejected")
            self._json(e.status, {"error": str(e)})
        except UnknownResultError as e:
            svc.count("rejected")
            self._json(HTTPStatus.NOT_FOUND, {"error": printable(e)})
        except WMoEError as e:  # the user's file or input: the one-line message is the answer
            svc.count("rejected")
            self._json(HTTPStatus.BAD_REQUEST, {"error": printable(e)})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the browser went away; nothing to answer
        except Exception as e:  # noqa: BLE001 - a bug must not end the server: log it, answer one line
            svc.count("failed")
            sys.stderr.write(f"wmoe app: internal error on {self.command} {printable(self.path)[:200]}\n"
                             f"{traceback.format_exc()}")
            self.close_connection = True
            try:
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR,
                           {"error": f"internal error ({type(e).__name__}: {printable(e)[:300]}); "
                                     f"the details are in the app's log"})
            except OSError:
                pass

    # --- routes -----------------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._handle(self._post)

    def _get(self) -> None:
        svc, path, q = self.server.service, urlsplit(self.path).path, self._query()
        if path in ("/", "/index.html"):
            body, ctype = self.server.static["index.html"]
            self._send(HTTPStatus.OK, body, ctype)
        elif path.startswith("/static/") and path[len("/static/"):] in self.server.static:
            body, ctype = self.server.static[path[len("/static/"):]]
            self._send(HTTPStatus.OK, body, ctype)
        elif path == "/api/info":
            self._json(HTTPStatus.OK, svc.info())
        elif path == "/api/demo":
            self._json(HTTPStatus.OK, {"images": svc.demo_images()})
        elif path == "/api/stats":
            self._json(HTTPStatus.OK, svc.stats())
        elif path == "/api/overlay":
            entry = svc.get(q.get("id", ""))
            decision = svc.decision_for(q.get("cls", ""), q.get("threshold"), q.get("pixel_threshold"))
            self._send(HTTPStatus.OK, svc.overlay_png(entry, decision, q.get("cls", "")), "image/png")
        else:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no such page: {printable(path)[:100]}")

    def _post(self) -> None:
        svc, path, q = self.server.service, urlsplit(self.path).path, self._query()
        if path == "/api/score":
            if q.get("demo"):
                self._body(0, "a demo request")  # no body expected; read whatever came
                entry = svc.score_demo(q["demo"])
            else:
                name = printable(q.get("name") or "upload")[:200]
                entry = svc.score_upload(self._body(svc.cfg.max_upload_bytes, name), name)
            decision = svc.decision_for(q.get("cls", ""), q.get("threshold"), q.get("pixel_threshold"))
            self._json(HTTPStatus.OK, {"result": svc.view(entry, decision)})
        elif path == "/api/decide":
            raw = self._body(MAX_JSON_BODY, "a decide request")
            try:
                req = json.loads(raw or b"{}")
                if not isinstance(req, dict) or not isinstance(req.get("ids", []), list):
                    raise ValueError("expected {\"ids\": [...], ...}")
            except ValueError as e:
                raise _HttpError(HTTPStatus.BAD_REQUEST, f"a decide request: not valid JSON ({e})") from None
            self._json(HTTPStatus.OK, svc.decide(req.get("ids", []), str(req.get("cls") or ""),
                                                 req.get("threshold"), req.get("pixel_threshold")))
        else:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no such endpoint: {printable(path)[:100]}")


def make_server(service: AppService, host: str = "127.0.0.1", port: int = 8765,
                log_requests: bool = False) -> AppServer:
    """Bind (``port`` 0: a free port; see :attr:`AppServer.url`) without serving yet."""
    return AppServer((host, int(port)), service, log_requests=log_requests)


class _Stop(Exception):
    """SIGTERM: end serving like Ctrl-C does."""


def serve(service: AppService, host: str = "127.0.0.1", port: int = 8765, log_requests: bool = False,
          announce: Callable[[str], None] = print) -> int:
    """Serve until Ctrl-C or SIGTERM (both end it cleanly, status 0). ``announce`` gets the line with the URL."""
    import signal
    import threading

    server = make_server(service, host, port, log_requests)

    def stop(signum: int, frame: Any) -> None:
        # raised in the main thread, out of serve_forever; no helper thread calling shutdown(): a thread still alive
        # while the interpreter exits aborts it ("terminate called without an active exception", seen with torch)
        raise _Stop()

    old = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    announce(f"wmoe app: serving {service.scorer.describe()} at {server.url} (Ctrl-C stops it)")
    try:
        server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        server.server_close()
        service.scorer.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return 0
