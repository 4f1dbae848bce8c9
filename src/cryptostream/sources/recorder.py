"""Record a live Binance stream to ``<ns> <json>`` lines, the format the replay source reads.

Every market message is written exactly as received, prefixed with its local receive
time in nanoseconds (``.gz`` output is compressed). The connection handling is the live
source's (reconnects, rotation, watchdog); control replies are not written. What the
stream did not deliver (while disconnected) is not in the recording: a replay of it sees
the gap, like the live pipeline does before its backfill.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cryptostream.errors import SourceError
from cryptostream.sources.binance_stream import StreamConnections, StreamOptions, StreamState


@dataclass
class RecordSummary:
    messages: int = 0
    bytes: int = 0
    seconds: float = 0.0
    reconnects: int = 0


def _open_out(path: Path) -> IO[bytes]:
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return gzip.open(path, "wb", compresslevel=5) if path.suffix == ".gz" else open(path, "wb")
    except OSError as exc:
        raise SourceError(f"cannot write the recording {path}: {exc}") from exc


def record(url: str, symbols: Sequence[str], out: Path, stream: str = "trade",
           duration_s: float | None = None, stop: threading.Event | None = None,
           options: StreamOptions | None = None,
           on_progress: Callable[[RecordSummary, StreamState], None] | None = None) -> RecordSummary:
    """Write every message of ``symbols``' streams to ``out`` until ``duration_s`` or ``stop``."""
    stop = stop or threading.Event()
    summary = RecordSummary()
    f = _open_out(out)

    def on_frame(frame: bytes, ns: int) -> None:
        line = b"%d %b\n" % (ns, frame)
        f.write(line)
        summary.messages += 1
        summary.bytes += len(line)

    conn = StreamConnections(url, [f"{s.lower()}@{stream}" for s in symbols], on_frame,
                             lambda event: None, options)
    t0 = time.monotonic()

    async def main() -> None:
        halt = asyncio.Event()
        task = asyncio.create_task(conn.run(halt))
        end = None if duration_s is None else t0 + duration_s
        while not stop.is_set() and (end is None or time.monotonic() < end) and not task.done():
            await asyncio.sleep(0.2)
            summary.seconds = time.monotonic() - t0
            summary.reconnects = conn.state.reconnects
            if on_progress:
                on_progress(summary, conn.state)
        halt.set()
        await task

    try:
        asyncio.run(main())
    finally:
        f.close()
    summary.seconds = time.monotonic() - t0
    return summary
