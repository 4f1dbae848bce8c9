"""A local stand-in for the Binance spot market-data server, replaying recorded trades live.

:class:`FakeBinance` listens on one loopback port and speaks the Binance spot protocol:
WebSocket market streams (``/ws/<stream>``, ``/ws``, ``/stream?streams=a/b``, ``/stream``;
``<symbol>@trade`` and ``<symbol>@aggTrade``; SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS,
SET_PROPERTY, GET_PROPERTY) and a few REST endpoints on the same port
(:mod:`~cryptostream.standins.binance_rest`). It is meant for integration tests of live
clients and for offline demos.

The replay clock runs in exchange time (ms). It starts when the first client subscribes to
any stream, at the earliest trade time of all recordings, and advances ``speed`` times as
fast as wall time. One broadcaster task sends each trade, when the clock reaches it, to
every connection subscribed to its stream at that moment: a client that is not connected
misses it (REST still serves it). Trade events are the recorded payload bytes unless
``rebase_time`` shifts the times. When every trade has happened the server stays up and
silent, pings going on. Keepalive is websockets': a ping with a payload every
``ping_interval_s``, the connection closed when its pong is ``pong_timeout_s`` late.

Limits and fault knobs are described on :class:`FakeOptions`; counters on
:class:`FakeStats`. An instance is used once: ``start`` / ``stop`` on a running event loop,
or ``with server.running():`` from synchronous code (its own loop in a daemon thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from websockets.asyncio.server import Server, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from cryptostream.standins.binance_data import (
    AggTrade,
    SymbolData,
    Trade,
    agg_event,
    load_recordings,
    trade_event,
)
from cryptostream.standins.binance_options import FakeOptions, FakeStats
from cryptostream.standins.binance_rest import RestApi, json_response
from cryptostream.standins.binance_ws import (
    FakeConnection,
    Session,
    StreamMessage,
    Subscriptions,
    parse_ws_path,
    valid_stream,
)

__all__ = ["FakeBinance", "FakeOptions", "FakeStats"]

_LOG = logging.getLogger(__name__)
#: Trades sent in one go before the broadcaster lets the other tasks run.
_BURST = 2_000
#: Seconds a closing handshake may take before the TCP connection is dropped.
_CLOSE_TIMEOUT_S = 2.0
_ATTEMPT_WINDOW_S = 300.0


@dataclass
class _GapState:
    """Where the ``gap_every`` fault is in one symbol."""

    last_withheld: int = -2  # index of the last withheld trade
    agg_withheld: bool = False  # a trade of the current aggregate was withheld


class FakeBinance:
    """The stand-in server; see the module docstring."""

    def __init__(self, recordings: Sequence[str | Path], options: FakeOptions | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        self.options = options = options if options is not None else FakeOptions()
        self.host = host
        self.port = port
        self._data = load_recordings(recordings)
        self.symbols: list[str] = list(self._data)
        self.stats = FakeStats(withheld={s: [] for s in self.symbols})
        datas = list(self._data.values())
        self._first_ms = min(d.release[0] for d in datas)
        self._last_ms = max(d.release[-1] for d in datas)
        self._timeline = sorted(
            (rel, k, i) for k, d in enumerate(datas) for i, rel in enumerate(d.release)
        )
        self._gaps = {s: _GapState() for s in self.symbols}
        self._t0: float | None = None  # monotonic time the clock started
        self._shift = 0  # ms added to every time sent (rebase_time)
        self._subs = Subscriptions(self._start_clock)
        self._rest = RestApi(self._data, options, self.stats, self._clock_raw,
                             lambda: self._shift, self._now_ms)
        self._attempts: dict[str, deque[float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: set[Session] = set()
        self._server: Server | None = None
        self._broadcaster: asyncio.Task | None = None
        self._clock_started: asyncio.Event | None = None
        self._stop_event: asyncio.Event | None = None
        self._stopping = False
        #: with ``options.record_send_times``: (symbol, trade id) -> ``time.time_ns()`` just
        #: before that trade's event was first handed to a WebSocket send (any connection)
        self.send_times: dict[tuple[str, int], int] = {}

    # -- public state ---------------------------------------------------------------------
    @property
    def ws_url(self) -> str:
        return f"ws://{self._netloc()}"

    @property
    def rest_url(self) -> str:
        return f"http://{self._netloc()}"

    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def trade_count(self) -> int:
        """Trades loaded, all symbols together."""
        return len(self._timeline)

    @property
    def connection_count(self) -> int:
        """WebSocket connections open now."""
        return len(self._sessions)

    def clock_ms(self) -> int | None:
        """The replay clock (ms, shifted like the data when ``rebase_time``); None before
        the first subscription."""
        raw = self._clock_raw()
        return None if raw is None else raw + self._shift

    @property
    def finished(self) -> bool:
        """Whether every trade has happened on the replay clock."""
        raw = self._clock_raw()
        return raw is not None and raw >= self._last_ms

    def trades(self, symbol: str) -> list[Trade]:
        """The loaded trades of ``symbol``, in id order."""
        return list(self._data[symbol.upper()].trades)

    def agg_trades(self, symbol: str) -> list[AggTrade]:
        """The aggregate trades derived for ``symbol``, in id order."""
        return list(self._data[symbol.upper()].aggs)

    def fail_rest(self, count: int, status: int = 429, retry_after_s: float = 1.0) -> None:
        """Answer the next ``count`` REST data requests with ``status`` (429 or 418) and
        ``Retry-After``; thread-safe."""
        self._rest.fail(count, status, retry_after_s)

    def stall_now(self, seconds: float) -> None:
        """Send no market data on any open connection for ``seconds``; thread-safe."""
        self._call_in_loop(lambda: [x.stall(seconds) for x in list(self._sessions)])

    def shutdown_now(self, grace_s: float = 5.0) -> None:
        """Send ``serverShutdown`` on every open connection, close them ``grace_s`` later."""
        self._call_in_loop(lambda: [x.announce_shutdown(grace_s) for x in list(self._sessions)])

    def _call_in_loop(self, fn) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise RuntimeError("fake-binance is not running")
        loop.call_soon_threadsafe(fn)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen (``port`` 0 picks a free one and updates ``port``) and start broadcasting."""
        if self._server is not None:
            raise RuntimeError("this FakeBinance was already started; make a new one")
        o = self.options
        self._loop = asyncio.get_running_loop()
        self._clock_started = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._server = await serve(
            self._handle, self.host, self.port,
            process_request=self._process_request,
            ping_interval=o.ping_interval_s, ping_timeout=o.pong_timeout_s,
            close_timeout=_CLOSE_TIMEOUT_S, compression=None, logger=_LOG,
            create_connection=functools.partial(FakeConnection, stats=self.stats),  # type: ignore[arg-type]
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._broadcaster = asyncio.create_task(self._broadcast(), name="fake-binance broadcast")
        self._broadcaster.add_done_callback(_log_failure)

    async def stop(self) -> None:
        """Close every connection (1001) and stop listening; safe to call twice."""
        if self._server is None:
            return
        if not self._stopping:
            self._stopping = True
            if self._broadcaster is not None:
                self._broadcaster.cancel()
            self._server.close()
        await self._server.wait_closed()
        if self._broadcaster is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._broadcaster
        assert self._stop_event is not None
        self._stop_event.set()

    async def serve_forever(self) -> None:
        """Start if needed and serve until :meth:`stop` (or cancellation)."""
        if self._server is None:
            await self.start()
        assert self._stop_event is not None
        try:
            await self._stop_event.wait()
        finally:
            await self.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeBinance]:
        """Serve from a daemon thread with its own event loop while the block runs."""
        loop = asyncio.new_event_loop()
        listening = threading.Event()
        failed: list[BaseException] = []

        async def main() -> None:
            try:
                await self.start()
            except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failed.append(exc)
                return
            finally:
                listening.set()
            await self.serve_forever()

        def run() -> None:
            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        thread = threading.Thread(target=run, name=f"fake-binance-{id(self):x}", daemon=True)
        thread.start()
        listening.wait()
        if failed or self._server is None:
            thread.join()
            raise failed[0] if failed else RuntimeError("fake-binance did not start")
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
            thread.join(timeout=30)

    # -- clock ----------------------------------------------------------------------------
    def _clock_raw(self) -> int | None:
        t0 = self._t0
        if t0 is None:
            return None
        return self._first_ms + int((time.monotonic() - t0) * self.options.speed * 1000)

    def _now_ms(self) -> int:
        """What ``/api/v3/time`` and ``serverShutdown`` say: the clock, or before it starts
        the first trade time (the wall clock when ``rebase_time``)."""
        clock = self.clock_ms()
        if clock is not None:
            return clock
        return int(time.time() * 1000) if self.options.rebase_time else self._first_ms

    def _start_clock(self) -> None:
        if self._t0 is not None:
            return
        if self.options.rebase_time:
            self._shift = int(time.time() * 1000) - self._first_ms
        self._t0 = time.monotonic()
        if self._clock_started is not None:
            self._clock_started.set()

    # -- broadcasting -----------------------------------------------------------------------
    async def _broadcast(self) -> None:
        assert self._clock_started is not None
        await self._clock_started.wait()
        timeline, datas = self._timeline, list(self._data.values())
        n, pos, speed = len(timeline), 0, self.options.speed
        while pos < n:
            clock = self._clock_raw()
            assert clock is not None
            burst = 0
            while pos < n and timeline[pos][0] <= clock and burst < _BURST:
                _, k, i = timeline[pos]
                self._emit(datas[k], i)
                pos += 1
                burst += 1
            if burst == _BURST:
                await asyncio.sleep(0)
            elif pos < n:
                await asyncio.sleep(min((timeline[pos][0] - clock) / speed / 1000, 1.0))

    def _emit(self, data: SymbolData, i: int) -> None:
        """Send trade ``i`` of ``data`` (and the aggregate it completes) to the listeners."""
        o = self.options
        trade = data.trades[i]
        agg = data.aggs[data.agg_of[i]]
        gap = self._gaps[data.symbol]
        if i == agg.first:
            gap.agg_withheld = False
        if o.gap_every and i % (o.gap_every + o.gap_size) >= o.gap_every:
            ranges = self.stats.withheld[data.symbol]
            if gap.last_withheld == i - 1 and ranges:
                ranges[-1] = (ranges[-1][0], trade.id)
            else:
                ranges.append((trade.id, trade.id))
            gap.last_withheld = i
            gap.agg_withheld = True
        else:
            listeners = self._subs.listeners(data.trade_stream)
            if listeners:
                payload = trade_event(data.symbol, trade, self._shift, not o.rebase_time)
                key = (data.symbol, trade.id) if o.record_send_times else None
                msg = StreamMessage(data.trade_stream, payload, key)
                for session in tuple(listeners):
                    session.offer(msg)
        if i == agg.last and not gap.agg_withheld:
            listeners = self._subs.listeners(data.agg_stream)
            if listeners:
                msg = StreamMessage(data.agg_stream, agg_event(data.symbol, agg, self._shift))
                for session in tuple(listeners):
                    session.offer(msg)

    # -- connections ----------------------------------------------------------------------
    def _process_request(self, conn: FakeConnection, request: Request) -> Response | None:
        """REST requests are answered here; WebSocket handshakes are checked and go on."""
        ip = conn.remote_address[0] if conn.remote_address else "?"
        if request.method != "GET":
            msg = f"{request.method} is not served here; the market-data endpoints take GET."
            return json_response(405, {"code": -1000, "msg": msg}, 0)
        ws_path = parse_ws_path(request.path)
        if ws_path is None:
            return self._rest.respond(request.path, ip)
        now = time.monotonic()
        attempts = self._attempts.setdefault(ip, deque())
        while attempts and attempts[0] <= now - _ATTEMPT_WINDOW_S:
            attempts.popleft()
        attempts.append(now)
        if len(attempts) > self.options.max_connections_per_5min:
            self.stats.connections_refused += 1
            retry = math.ceil(attempts[0] + _ATTEMPT_WINDOW_S - now)
            msg = (f"Too many connection attempts; the limit is "
                   f"{self.options.max_connections_per_5min} per 5 minutes per IP.")
            return json_response(429, {"code": -1003, "msg": msg}, 0, retry_after=max(1, retry))
        streams = set(ws_path[1])
        if not all(valid_stream(s) for s in streams):
            return json_response(400, {"code": 2, "msg": "Invalid request: invalid stream"}, 0)
        if len(streams) > self.options.max_streams_per_connection:
            msg = (f"Too many streams; a connection listens to at most "
                   f"{self.options.max_streams_per_connection}.")
            return json_response(400, {"code": 2, "msg": msg}, 0)
        return None

    async def _handle(self, ws: FakeConnection) -> None:
        combined, streams = parse_ws_path(ws.request.path if ws.request else "/ws") or (False, [])
        session = Session(ws, combined=combined, options=self.options, stats=self.stats,
                          subscriptions=self._subs, now_ms=self._now_ms,
                          send_times=self.send_times if self.options.record_send_times else None)
        ws.session = session
        self.stats.connections_opened += 1
        self._sessions.add(session)
        if streams:
            session.subscribe(streams)  # checked by _process_request: cannot be refused
        tasks = [asyncio.create_task(session.run_sender()),
                 asyncio.create_task(session.run_timers())]
        try:
            async for message in ws:
                session.on_message(message)
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()
            session.unsubscribe_all()
            self._sessions.discard(session)
            self.stats.connections_closed[session.close_reason or self._close_cause(ws)] += 1

    def _close_cause(self, ws: FakeConnection) -> str:
        if self._stopping:
            return "server_stop"
        sent = ws.protocol.close_sent
        if sent is not None and sent.code == 1011 and "keepalive" in sent.reason:
            return "pong_timeout"
        return "client"


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        _LOG.error("fake-binance: %s failed", task.get_name(), exc_info=task.exception())
