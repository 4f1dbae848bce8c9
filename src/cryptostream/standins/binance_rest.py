"""The REST side of the Binance stand-in: market-data endpoints, request weight, injected failures.

Served on the WebSocket port (plain HTTP GETs answered during the handshake):

* ``/api/v3/ping`` -> ``{}``; ``/api/v3/time`` -> ``{"serverTime": <replay clock ms>}``;
* ``/api/v3/trades?symbol=&limit=`` (most recent), ``/api/v3/historicalTrades?symbol=
  &fromId=&limit=`` (from an id, or the most recent), ``/api/v3/aggTrades?symbol=&fromId=
  &startTime=&endTime=&limit=``. Only trades that have happened on the replay clock are
  served (withheld ones included). ``limit`` defaults to 500; above 1000 it is taken as 1000.

Request weight (Binance's: trades and historicalTrades 25, aggTrades 4, time and ping 1) is
counted per client IP over a rolling minute and reported in ``X-MBX-USED-WEIGHT-1M`` on every
answer; a request that would pass ``weight_limit_per_min`` is refused (429, not counted).
Errors are Binance's ``{"code": -11xx, "msg": ...}`` with status 400; unknown paths get 404
(and methods other than GET 405, see :mod:`~cryptostream.standins.binance`).
Injected failures (:meth:`RestApi.fail`) answer the next data requests (trades,
historicalTrades, aggTrades) with 429 or 418 and a ``Retry-After``.
"""

from __future__ import annotations

import email.utils
import http
import math
import re
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from urllib.parse import parse_qs

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Response

from cryptostream.standins.binance_data import AGG_ID_BASE, SymbolData, rest_agg, rest_trade
from cryptostream.standins.binance_options import FakeOptions, FakeStats

WEIGHTS = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/trades": 25,
    "/api/v3/historicalTrades": 25,
    "/api/v3/aggTrades": 4,
}
DATA_PATHS = frozenset({"/api/v3/trades", "/api/v3/historicalTrades", "/api/v3/aggTrades"})
DEFAULT_LIMIT, MAX_LIMIT = 500, 1000
_SYMBOL_RANGE = "^[A-Z0-9-_.]{1,20}$"
_SYMBOL = re.compile(_SYMBOL_RANGE)
_INT = re.compile(r"^[0-9]{1,20}$")


class ApiError(Exception):
    """A Binance error answer: HTTP status, error code, message."""

    def __init__(self, status: int, code: int, msg: str):
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


class _Weights:
    """Request weight used per client IP over a rolling minute."""

    def __init__(self) -> None:
        self._spent: dict[str, deque[tuple[float, int]]] = {}
        self._used: dict[str, int] = {}

    def used(self, ip: str, now: float) -> int:
        spent = self._spent.setdefault(ip, deque())
        used = self._used.get(ip, 0)
        while spent and spent[0][0] <= now - 60.0:
            used -= spent.popleft()[1]
        self._used[ip] = used
        return used

    def add(self, ip: str, now: float, weight: int) -> None:
        self._spent.setdefault(ip, deque()).append((now, weight))
        self._used[ip] = self._used.get(ip, 0) + weight

    def wait_s(self, ip: str, now: float, weight: int, limit: int) -> float:
        """Seconds until ``weight`` more fits under ``limit``."""
        used = self.used(ip, now)
        if weight > limit:
            return 60.0
        wait = 0.0
        for t, w in self._spent.get(ip, ()):
            if used + weight <= limit:
                break
            used -= w
            wait = t + 60.0 - now
        return max(wait, 0.0)


class RestApi:
    """Answers the REST requests; see the module docstring."""

    def __init__(self, symbols: dict[str, SymbolData], options: FakeOptions, stats: FakeStats,
                 clock: Callable[[], int | None], shift: Callable[[], int],
                 now_ms: Callable[[], int]):
        self._symbols = symbols
        self._options = options
        self._stats = stats
        self._clock = clock  # exchange ms (unshifted), None before the clock starts
        self._shift = shift  # ms added to every time served
        self._now_ms = now_ms  # the time /api/v3/time answers
        self._weights = _Weights()
        self._lock = threading.Lock()
        self._failures: deque[list] = deque([c, s, 1.0] for c, s in options.rest_fail if c)

    def fail(self, count: int, status: int = 429, retry_after_s: float = 1.0) -> None:
        """Answer the next ``count`` data requests with ``status`` (429 or 418); thread-safe."""
        if status not in (418, 429):
            raise ValueError(f"fail_rest status must be 429 or 418, not {status}")
        if count > 0:
            with self._lock:
                self._failures.append([count, status, retry_after_s])

    def respond(self, target: str, ip: str) -> Response:
        """The HTTP response to ``GET target`` from ``ip``."""
        path, _, query = target.partition("?")
        self._stats.rest_requests[path] += 1
        now = time.monotonic()
        weight = WEIGHTS.get(path)
        if weight is None:
            return json_response(404, {"code": -1000, "msg": f"Unknown path {path}"},
                             self._weights.used(ip, now))
        injected = self._injected() if path in DATA_PATHS else None
        if injected is not None:
            status, retry = injected
            return self._refuse(status, retry, ip, now)
        limit = self._options.weight_limit_per_min
        if self._weights.used(ip, now) + weight > limit:
            return self._refuse(429, self._weights.wait_s(ip, now, weight, limit), ip, now)
        self._weights.add(ip, now, weight)
        used = self._weights.used(ip, now)
        try:
            body = self._dispatch(path, _params(query))
        except ApiError as exc:
            return json_response(exc.status, {"code": exc.code, "msg": exc.msg}, used)
        return json_response(200, body, used)

    def _injected(self) -> tuple[int, float] | None:
        with self._lock:
            if not self._failures:
                return None
            head = self._failures[0]
            head[0] -= 1
            if head[0] <= 0:
                self._failures.popleft()
            return head[1], head[2]

    def _refuse(self, status: int, retry_after_s: float, ip: str, now: float) -> Response:
        retry = max(1, math.ceil(retry_after_s))
        if status == 418:
            self._stats.rest_418 += 1
            until = int(time.time() * 1000) + retry * 1000
            msg = (f"Way too much request weight used; IP banned until {until}. "
                   "Please use WebSocket Streams for live updates to avoid bans.")
        else:
            self._stats.rest_429 += 1
            msg = (f"Too much request weight used; current limit is "
                   f"{self._options.weight_limit_per_min} request weight per 1 MINUTE. "
                   "Please use WebSocket Streams for live updates to avoid polling the API.")
        return json_response(status, {"code": -1003, "msg": msg}, self._weights.used(ip, now),
                         retry_after=retry)

    # -- endpoints ------------------------------------------------------------------------
    def _dispatch(self, path: str, params: dict[str, str]) -> object:
        if path == "/api/v3/ping":
            return {}
        if path == "/api/v3/time":
            return {"serverTime": self._now_ms()}
        data = self._symbol(params)
        limit = _limit(params)
        shift = self._shift()
        if path == "/api/v3/aggTrades":
            return [rest_agg(a, shift) for a in self._aggs(data, params, limit, shift)]
        n = data.happened(self._clock())
        from_id = _int(params, "fromId") if path == "/api/v3/historicalTrades" else None
        if from_id is None:
            return [rest_trade(t, shift) for t in data.trades[max(0, n - limit):n]]
        i = bisect_left(data.ids, from_id)
        return [rest_trade(t, shift) for t in data.trades[i:min(i + limit, n)]]

    def _aggs(self, data: SymbolData, params: dict[str, str], limit: int, shift: int) -> list:
        n = data.aggs_happened(self._clock())
        from_id = _int(params, "fromId")
        start, end = _int(params, "startTime"), _int(params, "endTime")
        if from_id is not None and (start is not None or end is not None):
            raise ApiError(400, -1128, "Combination of optional parameters invalid.")
        if from_id is not None:
            i = max(0, from_id - AGG_ID_BASE)
            return data.aggs[i:min(i + limit, n)]
        if start is None and end is None:
            return data.aggs[max(0, n - limit):n]
        lo = 0 if start is None else bisect_left(data.agg_release, start - shift)
        hi = n if end is None else min(n, bisect_right(data.agg_release, end - shift))
        if start is not None:
            return data.aggs[lo:min(lo + limit, hi)]
        return data.aggs[max(lo, hi - limit):hi]

    def _symbol(self, params: dict[str, str]) -> SymbolData:
        symbol = params.get("symbol", "")
        if not symbol:
            raise ApiError(400, -1102, "Mandatory parameter 'symbol' was not sent, was "
                                       "empty/null, or malformed.")
        if not _SYMBOL.match(symbol):
            raise ApiError(400, -1100, f"Illegal characters found in parameter 'symbol'; "
                                       f"legal range is '{_SYMBOL_RANGE}'.")
        data = self._symbols.get(symbol)
        if data is None:
            raise ApiError(400, -1121, "Invalid symbol.")
        return data


def _params(query: str) -> dict[str, str]:
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:  # pragma: no cover - parse_qs is lenient
        raise ApiError(400, -1100, f"Illegal characters found in a parameter ({exc}).") from exc
    if any(len(v) > 1 for v in parsed.values()):
        raise ApiError(400, -1101, "Duplicate values for a parameter detected.")
    return {k: v[0] for k, v in parsed.items()}


def _int(params: dict[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not _INT.match(value):
        raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; "
                                   "legal range is '^[0-9]{1,20}$'.")
    return int(value)


def _limit(params: dict[str, str]) -> int:
    limit = _int(params, "limit")
    if limit is None:
        return DEFAULT_LIMIT
    if limit < 1:
        raise ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
    return min(limit, MAX_LIMIT)


def json_response(status: int, body: object, used_weight: int, retry_after: int | None = None
              ) -> Response:
    payload = msgspec.json.encode(body)
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Content-Type", "application/json;charset=UTF-8"),
        ("Content-Length", str(len(payload))),
        ("Connection", "close"),
        ("X-MBX-USED-WEIGHT-1M", str(used_weight)),
    ])
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Response(status, http.HTTPStatus(status).phrase, headers, payload)
