"""Poll CoinGecko's ``/api/v3/simple/price`` for USD reference prices of the traded assets.

CoinGecko is a slow *reference*, not a trade feed: its free/demo tier caches prices for about
60 s and allows roughly 30 calls/min, hence one request per ``interval_s`` (60 s) for all assets.

* ``poll_once`` makes one request and returns only ticks whose ``last_updated_at`` moved forward
  for their asset; an unchanged one (CoinGecko's cache) counts in ``status.duplicates_skipped``,
  an older one (a stale edge cache) in ``stale_skipped``. A malformed entry for one asset (no
  ``usd``, non-numeric, NaN, bad ``last_updated_at``) is dropped and counted in
  ``rejected_entries``; ids CoinGecko does not know land in ``missing_assets`` (usually a typo).
* ``run`` polls until a ``threading.Event`` is set. A 429 waits ``Retry-After`` (seconds or HTTP
  date, capped at ``max_backoff_s``) or backs off; network errors, timeouts, 5xx and unreadable
  bodies back off exponentially with seeded jitter; a success resets the backoff. What waiting
  cannot fix (401/403 key problems, 400, 404 from a wrong ``base_url``) is raised.
* The API key travels only in the ``x-cg-demo-api-key`` header, never in reprs, status or errors.

>>> assets_for(["BTCUSDT", "ethusdt", "NOPEUSDT"])
{'BTCUSDT': 'bitcoin', 'ETHUSDT': 'ethereum'}
"""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC
from email.utils import parsedate_to_datetime

import httpx

from cryptostream import __version__
from cryptostream.errors import ConfigError, SourceError
from cryptostream.model import US_PER_S

DEFAULT_BASE_URL = "https://api.coingecko.com"
PRICE_PATH = "/api/v3/simple/price"
API_KEY_HEADER = "x-cg-demo-api-key"
API_KEY_ENV = "COINGECKO_API_KEY"  # where callers are expected to read the key from
_MIN_UPDATED_S, _MAX_UPDATED_S = 1_262_304_000, 4_102_444_800  # 2010-01-01, 2100-01-01 (s)
STOP_CHECK_S = 0.2  # longest a waiting ``run`` goes without looking at its stop event (fake sleep)

#: Binance symbol -> CoinGecko id of the commonly traded USDT pairs.
DEFAULT_ASSETS: dict[str, str] = {
    "BTCUSDT": "bitcoin", "ETHUSDT": "ethereum", "BNBUSDT": "binancecoin",
    "SOLUSDT": "solana", "XRPUSDT": "ripple", "ADAUSDT": "cardano", "DOGEUSDT": "dogecoin",
    "TRXUSDT": "tron", "AVAXUSDT": "avalanche-2", "DOTUSDT": "polkadot",
    "LINKUSDT": "chainlink", "LTCUSDT": "litecoin", "BCHUSDT": "bitcoin-cash",
    "POLUSDT": "polygon-ecosystem-token", "MATICUSDT": "matic-network",
    "SHIBUSDT": "shiba-inu", "ATOMUSDT": "cosmos", "UNIUSDT": "uniswap", "XLMUSDT": "stellar",
    "TONUSDT": "the-open-network", "NEARUSDT": "near",
}


@dataclass(frozen=True, slots=True)
class ReferenceTick:
    """One CoinGecko price of one asset, as mapped to one Binance symbol."""

    asset: str  # CoinGecko id, e.g. "bitcoin"
    symbol: str  # the Binance symbol it maps to, e.g. "BTCUSDT" ("" if unmapped)
    price_usd: float
    volume_24h: float | None  # USD volume over 24 h
    change_24h: float | None  # percent
    last_updated_at_s: int  # CoinGecko's last_updated_at (epoch seconds)
    received_at_us: int  # local receive time (epoch microseconds)


@dataclass(frozen=True, slots=True)
class ParsedPrices:
    """What ``parse_simple_price`` found in one response body."""

    ticks: tuple[ReferenceTick, ...]
    rejected: tuple[str, ...]  # "<id>: <reason>" per dropped entry
    missing: tuple[str, ...]  # requested ids absent from the answer (unknown to CoinGecko)


@dataclass(slots=True)
class PollerStatus:
    """Counters of one poller (``CoinGeckoPoller.status`` returns a copy)."""

    polls: int = 0  # requests attempted
    ticks: int = 0  # ticks returned
    duplicates_skipped: int = 0  # asset entries whose last_updated_at had not changed
    stale_skipped: int = 0  # asset entries older than the one already kept
    rejected_entries: int = 0  # malformed asset entries dropped
    rate_limited: int = 0  # HTTP 429 answers
    errors: int = 0  # other failed requests
    last_error: str = ""  # message of the latest failure (kept after recovery)
    last_success_at_us: int = 0  # receive time of the latest good answer; 0 = never
    next_poll_in_s: float = 0.0  # while ``run`` waits: seconds to the next request
    consecutive_failures: int = 0
    missing_assets: tuple[str, ...] = ()  # requested ids absent from the latest answer


class CoinGeckoError(SourceError):
    """A CoinGecko request failed; ``retryable`` says whether trying again later can help."""

    def __init__(self, message: str, *, retryable: bool = True, status_code: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status_code = status_code


class CoinGeckoRateLimited(CoinGeckoError):
    """HTTP 429; ``retry_after_s`` is how long CoinGecko asked to wait (None: it did not say)."""

    def __init__(self, retry_after_s: float | None, message: str | None = None):
        wait = "" if retry_after_s is None else f" {retry_after_s:g} s"
        super().__init__(message or f"CoinGecko rate limit hit (HTTP 429); wait{wait} before the "
                         "next call", retryable=True, status_code=429)
        self.retry_after_s = retry_after_s


def assets_for(symbols: Sequence[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map Binance symbols to CoinGecko ids (symbol -> id); unknown symbols are left out.

    Lookup ignores case and surrounding blanks; ``extra`` (symbol -> id) adds entries or
    overrides ``DEFAULT_ASSETS``. The unmapped symbols are those missing from the result's keys.

    >>> assets_for(["PEPEUSDT"], extra={"pepeusdt": "pepe"})
    {'PEPEUSDT': 'pepe'}
    """
    table = {**DEFAULT_ASSETS, **{k.strip().upper(): v for k, v in (extra or {}).items()}}
    keys = (symbol.strip().upper() for symbol in symbols)
    return {key: table[key] for key in keys if table.get(key)}


def _number(entry: Mapping, key: str, *, required: bool, positive: bool = False) -> float | None:
    """``entry[key]`` as a finite float (None if absent and optional), else raise why not."""
    value = entry.get(key)
    if value is None:
        if required:
            raise ValueError(f"no {key!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key!r} is not a number: {_short(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise ValueError(f"{key!r} is out of range: {_short(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"{key!r} is not finite: {value!r}")
    if positive and number <= 0:
        raise ValueError(f"{key!r} is not positive: {value!r}")
    return number


def parse_simple_price(body: bytes | str, symbols_by_id: Mapping[str, Sequence[str]],
                       received_at_us: int) -> ParsedPrices:
    """Validate a ``/simple/price`` body (USD) into one tick per (requested id, symbol).

    An id with no symbols yields one tick with ``symbol=""``. Ids that were not requested
    are ignored. A body that is not a JSON object raises a retryable ``CoinGeckoError``.

    >>> body = '{"bitcoin": {"usd": 61234.5, "last_updated_at": 1723161255}, "solana": {}}'
    >>> p = parse_simple_price(body, {"bitcoin": ["BTCUSDT"], "solana": []}, 0)
    >>> p.ticks[0].price_usd, p.ticks[0].volume_24h, p.rejected
    (61234.5, None, ("solana: no 'usd'",))
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting: Recursion
        raise CoinGeckoError(f"CoinGecko sent a body that is not JSON ({exc}; starts with "
                             f"{_snippet(body)!r}); a proxy or outage page is likely, it will "
                             "be retried") from None
    if not isinstance(data, dict):
        raise CoinGeckoError(f"CoinGecko sent JSON that is not an object (starts with "
                             f"{_snippet(body)!r}); it will be retried")
    ticks: list[ReferenceTick] = []
    rejected: list[str] = []
    for asset, symbols in symbols_by_id.items():
        entry = data.get(asset)
        if entry is None:
            continue
        try:
            if not isinstance(entry, dict):
                raise TypeError(f"entry is not an object: {_short(entry)}")
            price = _number(entry, "usd", required=True, positive=True)
            volume = _number(entry, "usd_24h_vol", required=False)
            change = _number(entry, "usd_24h_change", required=False)
            updated = _number(entry, "last_updated_at", required=True, positive=True)
            if volume is not None and volume < 0:
                raise ValueError(f"'usd_24h_vol' is negative: {volume!r}")
            if not _MIN_UPDATED_S <= updated < _MAX_UPDATED_S:
                raise ValueError(f"'last_updated_at' {updated!r} is not a time in 2010..2100")
        except (TypeError, ValueError) as exc:
            rejected.append(f"{asset}: {exc}")
            continue
        for symbol in symbols or ("",):
            ticks.append(ReferenceTick(asset, symbol, price, volume, change, int(updated),
                                       received_at_us))
    missing = tuple(a for a in symbols_by_id if data.get(a) is None)
    return ParsedPrices(tuple(ticks), tuple(rejected), missing)


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay seconds or HTTP date); None if absent
    or unreadable. Decimal seconds are accepted; a past date gives 0.

    >>> parse_retry_after("7", 0.0), parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", 30.0)
    (7.0, 30.0)
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now_s
    return max(0.0, seconds) if math.isfinite(seconds) else None


def backoff_delay_s(failures: int, rng: random.Random, min_s: float = 1.0,
                    max_s: float = 300.0) -> float:
    """Wait after ``failures`` consecutive failures: exponential with "equal jitter".

    The ceiling doubles per failure from ``min_s`` up to ``max_s``; the delay is drawn from
    [ceiling/2, ceiling], so pollers spread out yet never retry sooner than half the ceiling.

    >>> rng = random.Random(0)
    >>> [round(backoff_delay_s(n, rng), 2) for n in (0, 1, 2, 3, 30)]
    [0.0, 0.92, 1.76, 2.84, 188.84]
    """
    if failures <= 0:
        return 0.0
    ceiling = min(max_s, min_s * 2.0 ** min(failures - 1, 60))
    return ceiling / 2 + rng.random() * ceiling / 2


def _short(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, safe for any JSON value (an integer of
    thousands of digits, a deeply nested list)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<integer of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"
    return text[:limit]


def _snippet(body: bytes | str, limit: int = 120) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return " ".join(text.split())[:limit]


class CoinGeckoPoller:
    """Fetches reference prices for ``assets`` (Binance symbol -> CoinGecko id) from CoinGecko.

    ``clock`` (epoch seconds) stamps ``received_at_us``; ``monotonic`` and ``sleep`` drive the
    waits of ``run`` (``sleep=None`` waits on the stop event itself). The only randomness is
    the backoff jitter, drawn from ``random.Random(seed)``. A ``client`` passed in is used
    (with per-request timeout and headers) but not closed by ``close``.
    """

    def __init__(self, assets: Mapping[str, str], base_url: str = DEFAULT_BASE_URL,
                 interval_s: float = 60.0, api_key: str | None = None, timeout_s: float = 10.0,
                 max_backoff_s: float = 300.0, seed: int = 0, client: httpx.Client | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] | None = None, *, min_backoff_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic):
        symbols_by_id: dict[str, list[str]] = {}
        for symbol, asset in assets.items():
            if not isinstance(asset, str) or not asset.strip():
                raise ConfigError(f"CoinGecko id for {symbol!r} is empty; map it to an id such "
                                  "as 'bitcoin' (see DEFAULT_ASSETS) or leave the symbol out")
            symbols_by_id.setdefault(asset.strip(), []).append(symbol)
        if not symbols_by_id:
            raise ConfigError("no assets to poll on CoinGecko; pass symbol -> id pairs, "
                              "e.g. assets_for(['BTCUSDT'])")
        for name, value in (("interval_s", interval_s), ("timeout_s", timeout_s),
                            ("min_backoff_s", min_backoff_s), ("max_backoff_s", max_backoff_s)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if min_backoff_s > max_backoff_s:
            raise ConfigError(f"min_backoff_s ({min_backoff_s}) exceeds max_backoff_s "
                              f"({max_backoff_s}); lower the first or raise the second")
        if not re.match(r"^https?://[^/\s]+", base_url):
            raise ConfigError(f"CoinGecko base_url must look like {DEFAULT_BASE_URL!r}, "
                              f"got {base_url!r}")
        api_key = (api_key or "").strip() or None
        if api_key is not None and not re.fullmatch(r"[\x21-\x7e]+", api_key):
            raise ConfigError(f"the CoinGecko API key ({API_KEY_ENV}) holds blanks or non-ASCII "
                              "characters that cannot go in an HTTP header; copy it again")
        self._symbols_by_id = {a: tuple(s) for a, s in symbols_by_id.items()}
        self._base_url = base_url.rstrip("/")
        self._url = self._base_url + PRICE_PATH
        self._params = {"ids": ",".join(sorted(self._symbols_by_id)), "vs_currencies": "usd",
                        "include_24hr_vol": "true", "include_24hr_change": "true",
                        "include_last_updated_at": "true"}
        self._api_key = api_key
        self._headers = {"Accept": "application/json", "User-Agent": f"cryptostream/{__version__}"}
        if api_key is not None:
            self._headers[API_KEY_HEADER] = api_key
        self._interval_s, self._timeout_s = float(interval_s), float(timeout_s)
        self._min_backoff_s, self._max_backoff_s = float(min_backoff_s), float(max_backoff_s)
        self._rng = random.Random(seed)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)
        self._clock, self._sleep, self._monotonic = clock, sleep, monotonic
        self._lock = threading.Lock()
        self._status = PollerStatus()
        self._last_updated_s: dict[str, int] = {}
        self._next_poll_at: float | None = None  # monotonic deadline while ``run`` waits
        self._closed = False

    def __repr__(self) -> str:
        key = "'<redacted>'" if self._api_key else "None"
        return (f"CoinGeckoPoller(base_url={self._base_url!r}, assets={sorted(self._symbols_by_id)}"
                f", interval_s={self._interval_s:g}, api_key={key})")

    @property
    def status(self) -> PollerStatus:
        """A snapshot of the counters (safe to read from another thread)."""
        with self._lock:
            wait_s = 0.0 if self._next_poll_at is None else self._next_poll_at - self._monotonic()
            return replace(self._status, next_poll_in_s=max(0.0, wait_s))

    def close(self) -> None:
        """Release the HTTP client if this poller created it. Safe to call twice."""
        self._closed = True
        if self._owns_client:
            self._client.close()

    def poll_once(self) -> list[ReferenceTick]:
        """One request; the ticks that are new since the last kept ones (possibly none).

        Raises ``CoinGeckoRateLimited`` on 429 and ``CoinGeckoError`` on any other failure.
        """
        if self._closed:
            raise CoinGeckoError("this CoinGecko poller is closed; create a new one",
                                 retryable=False)
        with self._lock:
            self._status.polls += 1
        try:
            response = self._client.get(self._url, params=self._params, headers=self._headers,
                                        timeout=self._timeout_s)
        except httpx.TimeoutException as exc:
            raise self._failed(CoinGeckoError(
                f"CoinGecko at {self._base_url} did not answer within {self._timeout_s:g} s "
                f"({type(exc).__name__}); retry later, or raise timeout_s on a slow link")) from exc
        except httpx.HTTPError as exc:
            raise self._failed(CoinGeckoError(self._redact(
                f"could not reach CoinGecko at {self._base_url} ({type(exc).__name__}: {exc}); "
                "check the network, proxy settings and base_url"))) from exc
        received_at_us = int(self._clock() * US_PER_S)
        if response.status_code != 200:
            raise self._failed(self._http_error(response))
        try:
            parsed = parse_simple_price(response.content, self._symbols_by_id, received_at_us)
        except CoinGeckoError as exc:
            raise self._failed(CoinGeckoError(self._redact(str(exc)))) from None
        return self._keep_new(parsed, received_at_us)

    def run(self, stop: threading.Event) -> Iterator[list[ReferenceTick]]:
        """Poll every ``interval_s`` until ``stop`` is set, yielding each non-empty tick list.

        Transient failures never raise: 429 waits Retry-After (capped at ``max_backoff_s``)
        or backs off; the rest back off (``backoff_delay_s``). Non-retryable ones raise. A
        request in flight is not interrupted by ``stop`` (it ends within ``timeout_s``).
        """
        try:
            while not stop.is_set():
                started = self._monotonic()
                try:
                    ticks = self.poll_once()
                except CoinGeckoError as exc:
                    if not exc.retryable:
                        raise
                    ticks, delay_s = [], self._retry_delay_s(exc)
                else:
                    delay_s = self._interval_s
                with self._lock:
                    self._next_poll_at = started + delay_s
                if ticks:
                    yield ticks
                if not self._wait_until(started + delay_s, stop):
                    return
        finally:
            with self._lock:
                self._next_poll_at = None

    def _retry_delay_s(self, exc: CoinGeckoError) -> float:
        retry_after_s = getattr(exc, "retry_after_s", None)
        if retry_after_s:  # a missing, zero or past Retry-After gives no pace: back off instead
            return min(self._max_backoff_s, retry_after_s)
        with self._lock:
            failures = self._status.consecutive_failures
        return backoff_delay_s(failures, self._rng, self._min_backoff_s, self._max_backoff_s)

    def _wait_until(self, deadline: float, stop: threading.Event) -> bool:
        """Wait until the monotonic ``deadline``; False as soon as ``stop`` is set."""
        while not stop.is_set():
            remaining_s = deadline - self._monotonic()
            if remaining_s <= 0:
                return True
            if self._sleep is None:
                stop.wait(remaining_s)
            else:
                self._sleep(min(remaining_s, STOP_CHECK_S))
        return False

    def _keep_new(self, parsed: ParsedPrices, received_at_us: int) -> list[ReferenceTick]:
        fresh: list[ReferenceTick] = []
        with self._lock:
            st, keep_asset = self._status, {}
            for tick in parsed.ticks:
                keep = keep_asset.get(tick.asset)
                if keep is None:
                    previous = self._last_updated_s.get(tick.asset)
                    keep = previous is None or tick.last_updated_at_s > previous
                    if keep:
                        self._last_updated_s[tick.asset] = tick.last_updated_at_s
                    elif tick.last_updated_at_s == previous:
                        st.duplicates_skipped += 1
                    else:
                        st.stale_skipped += 1
                    keep_asset[tick.asset] = keep
                if keep:
                    fresh.append(tick)
            st.ticks += len(fresh)
            st.rejected_entries += len(parsed.rejected)
            st.missing_assets = parsed.missing
            st.last_success_at_us = received_at_us
            st.consecutive_failures = 0
        return fresh

    def _failed(self, exc: CoinGeckoError) -> CoinGeckoError:
        with self._lock:
            st = self._status
            if isinstance(exc, CoinGeckoRateLimited):
                st.rate_limited += 1
            else:
                st.errors += 1
            st.consecutive_failures += 1
            st.last_error = str(exc)
        return exc

    def _http_error(self, response: httpx.Response) -> CoinGeckoError:
        code, body = response.status_code, self._redact(_snippet(response.content))
        if code == 429:
            wait_s = parse_retry_after(response.headers.get("retry-after"), self._clock())
            hint = "raise interval_s" + ("" if self._api_key else f" or set {API_KEY_ENV}")
            shown = "an unspecified time" if wait_s is None else f"{wait_s:g} s"
            return CoinGeckoRateLimited(wait_s, f"CoinGecko rate limit hit (HTTP 429), asked to "
                                        f"wait {shown}; the free/demo tier allows about 30 calls"
                                        f"/min: {hint}")
        if code in (401, 403):
            fix = (f"check that {API_KEY_ENV} holds a valid demo key for {self._base_url}"
                   if self._api_key else f"set {API_KEY_ENV} to a CoinGecko demo API key")
            return CoinGeckoError(f"CoinGecko refused the request (HTTP {code}: {body}); {fix}",
                                  retryable=False, status_code=code)
        if code >= 500 or code == 408:
            return CoinGeckoError(f"CoinGecko had a server-side failure (HTTP {code}: {body}); "
                                  "it will be retried", status_code=code)
        return CoinGeckoError(f"CoinGecko answered HTTP {code} for {self._url} ({body}); check "
                              f"base_url (e.g. {DEFAULT_BASE_URL}) and the asset ids",
                              retryable=False, status_code=code)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "<redacted>") if self._api_key else text
