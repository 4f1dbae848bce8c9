"""The loopback HTTP endpoint of a role (/metrics, /healthz, /readyz) and its client.

One small ``ThreadingHTTPServer`` in a daemon thread on 127.0.0.1. ``observe`` builds a
role's telemetry and starts the endpoint (``--metrics-port 0``: neither); ``probe`` is what
``cryptostream health`` asks.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptostream.errors import ConfigError, CryptoStreamError
from cryptostream.observability import DEFAULT_METRICS_PORT
from cryptostream.observability.hooks import NO_TELEMETRY, Telemetry

log = logging.getLogger("cryptostream.observability")

HOST = "127.0.0.1"


class MetricsServer:
    """Serves ``registry`` at /metrics and ``health`` (``live()``/``ready()``) at /healthz,
    /readyz; both health answers are JSON, 200 when true and 503 when false."""

    def __init__(self, registry, health, host: str = HOST, port: int = DEFAULT_METRICS_PORT):
        self.registry, self.health, self.host = registry, health, host
        self._port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._port

    def start(self) -> None:
        """Bind (raises ``OSError`` when the port is taken) and serve in a daemon thread."""
        handler = type("Handler", (_Handler,), {"registry": self.registry, "health": self.health})
        self._httpd = ThreadingHTTPServer((self.host, self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    registry = None
    health = None
    server_version = "cryptostream"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, body = self.health.live() if path == "/healthz" else self.health.ready()
                self._send(200 if ok else 503, json.dumps(body).encode() + b"\n",
                           "application/json")
            elif path == "/":
                self._send(200, b"cryptostream: /metrics /healthz /readyz\n", "text/plain")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")
        except Exception as exc:  # noqa: BLE001 - a failing collector must not kill the server
            log.warning("serving %s failed: %s", path, exc, extra={"event": "metrics_error"})
            self._send(500, f"error: {type(exc).__name__}\n".encode(), "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        return


def start_server(registry, health, port: int | None, what: str) -> MetricsServer | None:
    """Serve on 127.0.0.1:``port`` (None: the default port, skipped with a warning when it
    is taken; an explicit port that is taken is an error)."""
    server = MetricsServer(registry, health, port=DEFAULT_METRICS_PORT if port is None else port)
    try:
        server.start()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if port is None:
            log.warning("%s: metrics not served, %s:%d is taken (%s); choose a free port with "
                        "--metrics-port N", what, HOST, DEFAULT_METRICS_PORT, reason,
                        extra={"event": "metrics_off"})
            return None
        raise ConfigError(f"cannot serve metrics on {HOST}:{port} ({reason}): another program "
                          "probably uses it; pick a free port with --metrics-port N, or 0 to "
                          "turn metrics off") from exc
    log.info("%s: metrics on http://%s:%d/metrics (health: /healthz, /readyz)", what, HOST,
             server.port, extra={"event": "metrics_on", "port": server.port})
    return server


def observe(settings, role: str) -> Telemetry:
    """The telemetry of ``role`` with its endpoint started, or ``NO_TELEMETRY`` when
    ``metrics_port`` is 0 (or the default port is taken). Pipelines given it are then
    registered with ``telemetry.watch(pipeline)``."""
    if settings.metrics_port == 0:
        return NO_TELEMETRY
    from cryptostream.observability.metrics import MAX_EXTRA_SYMBOLS, PipelineTelemetry

    # live and simulated sources have exactly the configured symbols; replays and Kafka
    # `process` learn theirs from the data (bounded)
    configured: tuple[str, ...] = ()
    if settings.trade_source in ("binance", "simulate") and role in ("run", "ingest"):
        configured = settings.symbols
    else:
        from cryptostream.sources.replay import ReplayFile

        configured = tuple(f.symbol for f in map(ReplayFile.parse, settings.replay) if f.symbol)
    extra = 0 if settings.trade_source in ("binance", "simulate") and role != "process" \
        else MAX_EXTRA_SYMBOLS
    t = PipelineTelemetry(role, configured, extra, broker=settings.broker)
    t.server = start_server(t.registry, t.health, settings.metrics_port, f"{role}")
    return t if t.server is not None else NO_TELEMETRY


def probe(host: str, port: int, timeout_s: float = 5.0) -> tuple[bool, dict, dict]:
    """(ready, /readyz body, /healthz body) of the role serving ``host:port``; raises
    ``CryptoStreamError`` when nothing answers there."""

    def get(path: str) -> tuple[int, dict]:
        url = f"http://{host}:{port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {"status": f"HTTP {exc.code}"}
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CryptoStreamError(
                f"nothing answers health checks on {host}:{port} ({reason}); is a cryptostream "
                f"role (run, ingest, process, dashboard) running with --metrics-port {port}?"
            ) from exc

    live_code, live = get("/healthz")
    ready_code, ready = get("/readyz")
    return ready_code == 200 and live_code == 200, ready, live
