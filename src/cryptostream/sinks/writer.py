"""Background writer: hands processor output to the sinks in a thread of its own.

DuckDB releases the GIL while it inserts, so writing in a second thread lets the next batch
be decoded and processed meanwhile. The hand-off is bounded (``depth`` flushes in flight):
a slow store slows the pipeline down instead of growing memory. A write error is re-raised
in the pipeline's thread at the next ``submit`` or at ``close``.

Group commit: the writer takes every flush queued while it was busy and writes them as one
transaction (outputs concatenated; the last stats, checkpoint and retention cut win). A
store's cost per transaction is mostly fixed (~3 ms here), so under load the writes grow
instead of queueing, and a live pipeline can hand over each batch as soon as the writer is
``idle()`` without paying that fixed cost per batch.
"""

from __future__ import annotations

import queue
import threading

from cryptostream.processing.engine import Output
from cryptostream.sinks.duckdb_sink import DuckDBSink
from cryptostream.sinks.lake import ParquetLake

_STOP = object()


class SinkWriter:
    """Writes ``(output, stats)`` flushes in order, in a background thread."""

    def __init__(self, sink, lake: ParquetLake | None, lake_interval_s: float,
                 depth: int = 2, lake_source: DuckDBSink | None = None):
        self.sink = sink
        self.lake_source = lake_source if lake_source is not None else sink
        self.lake = lake
        self.lake_interval_s = lake_interval_s
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._busy = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="sink-writer", daemon=True)
        self._thread.start()

    def submit(self, out: Output, stats: list[dict], now_us: int,
               checkpoints: list = (), prune_before_us: dict[str, int] | None = None) -> None:
        """Queue one flush; ``checkpoints`` are written in the same transaction; then the
        trades older than ``prune_before_us[symbol]`` are deleted (retention)."""
        self._raise()
        self._q.put((out, stats, now_us, checkpoints, prune_before_us))

    def idle(self) -> bool:
        """Nothing queued and nothing being written: a flush submitted now starts at once."""
        return not self._busy and self._q.empty()

    def depth(self) -> int:
        """Flushes submitted and not yet taken by the writer thread (for the metrics)."""
        return self._q.qsize()

    def close(self, final_lake_export: bool = True) -> None:
        """Wait for every submitted flush to be written (then export the lake)."""
        self._q.put(_STOP)
        self._thread.join()
        self._raise()
        if final_lake_export and self.lake:
            self.lake.export_dirty(self.lake_source, final=True)

    def abort(self) -> None:
        """Stop without raising (used on the error path; a no-op after ``close``)."""
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._q.put(_STOP)
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _take(self) -> tuple[list, bool]:
        """The next flush and every flush queued behind it; True when _STOP came too."""
        item = self._q.get()
        if item is _STOP:
            return [], True
        self._busy = True
        items = [item]
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return items, False
            if item is _STOP:
                return items, True
            items.append(item)

    def _loop(self) -> None:
        while True:
            items, stop = self._take()
            if items and self._error is None:  # after a failure nothing more is written
                try:
                    self._write(*merged(items))
                except BaseException as exc:  # noqa: BLE001 - re-raised in the pipeline thread
                    self._error = exc
            self._busy = False
            if stop:
                return

    def _write(self, out, stats, now_us, checkpoints, prune) -> None:
        self.sink.write(out, stats, now_us, checkpoints=checkpoints)
        if prune:
            self.sink.prune_trades(prune)
            if self.lake:
                self.lake.prune_trades(prune)
        if self.lake:
            self.lake.mark(out)
            self.lake.export_dirty(self.lake_source, final=False,
                                   interval_s=self.lake_interval_s)


def merged(items: list[tuple]) -> tuple:
    """Queued flushes ``(output, stats, now_us, checkpoints, prune)`` as one flush: outputs
    in order, stats rows in order (the sinks keep the last row per key), the last checkpoint
    per partition, the latest retention cut per symbol."""
    if len(items) == 1:
        return items[0]
    out = Output()
    stats: list[dict] = []
    checkpoints: dict[tuple, object] = {}
    prune: dict[str, int] = {}
    for o, st, _now, cps, pr in items:
        out.extend(o)
        stats.extend(st)
        for cp in cps:
            checkpoints[(cp.group, cp.topic, cp.partition)] = cp
        for sym, before in (pr or {}).items():
            prune[sym] = max(before, prune.get(sym, before))
    return out, stats, items[-1][2], list(checkpoints.values()), prune or None
