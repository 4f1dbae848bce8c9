"""Binance spot REST for backfills: trade pages by id, server time, request weight and bans.

Only public endpoints that need no API key are used: ``/api/v3/historicalTrades`` (weight
25) and ``/api/v3/aggTrades`` (weight 4) to fetch trades from an id onwards, and
``/api/v3/time`` (weight 1) to measure the clock skew to the exchange.

Rate limits (binance-spot-api-docs, rest-api.md "LIMITS"): the weight used in the current
minute comes back in ``X-MBX-USED-WEIGHT-1M``; this client keeps a margin under
``weight_limit_per_min`` and waits for the next minute rather than cross it. A ``429``
(too many requests) or ``418`` (IP banned after ignoring 429s) carries ``Retry-After``
seconds: no request is sent before that time has passed, and the caller is told how long
it waits (``RateLimited``).

Fetched trades are turned into the same WebSocket trade messages the stream carries, so
backfilled trades go through the same decoder and cleaning as live ones.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass

import httpx
import msgspec

from cryptostream.errors import SourceError

PAGE_LIMIT = 1000
WEIGHT = {"/api/v3/historicalTrades": 25, "/api/v3/aggTrades": 4, "/api/v3/time": 1}


class BackfillError(SourceError):
    """A REST request failed (network, 5xx, unexpected body); the caller may retry."""


class RateLimited(BackfillError):
    """The exchange answered 429/418: nothing may be sent for ``retry_after_s`` seconds."""

    def __init__(self, status: int, retry_after_s: float):
        what = "IP banned (418)" if status == 418 else "too many requests (429)"
        super().__init__(f"Binance REST: {what}; waiting {retry_after_s:.1f} s as told")
        self.status = status
        self.retry_after_s = retry_after_s


class _HistTrade(msgspec.Struct):
    id: int
    price: str
    qty: str
    time: int
    isBuyerMaker: bool
    isBestMatch: bool = True


class _AggTrade(msgspec.Struct):
    a: int
    p: str
    q: str
    f: int
    l: int
    T: int
    m: bool
    M: bool = True


_HIST = msgspec.json.Decoder(list[_HistTrade])
_AGG = msgspec.json.Decoder(list[_AggTrade])
_ENC = msgspec.json.Encoder()


def trade_messages(symbol: str, body: bytes, agg: bool) -> tuple[list[bytes], int | None, int]:
    """WebSocket-shaped messages for a REST trade page: (lines, last id, rows in the page).

    >>> lines, last, n = trade_messages("BTCUSDT", b'[{"id":7,"price":"1.5","qty":"2",'
    ...     b'"quoteQty":"3","time":1723161255342,"isBuyerMaker":true,"isBestMatch":true}]', False)
    >>> lines[0].decode(), last, n
    ('{"e":"trade","E":1723161255342,"s":"BTCUSDT","t":7,"p":"1.5","q":"2","T":1723161255342,"m":true,"M":true}', 7, 1)
    """
    try:
        rows = _AGG.decode(body) if agg else _HIST.decode(body)
    except msgspec.DecodeError as exc:
        raise BackfillError(f"Binance REST: unexpected trade page ({exc}): {body[:200]!r}") from exc
    if agg:
        lines = [_ENC.encode({"e": "aggTrade", "E": r.T, "s": symbol, "a": r.a, "p": r.p,
                              "q": r.q, "f": r.f, "l": r.l, "T": r.T, "m": r.m, "M": r.M})
                 for r in rows]
        last = rows[-1].a if rows else None
    else:
        lines = [_ENC.encode({"e": "trade", "E": r.time, "s": symbol, "t": r.id, "p": r.price,
                              "q": r.qty, "T": r.time, "m": r.isBuyerMaker, "M": r.isBestMatch})
                 for r in rows]
        last = rows[-1].id if rows else None
    return lines, last, len(rows)


def retry_after_s(value: str | None, default_s: float = 60.0) -> float:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date).

    >>> retry_after_s("7"), retry_after_s(None, 3.0)
    (7.0, 3.0)
    """
    if not value:
        return default_s
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default_s
    return max(0.0, when.timestamp() - time.time())


@dataclass
class RestStats:
    requests: int = 0
    rate_limited: int = 0
    banned: int = 0
    errors: int = 0
    weight_used: int = 0
    weight_waits: int = 0


class BinanceRest:
    """Async client for the few public endpoints backfills need (one per source)."""

    def __init__(self, base_url: str, weight_limit_per_min: int = 6000,
                 weight_margin: float = 0.8, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.budget = int(weight_limit_per_min * weight_margin)
        self.stats = RestStats()
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)
        self._blocked_until = 0.0  # monotonic time before which nothing is sent
        self._minute = int(time.time() // 60)
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def server_time_skew_ms(self) -> float:
        """Exchange clock minus local clock, in ms (midpoint of the request)."""
        t0 = time.time()
        r = await self._get("/api/v3/time", {})
        t1 = time.time()
        try:
            server_ms = int(msgspec.json.decode(r.content)["serverTime"])
        except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
            raise BackfillError(f"Binance REST: bad /api/v3/time answer {r.content[:200]!r}") from exc
        return server_ms - (t0 + t1) * 500.0

    async def trade_page(self, symbol: str, from_id: int, agg: bool,
                         limit: int = PAGE_LIMIT) -> tuple[list[bytes], int | None, int]:
        """Up to ``limit`` trades of ``symbol`` from id ``from_id`` on, as messages."""
        if agg:
            r = await self._get("/api/v3/aggTrades", {"symbol": symbol, "fromId": from_id, "limit": limit})
        else:
            r = await self._get("/api/v3/historicalTrades",
                                {"symbol": symbol, "fromId": from_id, "limit": limit})
        return trade_messages(symbol, r.content, agg)

    async def _get(self, path: str, params: dict) -> httpx.Response:
        async with self._lock:  # one request at a time: the weight budget stays exact
            await self._wait_for_budget(WEIGHT.get(path, 1))
            self.stats.requests += 1
            try:
                r = await self._client.get(path, params=params)
            except httpx.HTTPError as exc:
                self.stats.errors += 1
                raise BackfillError(f"Binance REST {path}: {type(exc).__name__}: {exc} "
                                    f"(is {self.base_url} reachable?)") from exc
            used = r.headers.get("x-mbx-used-weight-1m")
            if used and used.isdigit():
                self.stats.weight_used = int(used)
            if r.status_code in (418, 429):
                wait = retry_after_s(r.headers.get("retry-after"))
                self._blocked_until = time.monotonic() + wait
                if r.status_code == 418:
                    self.stats.banned += 1
                else:
                    self.stats.rate_limited += 1
                raise RateLimited(r.status_code, wait)
            if r.status_code != 200:
                self.stats.errors += 1
                raise BackfillError(f"Binance REST {path} answered {r.status_code}: {r.text[:200]}")
            return r

    async def _wait_for_budget(self, weight: int) -> None:
        delay = self._blocked_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        minute = int(time.time() // 60)
        if minute != self._minute:
            self._minute, self.stats.weight_used = minute, 0
        if self.stats.weight_used + weight > self.budget:
            self.stats.weight_waits += 1
            await asyncio.sleep(60 - time.time() % 60 + 0.05)
            self._minute, self.stats.weight_used = int(time.time() // 60), 0
        self.stats.weight_used += weight
