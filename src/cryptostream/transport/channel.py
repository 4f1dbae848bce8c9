"""In-process bounded channel between a source thread and the processor (embedded mode).

>>> ch = InProcessChannel(maxsize=2)
>>> ch.close(); ch.get(timeout_s=0.1) is None
True
"""

from __future__ import annotations

import queue

from cryptostream.model import SourceBatch

_CLOSED = object()


class InProcessChannel:
    """A ``Transport`` over ``queue.Queue``: ``put`` blocks when ``maxsize`` batches wait."""

    def __init__(self, maxsize: int = 8):
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self._done = False

    def put(self, batch: SourceBatch) -> None:
        self._q.put(batch)

    def get(self, timeout_s: float | None = None):
        """Next batch; ``None`` once closed and drained; ``TimeoutError`` (the class) on timeout."""
        if self._done:
            return None
        try:
            item = self._q.get(timeout=timeout_s)
        except queue.Empty:
            return TimeoutError
        if item is _CLOSED:
            self._done = True
            return None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def close(self) -> None:
        self._q.put(_CLOSED)

    def fail(self, exc: BaseException) -> None:
        self._q.put(exc)

    def depth(self) -> int:
        return self._q.qsize()
