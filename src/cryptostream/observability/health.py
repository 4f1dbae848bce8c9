"""Liveness and readiness of a process's pipelines, as ``/healthz`` and ``/readyz`` answer.

Live: the main loop has turned within ``stale_after_s`` (or is still starting). Ready: the
loop runs, every source is connected or replaying/simulating, the sinks are open and their
last write succeeded, and (Kafka roles) the broker answers a metadata request (cached for
a few seconds, asked from the HTTP thread through a client of its own).
"""

from __future__ import annotations

import threading
import time

READY_SOURCE_STATES = frozenset({"connected", "replay", "simulated", "polling"})
BROKER_CACHE_S = 5.0
BROKER_TIMEOUT_S = 2.0


class BrokerProbe:
    """Is the Kafka broker reachable? A metadata request at most every ``BROKER_CACHE_S``."""

    def __init__(self, broker: str):
        self.broker = broker
        self._admin = None
        self._lock = threading.Lock()
        self._at = -1e9
        self._result: tuple[bool, str] = (False, "not asked yet")

    def check(self) -> tuple[bool, str]:
        with self._lock:
            if time.monotonic() - self._at < BROKER_CACHE_S:
                return self._result
            try:
                from confluent_kafka.admin import AdminClient

                if self._admin is None:
                    self._admin = AdminClient({"bootstrap.servers": self.broker, "log_level": 0})
                md = self._admin.list_topics(timeout=BROKER_TIMEOUT_S)
                self._result = (True, f"{self.broker}: {len(md.brokers)} broker(s)")
            except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
                self._result = (False, f"{self.broker} not reachable ({type(exc).__name__}: {exc})")
            self._at = time.monotonic()
            return self._result


class Health:
    """Liveness and readiness of the pipelines a ``PipelineTelemetry`` watches."""

    def __init__(self, telemetry, broker: str | None = None, stale_after_s: float = 30.0):
        self.t = telemetry
        self.stale_after_s = stale_after_s
        self.broker = BrokerProbe(broker) if broker else None

    def live(self) -> tuple[bool, dict]:
        t = self.t
        body = {"role": t.role, "uptime_s": round(time.monotonic() - t.started, 3)}
        if t.last_beat is None:
            return True, {"status": "starting", **body}
        age = time.monotonic() - t.last_beat
        ok = age < self.stale_after_s
        return ok, {"status": "alive" if ok else "stalled", "loop_age_s": round(age, 3), **body}

    def ready(self) -> tuple[bool, dict]:
        t = self.t
        checks: dict[str, dict] = {}
        live, lb = self.live()
        running = t.last_beat is not None and live
        checks["loop"] = {"ok": running, "detail": lb["status"]}
        for p in t.pipelines:
            src = getattr(p, "source", None)
            if src is None or hasattr(p, "procs"):
                continue
            st = src.status()
            detail = st.state + (f" (attempt {st.attempt})" if st.attempt else "")
            checks[f"source:{src.name}"] = {"ok": st.state in READY_SOURCE_STATES,
                                            "detail": detail}
        if any(not hasattr(p, "cleaner") for p in t.pipelines):
            ok = t.sink_open and t.sink_error is None
            detail = t.sink_error or ("open" if t.sink_open else "not open")
            checks["sinks"] = {"ok": ok, "detail": detail}
        if self.broker is not None:
            ok, detail = self.broker.check()
            checks["broker"] = {"ok": ok, "detail": detail}
        ready = all(c["ok"] for c in checks.values())
        return ready, {"status": "ready" if ready else "not ready", "role": t.role,
                       "checks": checks}
