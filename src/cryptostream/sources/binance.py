"""The live Binance source: stream trades, detect id gaps, backfill them over REST.

Threads: an asyncio loop (its own thread) runs the stream connection (``binance_stream``)
and the REST backfills (``binance_rest``); ``batches()`` runs in the pipeline's source
thread, decodes what the loop buffered and yields ``SourceBatch`` objects.

* Every frame is stamped with its local receive time (ns) as it is read and put in a
  bounded buffer (``buffer_messages``). When the consumer falls that far behind, new frames
  are not kept (counted as ``overflow_dropped``); the socket is still read, so pongs never
  wait, and the trades lost that way come back as a gap and its backfill.
* Trade ids are consecutive per symbol: a jump opens a backfill of the missing ids from
  ``GET /api/v3/historicalTrades`` (``aggTrades`` for ``@aggTrade``). After a reconnect or
  the replacement of a silent connection, every symbol is caught up from its last id, so
  trades missed while disconnected are fetched even for a symbol that stays quiet.
* Backfilled trades are turned back into stream messages and decoded by the same code,
  under the source name ``binance-rest`` and without a receive time (they were not
  received live; the clock-skew check does not apply to them).
* Windows wait for the backfill: the processor holds a symbol's watermark while one of
  its gaps is open (``--backfill-wait``), and ``catching_up()`` stops idle symbols'
  watermarks from advancing while disconnected or while a catch-up is in flight.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cryptostream.errors import SourceError
from cryptostream.model import Rejected, RejectReason, SourceBatch, SymbolCodes, TradeBatch
from cryptostream.sources.base import SourceStatus
from cryptostream.sources.binance_messages import decode_lines
from cryptostream.sources.binance_rest import PAGE_LIMIT, BackfillError, BinanceRest, RateLimited
from cryptostream.sources.binance_stream import StreamConnections, StreamOptions

log = logging.getLogger("cryptostream.sources.binance")

DEFAULT_WS_URL = "wss://stream.binance.com:9443"
DEFAULT_REST_URL = "https://api.binance.com"
MAX_FRAMES_PER_BATCH = 5000
#: frames arriving within this long of the first one form one batch: per-batch costs
#: (~1 ms in the processor) then do not grow with the message rate ...
BATCH_WINDOW_S = 0.01
#: ... from this many frames per second on; below it a frame is handed on at once (waiting
#: would only add the window to each trade's latency)
BATCH_MIN_RATE = 200.0
BACKFILL_ATTEMPTS = 6
#: no frame for this long: the connection may be stalled (see ``catching_up``)
SILENT_AFTER_S = 1.0
DRAIN_AT_END_S = 10.0


@dataclass(frozen=True, slots=True)
class _RefusedFrame:
    """Queued in stream order for a frame the connection refused as too big."""

    size: int | None
    limit: int
    ns: int


class BinanceSource:
    """Live trades of ``symbols`` from Binance's combined stream, with gap backfill."""

    finite = False
    name = "binance"

    def __init__(self, symbols: Sequence[str], ws_url: str = DEFAULT_WS_URL,
                 rest_url: str = DEFAULT_REST_URL, stream: str = "trade",
                 duration_s: float | None = None, buffer_messages: int = 200_000,
                 backfill: bool = True, options: StreamOptions | None = None):
        if stream not in ("trade", "aggTrade"):
            raise SourceError(f"unknown Binance stream {stream!r}: use 'trade' or 'aggTrade'")
        self.symbols = list(dict.fromkeys(symbols))
        self.stream = stream
        self.duration_s = duration_s
        self.backfill = backfill
        self._rest_url = rest_url
        self._frames: queue.Queue = queue.Queue(maxsize=buffer_messages)
        self._results: queue.Queue = queue.Queue()  # backfilled pages (lists of lines)
        self._conn = StreamConnections(ws_url, [f"{s.lower()}@{stream}" for s in self.symbols],
                                       self._on_frame, self._on_event, options,
                                       on_oversize=self._on_oversize)
        # a frame of max_frame_bytes becomes a line with its "<ns> " receive-time prefix
        self._max_line_bytes = self._conn.opts.max_frame_bytes + 32
        self._rest: BinanceRest | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_async: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pending = 0  # backfill requests not finished
        self._last_id: dict[str, int] = {}
        self._offset = time.time_ns()  # record offsets unique across runs
        self._rest_offset = self._offset
        self._counts = {"overflow_dropped": 0, "oversize_frames": 0, "backfills": 0,
                        "backfilled_trades": 0, "backfill_failures": 0, "catch_ups": 0}
        self._skew_ms: float | None = None
        self._overflowed = False
        self._error: BaseException | None = None
        self._window_s = 0.0  # the batching window for the current frame rate
        self._rate_frames, self._rate_since = 0, time.monotonic()

    # -- Source protocol ----------------------------------------------------------------
    @property
    def speed(self) -> float | None:
        return 1.0

    def catching_up(self) -> bool:
        """Older trades may still come: disconnected, backfilling, or the connection has gone
        silent (a stall looks like a quiet market until the watchdog replaces it, and the
        trades it hid come back through the catch-up)."""
        with self._lock:
            pending = self._pending
        st = self._conn.state
        silent = st.last_frame_at is None or time.time() - st.last_frame_at > SILENT_AFTER_S
        return pending > 0 or st.state != "connected" or silent or not self._results.empty()

    def status(self) -> SourceStatus:
        st = self._conn.state
        rest = self._rest.stats if self._rest else None
        with self._lock:
            pending = self._pending
        detail = dict(self._counts)
        detail.update(connections=st.connections, rotations=st.rotations,
                      stale_replacements=st.stale_replacements,
                      server_shutdowns=st.server_shutdowns, last_error=st.last_error,
                      buffered=self._frames.qsize(), stream=self.stream,
                      log=[list(x) for x in list(st.log)[-10:]])
        if rest is not None:
            detail["rest"] = asdict(rest)
        return SourceStatus(st.state, attempt=st.attempt, reconnects=st.reconnects,
                            last_message_at=st.last_frame_at, clock_skew_ms=self._skew_ms,
                            backfill_pending=pending,
                            backfilled_trades=self._counts["backfilled_trades"], detail=detail)

    def close(self) -> None:
        self._closed.set()
        loop, stop = self._loop, self._stop_async
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has just finished
                pass
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=10)

    def batches(self) -> Iterator[SourceBatch]:
        self._start()
        deadline = None if self.duration_s is None else time.monotonic() + self.duration_s
        try:
            while not self._closed.is_set():
                if self._error is not None:
                    raise self._error
                if deadline is not None and time.monotonic() >= deadline:
                    break
                yield from self._take(timeout_s=0.05)
            else:
                return
            yield from self._finish()
        finally:
            self.close()

    # -- the consumer side (pipeline's source thread) ------------------------------------
    def _take(self, timeout_s: float) -> Iterator[SourceBatch]:
        frames: list[bytes] = []
        try:
            item = self._frames.get(timeout=timeout_s)
        except queue.Empty:
            item = None
        if item is not None and self._window_s:
            # let the window fill, then take what came: waiting in ``get`` instead would wake
            # this thread for every frame (GIL handovers with the socket's thread, each frame)
            time.sleep(self._window_s)
        while item is not None:
            if isinstance(item, str):  # a connection event, in stream order
                if frames:
                    yield self._decode_stream(frames)
                    frames = []
                self._handle_event(item)
            elif isinstance(item, _RefusedFrame):  # a frame too big to read: a reject
                if frames:
                    yield self._decode_stream(frames)
                    frames = []
                yield self._refused(item)
            else:
                ns, frame = item
                frames.append(b"%d %b" % (ns, frame))
                if len(frames) >= MAX_FRAMES_PER_BATCH:
                    break
            try:
                item = self._frames.get_nowait()
            except queue.Empty:
                item = None
        self._adapt_window(len(frames))
        if frames:
            yield self._decode_stream(frames)
        if self._overflowed and self._frames.qsize() < self._frames.maxsize // 2:
            # frames were not kept: a symbol whose next trade is far off (or never comes)
            # would not reveal its gap, so fetch everything after each symbol's last id
            self._overflowed = False
            self._catch_up()
        while True:
            try:
                lines = self._results.get_nowait()
            except queue.Empty:
                break
            sb = decode_lines(lines, "binance-rest", self._rest_offset, event=self.stream)
            self._rest_offset += len(lines)
            self._track(sb.trades, request=False)
            yield sb

    def _adapt_window(self, n_frames: int) -> None:
        """Batch frames (``BATCH_WINDOW_S``) only while they come at ``BATCH_MIN_RATE``/s or
        more, measured over the last half second or so."""
        self._rate_frames += n_frames
        now = time.monotonic()
        if now - self._rate_since >= 0.5:
            rate = self._rate_frames / (now - self._rate_since)
            self._window_s = BATCH_WINDOW_S if rate >= BATCH_MIN_RATE else 0.0
            self._rate_frames, self._rate_since = 0, now

    def _decode_stream(self, lines: list[bytes]) -> SourceBatch:
        sb = decode_lines(lines, "binance", self._offset, event=self.stream,
                          max_line_bytes=self._max_line_bytes)
        self._offset += len(lines)
        self._track(sb.trades, request=self.backfill)
        return sb

    def _refused(self, item: _RefusedFrame) -> SourceBatch:
        """The reject of a frame refused unread (``binance_stream``: longer than the limit)."""
        what = (f"WebSocket message over {item.limit} bytes once decompressed"
                if item.size is None else f"WebSocket frame of {item.size} bytes > limit {item.limit}")
        rej = Rejected("binance", self._offset, "", RejectReason.OVERSIZE,
                       f"{what}: refused unread; the connection was reopened and missed trades "
                       "are backfilled", "", recv_time_us=item.ns // 1000)
        self._offset += 1
        return SourceBatch(TradeBatch.empty("binance"), [rej], {})

    def _handle_event(self, event: str) -> None:
        if event in ("reconnected", "stale"):
            self._catch_up()

    def resume_after(self, last_ids: dict[str, int]) -> None:
        """Continue from a previous run: each symbol's trades after ``last_ids[symbol]``
        are fetched over REST once the stream shows where it is now (the downtime is a gap
        like any other). Call before ``batches()``."""
        for sym, last in last_ids.items():
            if sym in self.symbols:
                self._last_id[sym] = int(last)

    def _catch_up(self) -> None:
        """Fetch every trade after each symbol's last id (trades may have been missed)."""
        if not self.backfill:
            return
        self._counts["catch_ups"] += 1
        log.info("catching up over REST: every trade after each symbol's last id",
                 extra={"event": "backfill", "symbols": len(self._last_id)})
        for sym, last in self._last_id.items():
            self._request(sym, last + 1, None)

    def _track(self, tb: TradeBatch, request: bool) -> None:
        """Follow each symbol's last id; a jump asks for the missing ids over REST."""
        if len(tb) == 0:
            return
        ok = tb.status == 0
        for sym, idx in _by_symbol(tb.symbol, len(tb)):
            if sym not in self.symbols:
                continue
            ids = tb.trade_id[idx][ok[idx]]
            if not ids.size:
                continue
            last = self._last_id.get(sym)
            if last is None:
                self._last_id[sym] = int(ids.max())
                continue
            new = np.unique(ids[ids > last])
            if not new.size:
                continue
            seq = np.concatenate(([last], new))
            if request:
                for k in np.flatnonzero(np.diff(seq) > 1).tolist():
                    lo, hi = int(seq[k]) + 1, int(seq[k + 1]) - 1
                    log.warning("gap in %s: trade ids %d..%d missing, backfilling over REST", sym,
                                lo, hi, extra={"event": "gap", "symbol": sym, "from_id": lo,
                                               "to_id": hi})
                    self._request(sym, lo, hi)
            self._last_id[sym] = int(seq[-1])

    def _request(self, symbol: str, from_id: int, to_id: int | None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            self._pending += 1
        self._counts["backfills"] += 1
        try:
            loop.call_soon_threadsafe(self._bf_queue.put_nowait, (symbol, from_id, to_id))
        except RuntimeError:
            with self._lock:
                self._pending -= 1

    def _finish(self) -> Iterator[SourceBatch]:
        """End of ``duration``: stop the stream, let running backfills land (bounded)."""
        self._stop_stream()
        end = time.monotonic() + DRAIN_AT_END_S
        while time.monotonic() < end:
            yield from self._take(timeout_s=0.05)
            with self._lock:
                pending = self._pending
            if pending == 0 and self._frames.empty() and self._results.empty():
                break

    # -- the event-loop side ------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="binance-ws",
                                        daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run_loop(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            self._error = exc
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_async = asyncio.Event()
        self._stream_stop = asyncio.Event()
        self._bf_queue: asyncio.Queue = asyncio.Queue()
        self._rest = BinanceRest(self._rest_url)
        ready.set()
        if self._closed.is_set():
            return
        tasks = [asyncio.create_task(self._conn.run(self._stream_stop), name="stream"),
                 asyncio.create_task(self._backfill_worker(), name="backfill"),
                 asyncio.create_task(self._measure_skew(), name="skew")]
        try:
            await self._stop_async.wait()
        finally:
            self._stream_stop.set()
            await asyncio.wait_for(asyncio.gather(tasks[0], return_exceptions=True), 5)
            for t in tasks[1:]:
                t.cancel()
            await asyncio.gather(*tasks[1:], return_exceptions=True)
            await self._rest.aclose()

    def _stop_stream(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stream_stop.set)
            except RuntimeError:
                pass

    def _on_frame(self, frame: bytes, ns: int) -> None:
        try:
            self._frames.put_nowait((ns, frame))
        except queue.Full:
            self._counts["overflow_dropped"] += 1
            self._overflowed = True  # the consumer catches every symbol up once it drained

    def _on_oversize(self, size: int | None, limit: int, ns: int) -> None:
        self._counts["oversize_frames"] += 1
        try:
            self._frames.put_nowait(_RefusedFrame(size, limit, ns))
        except queue.Full:
            self._counts["overflow_dropped"] += 1

    def _on_event(self, event: str) -> None:
        try:
            self._frames.put_nowait(event)
        except queue.Full:  # the consumer is far behind: the catch-up comes with the gaps
            pass
        if event in ("connected", "reconnected") and self._loop is not None:
            asyncio.ensure_future(self._measure_skew_once())

    async def _measure_skew(self) -> None:
        while True:
            await asyncio.sleep(600)
            await self._measure_skew_once()

    async def _measure_skew_once(self) -> None:
        try:
            self._skew_ms = await self._rest.server_time_skew_ms()
        except BackfillError as exc:
            self._conn.state.note("clock_skew_failed", str(exc))

    async def _backfill_worker(self) -> None:
        while True:
            symbol, lo, hi = await self._bf_queue.get()
            try:
                await self._backfill(symbol, lo, hi)
            finally:
                with self._lock:
                    self._pending -= 1

    async def _backfill(self, symbol: str, lo: int, hi: int | None) -> None:
        """Fetch ids ``lo..hi`` (``hi=None``: up to the latest trade) page by page."""
        agg, next_id, failures, got = self.stream == "aggTrade", lo, 0, 0
        while hi is None or next_id <= hi:
            limit = PAGE_LIMIT if hi is None else min(PAGE_LIMIT, hi - next_id + 1)
            try:
                lines, last, n = await self._rest.trade_page(symbol, next_id, agg, limit)
            except RateLimited:
                continue  # the client itself waits out Retry-After before the next request
            except BackfillError as exc:
                failures += 1
                if failures >= BACKFILL_ATTEMPTS:
                    self._counts["backfill_failures"] += 1
                    self._conn.state.note("backfill_failed", f"{symbol} {lo}..{hi}: {exc}")
                    return
                await asyncio.sleep(min(30.0, 0.5 * 2 ** failures))
                continue
            if lines:
                self._results.put(lines)
                self._counts["backfilled_trades"] += len(lines)
                got += len(lines)
            if n < limit or last is None:
                log.info("backfill of %s from id %d done: %d trades", symbol, lo, got, extra={
                    "event": "backfill", "symbol": symbol, "from_id": lo, "to_id": hi,
                    "trades": got})
                return
            next_id = last + 1


def _by_symbol(symbols, n: int):
    """(symbol, index array) for each symbol of a batch's symbol column."""
    if isinstance(symbols, str):
        yield symbols, np.arange(n)
    elif isinstance(symbols, SymbolCodes):
        for k, name in enumerate(symbols.names):
            idx = np.flatnonzero(symbols.codes == k)
            if idx.size:
                yield name, idx
    else:
        for sym in dict.fromkeys(symbols.tolist()):
            yield sym, np.flatnonzero(symbols == sym)
