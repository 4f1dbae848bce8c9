"""The dashboard role's /metrics, /healthz, /readyz, served by a small process beside Streamlit.

``cryptostream dashboard`` replaces itself with Streamlit (exec, same pid), so it starts
this sidecar first: live while the dashboard process runs, ready when Streamlit's own
health endpoint answers; metrics are the dashboard process's ``process_*`` (RSS, CPU, open
files), ``cryptostream_info{role="dashboard"}`` and ``cryptostream_ready``. The sidecar
exits when the dashboard does (its parent changes).
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import subprocess
import sys
import time
import urllib.request

from cryptostream.errors import ConfigError

log = logging.getLogger("cryptostream.observability")
START_TIMEOUT_S = 15.0


class DashboardHealth:
    """Live: the dashboard process exists. Ready: Streamlit answers ``app_url``."""

    def __init__(self, pid: int, app_url: str):
        self.pid, self.app_url, self.started = pid, app_url, time.monotonic()

    def live(self) -> tuple[bool, dict]:
        ok = os.getppid() == self.pid
        return ok, {"status": "alive" if ok else "gone", "role": "dashboard", "pid": self.pid,
                    "uptime_s": round(time.monotonic() - self.started, 3)}

    def ready(self) -> tuple[bool, dict]:
        try:
            with urllib.request.urlopen(self.app_url, timeout=2) as r:
                ok, detail = r.status == 200, f"HTTP {r.status}"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        return ok, {"status": "ready" if ok else "not ready", "role": "dashboard",
                    "checks": {"streamlit": {"ok": ok, "detail": detail}}}


def _registry(health: DashboardHealth):
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client.core import GaugeMetricFamily

    from cryptostream import __version__

    class _Collector:
        def collect(self):
            info = GaugeMetricFamily("cryptostream_info", "Role and version of this process",
                                     labels=["role", "version"])
            info.add_metric(["dashboard", __version__], 1)
            yield info
            yield GaugeMetricFamily("cryptostream_ready", "1 when /readyz answers 200",
                                    value=int(health.ready()[0]))

    reg = CollectorRegistry()
    reg.register(_Collector())
    ProcessCollector(pid=lambda: health.pid, registry=reg)
    return reg


def main(argv: list[str] | None = None) -> int:
    from cryptostream.observability import logs
    from cryptostream.observability.server import start_server

    ap = argparse.ArgumentParser(prog="cryptostream-dashboard-metrics")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int)
    ap.add_argument("--app-url", required=True)
    ap.add_argument("--log-format", default="human")
    a = ap.parse_args(argv)
    logs.configure(a.log_format)
    health = DashboardHealth(a.pid, a.app_url)
    try:
        server = start_server(_registry(health), health, a.port, "dashboard")
    except ConfigError as exc:
        print(f"error: {exc}", flush=True)
        return 1
    print("ready" if server else "off", flush=True)
    if server is None:
        return 0
    try:
        while os.getppid() == a.pid:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


def start(port: int | None, app_url: str, log_format: str) -> None:
    """Start the sidecar for this process (about to become Streamlit); raise ``ConfigError``
    when an explicit ``port`` cannot be served."""
    cmd = [sys.executable, "-m", "cryptostream.observability.sidecar", "--pid", str(os.getpid()),
           "--app-url", app_url, "--log-format", log_format]
    if port is not None:
        cmd += ["--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    line = proc.stdout.readline().strip() if ready else ""
    proc.stdout.close()
    if line.startswith("error:"):
        proc.wait(5)
        raise ConfigError(line.removeprefix("error:").strip())
    if line not in ("ready", "off"):
        log.warning("the dashboard's metrics endpoint did not start (%s)", line or "timeout",
                    extra={"event": "metrics_off"})


if __name__ == "__main__":
    sys.exit(main())
