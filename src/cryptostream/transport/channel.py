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
    """A ``Transport`` over ``queue.Queue``: ``put`` blocks when ``maxsize`` batches wait.

    ``close`` and ``fail`` never block: they raise a flag (and drop a wake-up marker in when
    there is room), and ``get`` ends once the queue is drained.
    """

    def __init__(self, maxsize: int = 8):
        self._q: queue.Queue = queue.Queue(maxsize=maxsize)
        self._closed = False
        self._error: BaseException | None = None
        self._done = False

    def put(self, batch: SourceBatch) -> None:
        self._q.put(batch)

    def get(self, timeout_s: float | None = None):
        """Next batch; ``None`` once closed and drained; ``TimeoutError`` (the class) on timeout.

        Re-raises the producer's exception (after the batches sent before it).
        """
        while not self._done:
            if self._closed and self._q.empty():
                return self._finish()
            try:
                item = self._q.get(timeout=timeout_s)
            except queue.Empty:
                if self._closed and self._q.empty():
                    return self._finish()
                return TimeoutError
            if item is not _CLOSED:
                return item
        return None

    def _finish(self):
        self._done = True
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        self._closed = True
        try:
            self._q.put_nowait(_CLOSED)
        except queue.Full:
            pass

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self.close()

    def depth(self) -> int:
        return self._q.qsize()


def feed(source, channel: InProcessChannel, stop) -> None:
    """Run ``source`` into ``channel`` until it ends or ``stop`` (an Event) is set; an error
    is handed to the consumer, which re-raises it from ``get`` (the body of a source thread)."""
    try:
        for sb in source.batches():
            if stop.is_set():
                break
            channel.put(sb)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
        channel.fail(exc)
        return
    channel.close()
