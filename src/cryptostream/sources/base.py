"""The ``Source`` seam: anything that yields batches of trade records.

Lifecycle: construct (cheap, no I/O) -> iterate ``batches()`` (opens files or connections
lazily and yields ``SourceBatch`` objects in arrival order) -> ``close()`` (idempotent,
releases everything; also called when iteration is abandoned early).

Failure behaviour: a bad *record* never raises; it comes back inside the batch as a
``Rejected`` (with a stable reason code and the raw payload) or as an ``ignored`` count.
Only a source that cannot go on at all (file missing, unreadable archive) raises, and then
a ``cryptostream.errors.SourceError`` whose message says what to do.

``finite`` tells the pipeline whether the stream ends (replay) or runs until stopped;
``speed`` is the event-time pacing the source applies (``None`` for "as fast as possible"),
which the pipeline uses to advance idle symbols' watermarks consistently.
``catching_up()`` is True while the source may still deliver trades older than those it
already delivered (reconnecting, backfilling a gap): idle watermarks must not advance
meanwhile. ``status()`` is what the dashboard and ``cryptostream stats`` show about the
source (never let replayed or simulated data pass for live: their state says so).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from cryptostream.model import SourceBatch


@dataclass
class SourceStatus:
    """A snapshot of a source's health (times are epoch seconds)."""

    #: connected | connecting | reconnecting | stopped | replay | simulated | polling
    state: str
    attempt: int = 0  # consecutive failed connection attempts
    reconnects: int = 0
    last_message_at: float | None = None
    clock_skew_ms: float | None = None  # exchange clock - local clock
    backfill_pending: int = 0
    backfilled_trades: int = 0
    detail: dict = field(default_factory=dict)  # everything else, shown as JSON


class OfflineSource:
    """Defaults for sources that read files or generate data (no connection to lose)."""

    state = "replay"

    def catching_up(self) -> bool:
        return False

    def status(self) -> SourceStatus:
        return SourceStatus(self.state)


@runtime_checkable
class Source(Protocol):
    name: str
    finite: bool

    def batches(self) -> Iterator[SourceBatch]:
        """Yield batches until the input is exhausted (finite) or ``close()`` is called."""
        ...

    def close(self) -> None:
        """Stop producing and release files/sockets. Safe to call twice."""
        ...

    @property
    def speed(self) -> float | None:
        """Event time per wall time (1.0 = real time), or None when unpaced."""
        ...

    def catching_up(self) -> bool:
        """True while older trades may still come (reconnecting, backfilling)."""
        ...

    def status(self) -> SourceStatus:
        """Connection state and counters, for stats and the dashboard."""
        ...


class NoTrades(OfflineSource):
    """The trade source of a run that only polls reference prices: yields nothing until closed."""

    name = "none"
    finite = False
    state = "polling"

    def __init__(self, duration_s: float | None = None) -> None:
        self._closed = threading.Event()
        self.duration_s = duration_s

    @property
    def speed(self) -> float | None:
        return 1.0

    def batches(self) -> Iterator[SourceBatch]:
        self._closed.wait(self.duration_s)
        return
        yield

    def close(self) -> None:
        self._closed.set()
