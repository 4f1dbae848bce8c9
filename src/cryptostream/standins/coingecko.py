"""Serve a local stand-in for CoinGecko's ``/api/v3/simple/price`` and ``/api/v3/ping``.

A real HTTP/1.1 server (``http.server.ThreadingHTTPServer``) on loopback, port 0 picking a
free port, so the poller is tested over real sockets with no internet. It behaves like the
free/demo API as far as the poller can tell:

* Prices are a seeded random walk per asset (0.2 % per step, volumes 5 %), stepped every
  ``update_interval_s``; between steps the same values and ``last_updated_at`` come back, as
  from CoinGecko's cache. ``last_updated_at`` is the step's epoch second, forced to grow by at
  least 1 per step so that sub-second test intervals stay distinguishable (it then runs
  ahead of the clock). ``*_24h_change`` is the percent change since the start price.
* ``ids`` and ``vs_currencies`` are comma lists (case-insensitive); unknown ids are left out
  of the answer and unknown currencies give no fields; a missing list is a 400 with a JSON
  error. Only fields whose ``include_*`` flag is ``true`` are sent (market cap: never).
* Checks, in order: injected faults (``fail_next``), the API key (``require_api_key``: a
  request without the matching ``x-cg-demo-api-key`` header gets 401), the rate limit
  (``rate_limit_per_min`` admitted requests per sliding minute, then 429 with
  ``Retry-After``; None or 0 = unlimited), then routing (404 for other paths).

``respond`` answers one request without sockets (what the handler calls), for unit tests.

>>> fake = FakeCoinGecko(seed=1, prices={"bitcoin": 60000.0})
>>> status, headers, body = fake.respond("/api/v3/simple/price?ids=bitcoin,nope&vs_currencies=usd", {})
>>> status, sorted(json.loads(body)), json.loads(body)["bitcoin"]["usd"]
(200, ['bitcoin'], 60000.0)
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlsplit

API_KEY_HEADER = "x-cg-demo-api-key"
RATE_WINDOW_S = 60.0
PRICE_STEP_SIGMA = 0.002  # log-return stddev of one price step
VOLUME_STEP_SIGMA = 0.05

#: Plausible mid-2024 USD prices of the ids ``cryptostream.sources.coingecko.DEFAULT_ASSETS``
#: maps to (plus a few); the universe of "known" ids unless ``prices`` is given.
DEFAULT_PRICES: dict[str, float] = {
    "bitcoin": 61_000.0, "ethereum": 2_700.0, "binancecoin": 550.0, "solana": 150.0,
    "ripple": 0.55, "cardano": 0.35, "dogecoin": 0.11, "tron": 0.13, "avalanche-2": 22.0,
    "polkadot": 4.8, "chainlink": 10.5, "litecoin": 62.0, "bitcoin-cash": 330.0,
    "polygon-ecosystem-token": 0.42, "matic-network": 0.42, "shiba-inu": 1.4e-05,
    "cosmos": 4.9, "uniswap": 6.8, "stellar": 0.095, "the-open-network": 6.5, "near": 4.6,
    "tether": 1.0, "usd-coin": 1.0, "pepe": 8.5e-06,
}
#: Units of each vs currency per USD (fixed); other vs currencies give no fields.
FX_PER_USD: dict[str, float] = {"usd": 1.0, "eur": 0.92, "gbp": 0.78, "jpy": 147.0}


@dataclass(slots=True)
class FakeCoinGeckoStats:
    """Counters for tests (``FakeCoinGecko.stats`` returns a copy)."""

    requests: int = 0  # every request received
    rate_limited: int = 0  # 429s sent (rate limit and injected)
    unauthorized: int = 0  # 401s for a missing or wrong API key
    bad_requests: int = 0  # 400s for missing parameters
    injected: int = 0  # answers consumed from ``fail_next``
    updates: int = 0  # price steps after the initial prices
    last_headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    last_path: str = ""  # path and query of the latest request


@dataclass(slots=True)
class _Asset:
    start_price: float
    price: float
    volume: float
    rng: random.Random


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API
    server_version = "FakeCoinGecko/1.0"
    timeout = 5  # seconds an idle kept-alive connection stays open

    def do_GET(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, body = self.server.fake.respond(self.path, headers)  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # quiet: tests read stats
        pass


class _Server(ThreadingHTTPServer):
    """Remembers open connections so that ``stop`` can cut kept-alive ones too."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], fake: FakeCoinGecko):
        super().__init__(address, _Handler)
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


def _seconds_text(seconds: float) -> str:
    """Retry-After value: whole seconds as an integer, else a short decimal ("0.5")."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _json(status: int, payload: object, headers: dict[str, str] | None = None):
    body = json.dumps(payload, separators=(",", ":")).encode()
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body


def _error(status: int, message: str, headers: dict[str, str] | None = None):
    return _json(status, {"status": {"error_code": status, "error_message": message}}, headers)


def _csv(query: dict[str, list[str]], name: str) -> list[str]:
    items = (i.strip().lower() for v in query.get(name, []) for i in v.split(","))
    return list(dict.fromkeys(i for i in items if i))


class FakeCoinGecko:
    """A CoinGecko stand-in on ``host:port``; ``start``/``stop`` or use it as a context manager.

    ``prices`` (id -> start USD price) replaces ``DEFAULT_PRICES`` as the set of known ids.
    Each asset walks with its own generator derived from ``seed`` and its id, so the same
    seed gives the same price path whatever else is listed.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, update_interval_s: float = 60.0,
                 rate_limit_per_min: int | None = 30, seed: int = 0,
                 require_api_key: str | None = None, prices: Mapping[str, float] | None = None):
        if not (math.isfinite(update_interval_s) and update_interval_s > 0):
            raise ValueError(f"update_interval_s must be > 0 seconds, got {update_interval_s!r}")
        if rate_limit_per_min is not None and rate_limit_per_min < 0:
            raise ValueError(f"rate_limit_per_min must be >= 0 (0 or None: unlimited), got "
                             f"{rate_limit_per_min!r}")
        table = dict(DEFAULT_PRICES if prices is None else prices)
        bad = {k: v for k, v in table.items() if not (math.isfinite(v) and v > 0)}
        if bad or not table:
            raise ValueError(f"prices must map ids to positive finite USD prices, got {bad or table}")
        self._address = (host, port)
        self._update_interval_s = float(update_interval_s)
        self._rate_limit_per_min = rate_limit_per_min or None
        self._require_api_key = require_api_key
        self._assets: dict[str, _Asset] = {}
        for asset, price in table.items():
            rng = random.Random(f"{seed}:{asset}")
            volume = price * 10 ** rng.uniform(4.0, 6.5)  # 24 h volume in USD
            self._assets[asset.lower()] = _Asset(float(price), float(price), volume, rng)
        self._lock = threading.Lock()
        self._stats = FakeCoinGeckoStats()
        self._faults: deque[tuple[int, float | None, bytes | None]] = deque()
        self._admitted_at: deque[float] = deque()  # monotonic times within the rate window
        self._last_updated_at_s = int(time.time())
        self._next_update_at = time.monotonic() + self._update_interval_s
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = self.url if self._server else "not started"
        key = "'<set>'" if self._require_api_key else "None"
        return f"FakeCoinGecko({where}, assets={len(self._assets)}, require_api_key={key})"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket and serve in a daemon thread (returns at once; port is then set)."""
        if self._server is not None:
            return
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={
            "poll_interval": 0.05}, name=f"fake-coingecko:{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket and open connections. Safe twice."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeCoinGecko is not started; call start() (or use `with`) first")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL to give the poller, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self._address[0]}:{self.port}"

    # -- knobs and views ------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 429, retry_after_s: float | None = 1.0,
                  body: bytes | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (thread-safe, queued in order).

        ``retry_after_s`` becomes a ``Retry-After`` header on 429/503 (None: no header);
        ``body`` replaces the JSON error body, e.g. ``fail_next(1, 200, body=b"<html>")``.
        """
        if count < 0 or not 100 <= status <= 599:
            raise ValueError(f"fail_next needs count >= 0 and an HTTP status, got {count}, {status}")
        with self._lock:
            self._faults.extend([(status, retry_after_s, body)] * count)

    def update_now(self) -> None:
        """Take one price step immediately (the next timed step follows ``update_interval_s`` later)."""
        with self._lock:
            self._step(time.time())
            self._next_update_at = time.monotonic() + self._update_interval_s

    @property
    def stats(self) -> FakeCoinGeckoStats:
        with self._lock:
            return replace(self._stats, last_headers=dict(self._stats.last_headers))

    def current_prices(self) -> dict[str, tuple[float, int]]:
        """id -> (USD price, last_updated_at) as served right now."""
        with self._lock:
            self._catch_up(time.monotonic())
            return {a: (s.price, self._last_updated_at_s) for a, s in self._assets.items()}

    # -- request handling -----------------------------------------------------------------

    def respond(self, target: str, headers: Mapping[str, str]
                ) -> tuple[int, dict[str, str], bytes]:
        """Status, extra headers and body for ``GET target`` (header names in lower case)."""
        now = time.monotonic()
        url = urlsplit(target)
        with self._lock:
            st = self._stats
            st.requests += 1
            st.last_headers = dict(headers)
            st.last_path = target
            if self._faults:
                status, retry_after_s, body = self._faults.popleft()
                st.injected += 1
                st.rate_limited += status == 429
                extra = ({"Retry-After": _seconds_text(retry_after_s)}
                         if retry_after_s is not None and status in (429, 503) else {})
                if body is None:
                    return _error(status, f"injected failure (HTTP {status})", extra)
                return status, {"Content-Type": "application/json", **extra}, body
            if (self._require_api_key is not None
                    and headers.get(API_KEY_HEADER) != self._require_api_key):
                st.unauthorized += 1
                missing = headers.get(API_KEY_HEADER) is None
                return _error(401, "API Key Missing" if missing else "Invalid API Key")
            if self._rate_limit_per_min is not None:
                while self._admitted_at and now - self._admitted_at[0] >= RATE_WINDOW_S:
                    self._admitted_at.popleft()
                if len(self._admitted_at) >= self._rate_limit_per_min:
                    st.rate_limited += 1
                    wait_s = max(1, math.ceil(RATE_WINDOW_S - (now - self._admitted_at[0])))
                    return _error(429, "You've exceeded the Rate Limit. Please visit "
                                  "https://www.coingecko.com/en/api/pricing to subscribe to our "
                                  "API plans for higher rate limits.", {"Retry-After": str(wait_s)})
                self._admitted_at.append(now)
            if url.path == "/api/v3/ping":
                return _json(200, {"gecko_says": "(V3) To the Moon!"})
            if url.path == "/api/v3/simple/price":
                return self._simple_price(parse_qs(url.query), now)
            return _json(404, {"error": f"Not Found: {url.path}"})

    def _simple_price(self, query: dict[str, list[str]], now: float):
        ids, currencies = _csv(query, "ids"), _csv(query, "vs_currencies")
        for name, values in (("ids", ids), ("vs_currencies", currencies)):
            if not values:
                self._stats.bad_requests += 1
                return _json(400, {"error": f"Missing parameter {name}"})

        def flag(name: str) -> bool:
            return query.get(name, ["false"])[-1].strip().lower() == "true"

        with_vol, with_change = flag("include_24hr_vol"), flag("include_24hr_change")
        with_updated = flag("include_last_updated_at")
        self._catch_up(now)
        answer: dict[str, dict[str, float | int]] = {}
        for asset_id in ids:
            asset = self._assets.get(asset_id)
            if asset is None:
                continue
            entry: dict[str, float | int] = {}
            for currency in currencies:
                fx = FX_PER_USD.get(currency)
                if fx is None:
                    continue
                entry[currency] = asset.price * fx
                if with_vol:
                    entry[f"{currency}_24h_vol"] = asset.volume * fx
                if with_change:
                    entry[f"{currency}_24h_change"] = (asset.price / asset.start_price - 1) * 100
            if with_updated:
                entry["last_updated_at"] = self._last_updated_at_s
            answer[asset_id] = entry
        return _json(200, answer)

    def _catch_up(self, now: float) -> None:
        """Take every step due by monotonic ``now`` (lock held)."""
        while now >= self._next_update_at:
            self._step(time.time() - (now - self._next_update_at))
            self._next_update_at += self._update_interval_s

    def _step(self, at_s: float) -> None:
        """One random-walk step of every asset, stamped ``at_s`` (lock held)."""
        for asset in self._assets.values():
            asset.price *= math.exp(asset.rng.gauss(0.0, PRICE_STEP_SIGMA))
            asset.volume *= math.exp(asset.rng.gauss(0.0, VOLUME_STEP_SIGMA))
        self._last_updated_at_s = max(self._last_updated_at_s + 1, int(at_s))
        self._stats.updates += 1
