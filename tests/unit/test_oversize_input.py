"""Oversized lines and frames are rejected as ``oversize`` without being read whole.

A line of hundreds of MB in a recording, a trade CSV or a kline file is skipped in bounded
memory (only its first 4 KB is kept, for the reject's raw payload); a WebSocket frame over
the limit is refused by the protocol layer before its payload is read, becomes a counted
reject, and the connection is reopened so that the trades after it still arrive.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from cs_unit_helpers import NOW_US, T0_US, T, assert_reconciled, config, json_line

from cryptostream.ml.klines import read_klines
from cryptostream.model import RejectReason
from cryptostream.processing.engine import Output, Processor
from cryptostream.sources.replay import ReplayFile, ReplaySource
from cryptostream.sources.trade_csv import read_trade_csv

HUGE = 300 << 20  # bytes of the huge line: far above what may be held in memory


def _sparse_file(path: Path, head: bytes, hole: int, tail: bytes) -> None:
    """``head`` + ``hole`` NUL bytes (a sparse hole: no disk used) + ``tail``."""
    with open(path, "wb") as fh:
        fh.write(head)
        fh.seek(len(head) + hole)
        fh.write(tail)


def _peak_mb(fn):
    tracemalloc.start()
    try:
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    return result, peak


def test_replay_skips_a_huge_recorded_line_in_bounded_memory(tmp_path):
    t = [T(i, 100.0 + i, 1.0, T0_US + i * 1_000_000) for i in (1, 2, 3)]
    path = tmp_path / "huge.jsonl"
    start = b'{"e":"trade","s":"BTCUSDT","pad":"'
    _sparse_file(path, json_line(t[0]) + b"\n" + start, HUGE,
                 b'"}\n' + json_line(t[1]) + b"\n" + json_line(t[2]) + b"\n")

    def replay():
        proc, out = Processor(config()), Output()
        for sb in ReplaySource([ReplayFile(path, None)]).batches():
            out.extend(proc.process(sb, NOW_US))
        return proc, out

    (proc, out), peak = _peak_mb(replay)
    assert peak < 100, f"replaying a {HUGE >> 20} MB line held {peak:.0f} MB"
    assert_reconciled(proc)
    assert [(r.reason, r.source_offset, r.symbol) for r in out.rejects] == [
        (RejectReason.OVERSIZE, 1, "BTCUSDT")]
    rej = out.rejects[0]
    assert len(rej.raw) <= 4096 and rej.raw.startswith('{"e":"trade"')
    assert f"line of {len(start) + HUGE + 2} bytes" in rej.detail and "not read" in rej.detail, rej.detail
    assert sorted(int(i) for a in out.trades for i in a.trade_id) == [1, 2, 3]
    assert proc.counters["BTCUSDT"].received == 4


def test_trade_csv_skips_a_huge_row_in_bounded_memory(tmp_path):
    good = [f"{i},100.0,1.0,100.0,{T0_US // 1000 + i},True,True".encode() for i in range(1, 5)]
    path = tmp_path / "BTCUSDT-trades-2024-08-09.csv"
    _sparse_file(path, good[0] + b"\n" + good[1] + b"\n5,", 64 << 20,
                 b",1,1,1,True,True\n" + good[2] + b"\n" + good[3] + b"\n")
    sbs, peak = _peak_mb(lambda: list(read_trade_csv(path, "BTCUSDT", "csv")))
    assert peak < 60, f"reading a 64 MB row held {peak:.0f} MB"
    proc, out = Processor(config()), Output()
    for sb in sbs:
        out.extend(proc.process(sb, NOW_US))
    assert_reconciled(proc)
    assert [(r.reason, r.source_offset) for r in out.rejects] == [(RejectReason.OVERSIZE, 2)]
    assert sorted(int(i) for a in out.trades for i in a.trade_id) == [1, 2, 3, 4]


def test_kline_file_counts_a_huge_row_as_bad(tmp_path):
    row = "1723161600000,1,2,0.5,1.5,10,1723161659999,15,7,5,7.5,0"
    path = tmp_path / "BTCUSDT-1m-2024-08-09.csv"
    _sparse_file(path, (row + "\n").encode() + b"x", 32 << 20,
                 ("\n" + row.replace("1723161600000", "1723161660000") + "\n").encode())
    k, peak = _peak_mb(lambda: read_klines(str(path)))
    assert peak < 40
    assert (k.rows, len(k.bars), k.bad_rows) == (3, 2, 1)


# -- WebSocket frames ----------------------------------------------------------------------------

class _Server:
    """A combined-stream endpoint: answers SUBSCRIBE, then per connection sends ``script``
    (the frames of connection 1, 2, ...)."""

    def __init__(self, script: list[list[bytes]], compression: str | None):
        self.script = script
        self.compression = compression
        self.connections = 0
        self.port = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _handle(self, ws):
        self.connections += 1
        frames = self.script[min(self.connections, len(self.script)) - 1]
        msg = json.loads(await ws.recv())
        await ws.send(json.dumps({"result": None, "id": msg["id"]}))
        for f in frames:
            await ws.send(f.decode())
        await ws.wait_closed()

    async def _main(self):
        from websockets.asyncio.server import serve

        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0, max_size=None,
                         compression=self.compression) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self._stop.wait()

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_oversize_websocket_frame_is_a_counted_reject_and_the_stream_goes_on(compression):
    """Uncompressed, the frame is refused from its header (size known); compressed
    (permessage-deflate), while decompressing past the limit."""
    from cryptostream.sources.binance import BinanceSource
    from cryptostream.sources.binance_stream import StreamOptions

    now_ms = int(time.time() * 1000)
    t1 = json_line(T(1, 100.0, 1.0, now_ms * 1000))
    t2 = json_line(T(2, 101.0, 1.0, now_ms * 1000 + 1000))
    big = b'{"stream":"btcusdt@trade","data":{"e":"trade","pad":"' + b"x" * 300_000 + b'"}}'
    with _Server([[t1, big], [t2]], compression) as server:
        src = BinanceSource(["BTCUSDT"], ws_url=f"ws://127.0.0.1:{server.port}",
                            rest_url=f"http://127.0.0.1:{server.port}", backfill=False,
                            duration_s=20, options=StreamOptions(max_frame_bytes=64 << 10,
                                                                 reconnect_base_s=0.05))
        proc, out = Processor(config(skew_s=60)), Output()
        deadline = time.monotonic() + 20
        try:
            for sb in src.batches():
                out.extend(proc.process(sb, NOW_US))
                if proc.counters.get("BTCUSDT") and proc.counters["BTCUSDT"].accepted >= 2 \
                        or time.monotonic() > deadline:
                    break
        finally:
            src.close()
        status = src.status()
    assert server.connections == 2, "the client did not reconnect after refusing the frame"
    assert sorted(int(i) for a in out.trades for i in a.trade_id) == [1, 2]
    oversize = [r for r in out.rejects if r.reason is RejectReason.OVERSIZE]
    assert len(oversize) == 1, out.rejects
    detail = oversize[0].detail
    assert "65536" in detail and "refused unread" in detail, detail
    if compression is None:
        assert f"frame of {len(big)} bytes" in detail, detail
    assert_reconciled(proc)
    assert proc.counters[""].received == 1  # the frame is counted (its symbol is unknown)
    assert status.detail["oversize_frames"] == 1 and status.reconnects == 1
