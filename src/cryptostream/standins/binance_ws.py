"""One WebSocket client of the Binance stand-in: its streams, control messages and faults.

A :class:`Session` owns one connection. Everything it sends goes through one queue drained
by its sender task, so a control reply always precedes the data of the streams it
subscribed, and a slow client never holds up the broadcaster. The per-connection faults
(``drop_every``, ``stall_after``, ``malformed_every``) and limits (incoming messages per
second, streams per connection, connection age, ``serverShutdown``) live here.

Incoming-message limit: JSON control messages are counted when the session reads them, so
the replies to the messages within the limit still go out before the close; PING and PONG
frames are counted when they arrive (:class:`FakeConnection`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from cryptostream.standins.binance_options import FakeOptions, FakeStats

#: Market-data messages a client may have queued before it is cut off as too slow.
MAX_PENDING = 200_000
#: Seconds a close decided by the server may wait behind the queue before the TCP drop.
CLOSE_DEADLINE_S = 10.0
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_STREAM = re.compile(r"^[A-Za-z0-9!_@.\-]{1,200}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9\-]{1,36}$")
_LOG = logging.getLogger(__name__)
_MALFORMED_KINDS = ("truncated", "bad_type", "missing_field", "not_json")
_ID_FIELD = re.compile(r'"([ta])":(\d+)')
_PRICE_FIELD = re.compile(r'"p":"[^"]*",')


def parse_ws_path(target: str) -> tuple[bool, list[str]] | None:
    """``(combined, streams)`` of a WebSocket request target, None if not a stream path.

    >>> parse_ws_path("/stream?streams=btcusdt@trade/ethusdt@aggTrade")
    (True, ['btcusdt@trade', 'ethusdt@aggTrade'])
    >>> parse_ws_path("/ws/btcusdt@trade"), parse_ws_path("/ws"), parse_ws_path("/x")
    ((False, ['btcusdt@trade']), (False, []), None)
    """
    path, _, query = target.partition("?")
    if path == "/ws" or path.startswith("/ws/"):
        return False, [s for s in path[4:].split("/") if s]
    if path in ("/stream", "/stream/"):
        streams: list[str] = []
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key == "streams":
                streams += [s for s in value.split("/") if s]
        return True, streams
    return None


def valid_stream(name: object) -> bool:
    """Whether ``name`` can be a stream name (any such name is accepted; only the trade and
    aggTrade streams of the recorded symbols ever carry data).

    >>> valid_stream("btcusdt@trade"), valid_stream("btc usdt"), valid_stream(3)
    (True, False, False)
    """
    return isinstance(name, str) and bool(_STREAM.match(name))


class FakeConnection(ServerConnection):
    """A server connection that reports PING/PONG frames and counts keepalive pings."""

    def __init__(self, *args: Any, stats: FakeStats, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stats = stats
        self.session: Session | None = None

    def process_event(self, event: Any) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and event.opcode in (Opcode.PING, Opcode.PONG):
            if event.opcode is Opcode.PONG:
                self.stats.pongs_received += 1
            if self.session is not None:
                self.session.count_incoming()

    async def ping(self, data: Any = None) -> Any:
        waiter = await super().ping(data)
        self.stats.pings_sent += 1
        return waiter


class StreamMessage:
    """One market-data event for one stream, serialised once for all its subscribers;
    ``key`` is ``(symbol, trade id)`` when its send time is to be recorded."""

    __slots__ = ("_combined", "key", "payload", "stream")

    def __init__(self, stream: str, payload: str, key: tuple[str, int] | None = None):
        self.stream = stream
        self.payload = payload
        self.key = key
        self._combined: str | None = None

    def combined(self) -> str:
        """The event wrapped as a combined-stream message."""
        if self._combined is None:
            self._combined = wrap(self.stream, self.payload)
        return self._combined


def wrap(stream: str, payload: str) -> str:
    return f'{{"stream":"{stream}","data":{payload}}}'


class Subscriptions:
    """Which sessions listen to which stream; ``on_subscribe`` runs on every subscription."""

    def __init__(self, on_subscribe: Callable[[], None]):
        self._by_stream: dict[str, set[Session]] = {}
        self._on_subscribe = on_subscribe

    def add(self, session: Session, streams: Iterable[str]) -> None:
        for s in streams:
            self._by_stream.setdefault(s, set()).add(session)
        self._on_subscribe()

    def remove(self, session: Session, streams: Iterable[str]) -> None:
        for s in streams:
            listeners = self._by_stream.get(s)
            if listeners is not None:
                listeners.discard(session)
                if not listeners:
                    del self._by_stream[s]

    def listeners(self, stream: str) -> set[Session] | None:
        return self._by_stream.get(stream)


class Session:
    """The state of one client connection; see the module docstring."""

    def __init__(self, ws: ServerConnection, *, combined: bool, options: FakeOptions,
                 stats: FakeStats, subscriptions: Subscriptions, now_ms: Callable[[], int],
                 send_times: dict[tuple[str, int], int] | None = None):
        self.ws = ws
        self.combined = combined
        self.options = options
        self.stats = stats
        self.subscriptions = subscriptions
        self.now_ms = now_ms
        self.send_times = send_times  # FakeBinance.send_times when record_send_times
        self.streams: dict[str, None] = {}  # an ordered set
        self.queue: asyncio.Queue[StreamMessage | str | tuple[int, str]] = asyncio.Queue()
        self.close_reason: str | None = None
        self.sent = 0
        self._loop = asyncio.get_running_loop()
        self._incoming: deque[float] = deque()
        self._stall_until = 0.0
        self._stalled = False
        self._malformed = 0

    # -- incoming ---------------------------------------------------------------------------
    def count_incoming(self) -> bool:
        """Count one incoming message; past the limit, close the connection (True)."""
        if self.close_reason is not None:
            return True
        now = self._loop.time()
        window = self._incoming
        window.append(now)
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) > self.options.max_incoming_per_s:
            self.stats.rate_violations += 1
            self.close_later(1008, "Too many requests", "rate")
            return True
        return False

    def on_message(self, message: str | bytes) -> None:
        """Answer one control message (SUBSCRIBE, LIST_SUBSCRIPTIONS, ...)."""
        self.stats.control_messages += 1
        if self.count_incoming():
            return
        try:
            request = json.loads(message)
        except ValueError as exc:
            where = (f" at line {exc.lineno} column {exc.colno}"
                     if isinstance(exc, json.JSONDecodeError) else "")
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            self._error(3, f"Invalid JSON: {msg[:1].lower()}{msg[1:]}{where}", None)
            return
        if not isinstance(request, dict):
            self._error(2, "Invalid request: expected a JSON object", None)
            return
        rid = request.get("id", ...)
        if not _valid_id(rid):
            self._error(2, "Invalid request: request ID must be an unsigned integer", None)
            return
        method = request.get("method")
        params = request.get("params", [])
        if method is None:
            self._error(2, "Invalid request: missing field `method`", rid)
        elif method not in METHODS:
            expected = ", ".join(f"`{m}`" for m in METHODS)
            self._error(2, f"Invalid request: unknown variant `{method}`, expected one of "
                           f"{expected}", rid)
        elif method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            self._subscribe(method, params, rid)
        elif method == "LIST_SUBSCRIPTIONS":
            self._reply(list(self.streams), rid)
        else:
            self._property(method, params, rid)

    def subscribe(self, streams: list[str]) -> str | None:
        """Listen to ``streams`` too; the reason if that is refused."""
        refused = self._refusal(streams)
        if refused is None:
            self._add(streams)
        return refused

    def unsubscribe_all(self) -> None:
        self.subscriptions.remove(self, list(self.streams))
        self.streams.clear()

    def _refusal(self, streams: list[Any]) -> str | None:
        if not all(valid_stream(s) for s in streams):
            return "Invalid request: invalid stream"
        new = {s for s in streams if s not in self.streams}
        limit = self.options.max_streams_per_connection
        if len(self.streams) + len(new) > limit:
            return f"Invalid request: too many streams; a connection listens to at most {limit}"
        return None

    def _add(self, streams: list[str]) -> None:
        new = [s for s in dict.fromkeys(streams) if s not in self.streams]
        self.streams.update(dict.fromkeys(new))
        self.subscriptions.add(self, new)

    def _subscribe(self, method: str, params: Any, rid: Any) -> None:
        if not isinstance(params, list):
            self._error(2, "Invalid request: params must be a list of stream names", rid)
        elif method == "UNSUBSCRIBE":
            gone = [s for s in params if isinstance(s, str) and s in self.streams]
            for s in gone:
                del self.streams[s]
            self.subscriptions.remove(self, gone)
            self._reply(None, rid)
        elif (refused := self._refusal(params)) is not None:
            self._error(2, refused, rid)
        else:
            # reply first: nothing the broadcaster sends for these streams may precede it
            self._reply(None, rid)
            self._add(params)

    def _property(self, method: str, params: Any, rid: Any) -> None:
        if not isinstance(params, list) or not params:
            self._error(2, "Invalid request: property name must be a string", rid)
        elif len(params) > (2 if method == "SET_PROPERTY" else 1):
            self._error(2, "Invalid request: too many parameters", rid)
        elif not isinstance(params[0], str):
            self._error(2, "Invalid request: property name must be a string", rid)
        elif params[0] != "combined":
            self._error(0, "Unknown property", rid)
        elif method == "GET_PROPERTY":
            self._reply(self.combined, rid)
        elif len(params) < 2 or not isinstance(params[1], bool):
            self._error(1, "Invalid value type: expected Boolean", rid)
        else:
            self.combined = params[1]
            self._reply(None, rid)

    def _reply(self, result: Any, rid: Any) -> None:
        self.queue.put_nowait(json.dumps({"result": result, "id": rid}, separators=(",", ":")))

    def _error(self, code: int, msg: str, rid: Any) -> None:
        body = {"error": {"code": code, "msg": msg}, "id": None if rid is ... else rid}
        self.queue.put_nowait(json.dumps(body, separators=(",", ":")))

    # -- outgoing ---------------------------------------------------------------------------
    def offer(self, msg: StreamMessage) -> None:
        """Queue a market-data message (called by the broadcaster, never blocks)."""
        if self.close_reason is not None:
            return
        if self._stall_until and self._loop.time() < self._stall_until:
            self.stats.stall_skipped += 1
            return
        if self.queue.qsize() >= MAX_PENDING:
            self.abort("slow")
            return
        self.queue.put_nowait(msg)

    def close_later(self, code: int, reason: str, why: str) -> None:
        """Close after what is already queued; ``why`` is the reason the stats record."""
        if self.close_reason is None:
            self.close_reason = why
            self.queue.put_nowait((code, reason))
            # a client that reads nothing would keep the close behind its queue: cut it off
            self._loop.call_later(CLOSE_DEADLINE_S, self._force_close)

    def _force_close(self) -> None:
        if self.ws.state is not State.CLOSED:
            self.ws.transport.abort()

    def abort(self, why: str) -> None:
        """Drop the TCP connection at once, without a close frame (like a network failure)."""
        if self.close_reason is None:
            self.close_reason = why
        self.ws.transport.abort()

    async def run_sender(self) -> None:
        """Send the queue to the client until the connection closes."""
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, StreamMessage):
                    await self._send_market(item)
                elif isinstance(item, str):
                    await self.ws.send(item)
                else:
                    await self.ws.close(*item)
                    return
        except ConnectionClosed:
            return
        except Exception:  # noqa: BLE001 - a bug must not leave the client waiting forever
            _LOG.exception("fake-binance: sending to %s failed", self.ws.remote_address)
            self.abort("error")

    async def _send_market(self, msg: StreamMessage) -> None:
        o = self.options
        if self._stall_until and self._loop.time() < self._stall_until:
            self.stats.stall_skipped += 1
            return
        if self.close_reason is not None:
            return
        text = msg.combined() if self.combined else msg.payload
        if msg.key is not None and self.send_times is not None:
            self.send_times.setdefault(msg.key, time.time_ns())  # the first send counts
        await self.ws.send(text)
        self.sent += 1
        self.stats.trade_messages_sent += 1
        if o.malformed_every and self.sent % o.malformed_every == 0:
            await self.ws.send(self.malformed(msg))
            self.stats.malformed_sent += 1
        if o.stall_after and not self._stalled and self.sent >= o.stall_after:
            self._stalled = True
            self._stall_until = self._loop.time() + o.stall_s
            self.stats.stalls += 1
        if o.drop_every and self.sent >= o.drop_every:
            await self._flushed(1.0)  # what was sent must reach the client before the drop
            self.abort("drop")

    async def _flushed(self, timeout: float) -> None:
        deadline = self._loop.time() + timeout
        transport = self.ws.transport
        while transport.get_write_buffer_size() and self._loop.time() < deadline:
            await asyncio.sleep(0.005)

    def malformed(self, msg: StreamMessage) -> str:
        """A broken copy of ``msg``; the kinds rotate, starting where ``seed`` says."""
        kind = _MALFORMED_KINDS[(self.options.seed + self._malformed) % len(_MALFORMED_KINDS)]
        self._malformed += 1
        if kind == "truncated":
            text = msg.combined() if self.combined else msg.payload
            return text[: max(1, len(text) // 2)]
        if kind == "not_json":
            return "<html><body><h1>502 Bad Gateway</h1></body></html>"
        if kind == "bad_type":  # the trade / aggregate id as a string
            bad = _ID_FIELD.sub(r'"\1":"x"', msg.payload, count=1)
        else:  # missing_field: no price
            bad = _PRICE_FIELD.sub("", msg.payload, count=1)
        return wrap(msg.stream, bad) if self.combined else bad

    async def run_timers(self) -> None:
        """Close the connection at its age limit; send ``serverShutdown`` when configured."""
        await asyncio.gather(self._age_limit(), self._server_shutdown())

    async def _age_limit(self) -> None:
        await asyncio.sleep(self.options.max_connection_age_s)
        self.close_later(1001, "connection age limit reached", "age")

    async def _server_shutdown(self) -> None:
        o = self.options
        if o.shutdown_after_s is None:
            return
        await asyncio.sleep(o.shutdown_after_s)
        self.announce_shutdown(o.shutdown_grace_s)

    def announce_shutdown(self, grace_s: float) -> None:
        """Send ``serverShutdown`` now and close the connection ``grace_s`` later."""
        if self.close_reason is None:
            notice = {"e": "serverShutdown", "E": self.now_ms()}
            self.queue.put_nowait(json.dumps(notice, separators=(",", ":")))
        self._loop.call_later(grace_s, self.close_later, 1001, "server shutdown", "shutdown")

    def stall(self, seconds: float) -> None:
        """Send no market data for ``seconds`` (what happens meanwhile is skipped)."""
        self._stall_until = self._loop.time() + seconds
        self.stats.stalls += 1


def _valid_id(rid: Any) -> bool:
    """Binance takes a 64-bit signed integer, an alphanumeric string of up to 36 characters
    (UUIDs too), or null as request id; and requires one."""
    if rid is None:
        return True
    if isinstance(rid, bool) or rid is ...:
        return False
    if isinstance(rid, int):
        return -(2**63) <= rid < 2**63
    return isinstance(rid, str) and bool(_REQUEST_ID.match(rid))
