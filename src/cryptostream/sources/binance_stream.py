"""Binance market-stream connections: subscribe, read, keep alive, reconnect, rotate.

Protocol facts honoured (binance-spot-api-docs, web-socket-streams.md):

* one combined-stream connection (``<base>/stream``) with ``SUBSCRIBE`` requests for the
  lowercase stream names; at most 1024 streams per connection;
* the server pings every 20 s and drops a connection whose pong (echoing the ping's
  payload) is missing for a minute: the ``websockets`` protocol layer answers every ping
  as it reads, and the reader below never stops reading (frames go to a bounded buffer
  owned by the caller), so a slow consumer never delays a pong;
* at most 5 incoming messages per second per connection: this client sends only its
  ``SUBSCRIBE`` requests (and pongs), spaced at least ``1 / MAX_SENDS_PER_S`` apart;
* at most 300 connection attempts per 5 minutes per IP: attempts are spaced with
  exponential backoff and jitter and never exceed ``max_connects_per_5min``;
* a frame longer than ``max_frame_bytes`` (default 1 MB, the line limit of the decoders) is
  refused by the ``websockets`` protocol layer from its header, before its payload is read
  (``max_size``): the library then closes the connection with code 1009 (message too big),
  since a WebSocket stream cannot skip a frame it does not read. The refusal is reported
  (``on_oversize``: the pipeline counts it as a reject with reason ``oversize``) and the
  connection is reopened like a dropped one (``reconnected``: the catch-up backfills what
  the reopening missed); it never goes unnoticed and never loops without being counted;
* a connection lives at most 24 h, and a ``serverShutdown`` event means "reconnect now":
  in both cases (and when a connection goes silent for ``stale_after_s``) a new
  connection is opened and subscribed *before* the old one is closed, so nothing is
  missed in between; the overlap's duplicates are left to the deduplication downstream.

Events reported to the owner (``on_event``): ``connected`` (first connection),
``reconnected`` (after a drop or failed attempts: trades may have been missed),
``replaced`` (rotation without a pause: nothing missed), ``stale`` (a silent connection
was replaced: trades may have been missed), ``disconnected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI, PayloadTooBig
from websockets.frames import CloseCode

from cryptostream.errors import SourceError

log = logging.getLogger("cryptostream.sources.binance")

MAX_STREAMS_PER_CONNECTION = 1024
MAX_SENDS_PER_S = 4  # under the 5 incoming messages/s the server allows
SUBSCRIBE_CHUNK = 200  # streams per SUBSCRIBE request
#: frames the WebSocket library may buffer before it stops reading the socket
WS_MAX_QUEUE = 256
_CONTROL_PREFIXES = (b'{"result"', b'{"id"', b'{"error"', b'{"code"')


@dataclass(frozen=True)
class StreamOptions:
    stale_after_s: float = 30.0
    max_connection_age_s: float = 23.5 * 3600
    reconnect_base_s: float = 0.5
    reconnect_max_s: float = 30.0
    max_connects_per_5min: int = 300
    open_timeout_s: float = 10.0
    seed: int = 0
    #: longest frame read; a longer one is refused unread (see the module docstring)
    max_frame_bytes: int = 1 << 20


@dataclass
class StreamState:
    """What the dashboard and ``stats`` show about the connection (read from any thread)."""

    state: str = "connecting"  # connecting | connected | reconnecting | stopped
    attempt: int = 0  # consecutive failed attempts (reconnecting)
    reconnects: int = 0
    connections: int = 0
    rotations: int = 0
    stale_replacements: int = 0
    server_shutdowns: int = 0
    oversize_frames: int = 0  # frames refused unread (longer than max_frame_bytes)
    connected_since: float | None = None  # epoch seconds
    last_frame_at: float | None = None  # epoch seconds
    last_error: str = ""
    log: deque = field(default_factory=lambda: deque(maxlen=50))  # (epoch s, event, detail)

    def note(self, event: str, detail: str = "") -> None:
        self.log.append((time.time(), event, detail))
        log.log(logging.INFO if event in ("connected", "age") else logging.WARNING,
                "binance stream: %s%s", event, f" ({detail})" if detail else "",
                extra={"event": event, "attempt": self.attempt, "reconnects": self.reconnects})


def stream_url(base: str) -> str:
    """The combined-stream endpoint under a base URL (kept if already given).

    >>> stream_url("wss://stream.binance.com:9443"), stream_url("ws://127.0.0.1:9/stream/")
    ('wss://stream.binance.com:9443/stream', 'ws://127.0.0.1:9/stream')
    """
    base = base.rstrip("/")
    return base if base.endswith("/stream") else base + "/stream"


@dataclass
class _Conn:
    ws: ClientConnection
    opened: float  # monotonic
    last_frame: float  # monotonic
    reader: asyncio.Task | None = None
    shutdown: bool = False
    oversize: int | None = None  # size of the frame that made the library close it, if any
    replies: dict = field(default_factory=dict)  # request id -> future


class StreamConnections:
    """Keeps one subscribed combined-stream connection alive until ``stop`` is set.

    ``on_frame(frame_bytes, recv_time_ns)`` is called in the event loop for every market
    message, in arrival order; it must not block (put the frame in a buffer).
    ``on_oversize(size, limit, recv_time_ns)`` is called for a frame refused unread because
    it is longer than ``options.max_frame_bytes`` (``size`` None when unknown).
    """

    def __init__(self, url: str, streams: list[str], on_frame: Callable[[bytes, int], None],
                 on_event: Callable[[str], None], options: StreamOptions | None = None,
                 on_oversize: Callable[[int | None, int, int], None] | None = None):
        if not streams:
            raise SourceError("no streams to subscribe to: give at least one symbol")
        if len(streams) > MAX_STREAMS_PER_CONNECTION:
            raise SourceError(f"{len(streams)} streams > {MAX_STREAMS_PER_CONNECTION} per connection "
                              "(Binance's limit): run fewer symbols per pipeline")
        self.url = stream_url(url)
        self.streams = streams
        self.on_frame = on_frame
        self.on_event = on_event
        self.on_oversize = on_oversize
        self.opts = options or StreamOptions()
        if self.opts.max_frame_bytes < 1:
            raise SourceError("max_frame_bytes must be at least 1 byte")
        self.state = StreamState()
        self._rng = random.Random(self.opts.seed)
        self._attempts: deque[float] = deque()  # monotonic times of connection attempts
        self._next_id = 0

    # -- the loop ---------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        st = self.state
        current: _Conn | None = None
        ever = False
        try:
            while not stop.is_set():
                if current is None:
                    current = await self._open_with_retry(stop)
                    if current is None:
                        break
                    st.reconnects += ever
                    self.on_event("reconnected" if ever else "connected")
                    ever = True
                reason = await self._watch(current, stop)
                if reason == "stop":
                    break
                if reason == "dropped":
                    st.state, st.attempt = "reconnecting", 1
                    if current.oversize is not None:
                        st.oversize_frames += 1
                        size = "?" if current.oversize < 0 else current.oversize
                        st.note("oversize", f"a frame of {size} bytes > limit "
                                f"{self.opts.max_frame_bytes}: refused unread, reconnecting")
                    st.note("dropped", _close_detail(current.ws))
                    self.on_event("disconnected")
                    current = None
                    continue
                # rotate: the new connection is subscribed before the old one goes
                st.note(reason)
                new = await self._open_with_retry(stop)
                await self._close(current)
                current = new
                if current is None:
                    break
                if reason == "stale":
                    st.stale_replacements += 1
                    self.on_event("stale")
                else:
                    st.rotations += 1
                    self.on_event("replaced")
        finally:
            if current is not None:
                await self._close(current)
            st.state = "stopped"

    async def _watch(self, conn: _Conn, stop: asyncio.Event) -> str:
        o = self.opts
        while True:
            if stop.is_set():
                return "stop"
            if conn.reader is not None and conn.reader.done():
                return "dropped"
            now = time.monotonic()
            if conn.shutdown:
                self.state.server_shutdowns += 1
                return "server_shutdown"
            if now - conn.opened >= o.max_connection_age_s:
                return "age"
            if now - conn.last_frame >= o.stale_after_s:
                return "stale"
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass

    # -- opening ----------------------------------------------------------------------
    async def _open_with_retry(self, stop: asyncio.Event) -> _Conn | None:
        st = self.state
        while not stop.is_set():
            await self._pace(stop)
            if stop.is_set():
                return None
            try:
                conn = await self._open()
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed, SourceError) as exc:
                st.attempt += 1
                st.state = "reconnecting"
                st.last_error = f"{type(exc).__name__}: {exc}"
                st.note("connect_failed", st.last_error)
                continue
            except InvalidURI as exc:
                raise SourceError(f"bad Binance stream URL {self.url!r}: {exc}") from exc
            st.attempt = 0
            st.connections += 1
            st.state = "connected"
            st.connected_since = time.time()
            st.note("connected", self.url)
            return conn
        return None

    async def _pace(self, stop: asyncio.Event) -> None:
        """Backoff with jitter after failures, and the connection-attempt limit."""
        o, attempt = self.opts, self.state.attempt
        delay = 0.0
        if attempt > 0:
            cap = min(o.reconnect_max_s, o.reconnect_base_s * 2 ** (attempt - 1))
            delay = self._rng.uniform(cap / 2, cap)
        now = time.monotonic()
        while self._attempts and now - self._attempts[0] > 300:
            self._attempts.popleft()
        if len(self._attempts) >= o.max_connects_per_5min:
            delay = max(delay, self._attempts[0] + 300 - now)
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
        self._attempts.append(time.monotonic())

    async def _open(self) -> _Conn:
        # max_queue: the library pauses reading the socket above 16 buffered frames by
        # default; at thousands of trades/s it then paused and resumed every few frames
        # (epoll changes cost a third of this thread), so it may buffer more
        ws = await connect(self.url, ping_interval=None, max_size=self.opts.max_frame_bytes,
                           proxy=None, max_queue=(WS_MAX_QUEUE, WS_MAX_QUEUE // 4),
                           open_timeout=self.opts.open_timeout_s, close_timeout=2)
        now = time.monotonic()
        conn = _Conn(ws, now, now)
        conn.reader = asyncio.create_task(self._read(conn), name="binance-reader")
        try:
            for i in range(0, len(self.streams), SUBSCRIBE_CHUNK):
                await self._request(conn, "SUBSCRIBE", self.streams[i:i + SUBSCRIBE_CHUNK])
        except BaseException:
            await self._close(conn)
            raise
        return conn

    async def _request(self, conn: _Conn, method: str, params: list[str]) -> object:
        self._next_id += 1
        rid = self._next_id
        fut = asyncio.get_running_loop().create_future()
        conn.replies[rid] = fut
        await conn.ws.send(msgspec.json.encode({"method": method, "params": params, "id": rid}).decode())
        try:
            reply = await asyncio.wait_for(fut, self.opts.open_timeout_s)
        except TimeoutError as exc:
            raise SourceError(f"no answer to {method} within {self.opts.open_timeout_s} s") from exc
        finally:
            conn.replies.pop(rid, None)
            await asyncio.sleep(1 / MAX_SENDS_PER_S)  # the next request waits its turn
        if isinstance(reply, dict) and reply.get("error"):
            raise SourceError(f"Binance refused {method} {params[:3]}...: {reply['error']}")
        return reply

    # -- reading ----------------------------------------------------------------------
    async def _read(self, conn: _Conn) -> None:
        st = self.state
        try:
            while True:
                frame = await conn.ws.recv(decode=False)
                ns = time.time_ns()
                conn.last_frame = time.monotonic()
                st.last_frame_at = ns / 1e9
                if isinstance(frame, str):  # pragma: no cover - decode=False gives bytes
                    frame = frame.encode()
                head = frame[:96]
                if head.startswith(_CONTROL_PREFIXES):
                    self._reply(conn, frame)
                elif b'"serverShutdown"' in head:
                    conn.shutdown = True
                    st.note("server_shutdown")
                else:
                    self.on_frame(frame, ns)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                size = _refused_size(conn.ws, exc.sent.reason)
                conn.oversize = -1 if size is None else size
                if self.on_oversize is not None:
                    self.on_oversize(size, self.opts.max_frame_bytes, time.time_ns())
            return

    @staticmethod
    def _reply(conn: _Conn, frame: bytes) -> None:
        try:
            msg = msgspec.json.decode(frame)
        except msgspec.DecodeError:
            return
        fut = conn.replies.get(msg.get("id")) if isinstance(msg, dict) else None
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _close(self, conn: _Conn) -> None:
        # closing a broken socket can fail in many ways; there is nothing left to save
        with contextlib.suppress(Exception):
            await conn.ws.close()
        if conn.reader is not None:
            conn.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await conn.reader


def _refused_size(ws: ClientConnection, reason: str) -> int | None:
    """Length of the frame ``websockets`` refused as too big (from its parser's exception,
    else from the close reason "frame with N bytes exceeds limit ..."); None for a
    compressed frame, refused while decompressing past the limit."""
    exc = getattr(getattr(ws, "protocol", None), "parser_exc", None)
    if isinstance(exc, PayloadTooBig) and isinstance(getattr(exc, "size", None), int):
        return exc.size
    m = re.search(r"with (\d+) bytes", reason or "")
    return int(m.group(1)) if m else None


def _close_detail(ws: ClientConnection) -> str:
    code, reason = ws.close_code, ws.close_reason
    return f"close code {code}" + (f" ({reason})" if reason else "") if code else "connection lost"
