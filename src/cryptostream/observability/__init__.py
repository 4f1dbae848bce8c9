"""Metrics, health endpoints and structured logs of every role (docs/architecture.md, 16).

``hooks`` is what the pipelines call (a no-op base, so metrics off cost nothing);
``metrics`` the telemetry and its histograms; ``collector`` what is read at scrape time;
``health`` liveness and readiness; ``server`` the loopback HTTP endpoint and
``cryptostream health``; ``logs`` the log format and redaction; ``sidecar`` the endpoint
of the dashboard role.
"""

DEFAULT_METRICS_PORT = 9108
