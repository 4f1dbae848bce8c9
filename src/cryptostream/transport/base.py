"""The ``Transport`` seam: carries source batches from the ingest side to the processor.

Lifecycle: ``put`` from the producer side (blocks when the transport is full: that is the
backpressure that keeps memory bounded), ``close`` when the producer is done, ``get`` on the
consumer side until it returns ``None`` (closed and drained). ``fail`` hands a producer-side
exception to the consumer, which re-raises it from ``get``.
"""

from __future__ import annotations

from typing import Protocol

from cryptostream.model import SourceBatch


class Transport(Protocol):
    def put(self, batch: SourceBatch) -> None: ...

    def get(self, timeout_s: float | None = None) -> SourceBatch | None | type[TimeoutError]: ...

    def close(self) -> None: ...

    def fail(self, exc: BaseException) -> None: ...
