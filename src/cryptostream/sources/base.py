"""The ``Source`` seam: anything that yields batches of trade records.

Lifecycle: construct (cheap, no I/O) -> iterate ``batches()`` (opens files or connections
lazily and yields ``SourceBatch`` objects in arrival order) -> ``close()`` (idempotent,
releases everything; also called when iteration is abandoned early).

Failure behaviour: a bad *record* never raises; it comes back inside the batch as a
``Rejected`` (with a stable reason code and the raw payload) or as an ``ignored`` count.
Only a source that cannot go on at all (file missing, unreadable archive) raises, and then
a ``cryptostream.errors.SourceError`` whose message says what to do.

``finite`` tells the pipeline whether the stream ends (replay) or runs until stopped;
``clock`` is the event-time pacing the source applies (``None`` for "as fast as possible"),
which the pipeline uses to advance idle symbols' watermarks consistently.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from cryptostream.model import SourceBatch


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
