"""The calls the pipelines make into observability; this base does nothing (metrics off).

The pipelines hold a ``Telemetry`` and call it per loop turn, per batch (``with
telemetry.processing(): processor.process(...)``) and per sink write — never per trade. ``metrics.PipelineTelemetry`` overrides these; ``NO_TELEMETRY`` is the
shared do-nothing instance, so a pipeline without metrics pays one empty call per batch.
"""

from __future__ import annotations


class _NoContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


_NO_CONTEXT = _NoContext()


class Telemetry:
    """Hooks of a pipeline's hot path (all no-ops here)."""

    def beat(self) -> None:
        """The main loop turned once (liveness)."""

    def processing(self):
        """Context of processing one input batch (timed; counters consistent for scrapes)."""
        return _NO_CONTEXT

    def wrap_sink(self, sink):
        """The sink to write through (an instrumented proxy, or ``sink`` itself)."""
        return sink

    def watch(self, pipeline) -> None:
        """Read this pipeline's counters, source, queues at scrape time."""

    def close(self) -> None:
        """Stop serving (idempotent)."""


NO_TELEMETRY = Telemetry()
