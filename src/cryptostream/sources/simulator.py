"""Simulate a realistic, seeded multi-symbol Binance spot trade stream (live source and files).

Per symbol: a log mid price with GARCH(1,1) volatility clusters and rare jumps; taker orders
at a bursty (log-AR(1), volatility-coupled) Poisson rate, each filling maker orders in one
millisecond while walking the book; occasional sweeps of hundreds of trades in one ms, as
real BTCUSDT shows; lognormal sizes on the lot, prices on the tick, consecutive ids.
Everything comes from ``_Market.next_chunk`` (fixed 60 s slices, a per-symbol generator
derived from the seed), so ``simulate_arrays``, ``SimulatorSource`` and the file writers
produce the same trades for the same seed and symbol.

>>> a = simulate_arrays("BTCUSDT", n_trades=1000, seed=1)
>>> bool((np.diff(a["trade_id"]) == 1).all() and (np.diff(a["trade_time_us"]) >= 0).all())
True
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from os import PathLike

import numpy as np

from cryptostream.model import NO_TIME, US_PER_MS, US_PER_S, SourceBatch, TradeBatch
from cryptostream.sources.base import OfflineSource

#: Default start of simulated event time: 2024-08-08T00:00:00Z, in microseconds.
DEFAULT_START_US = 1_723_075_200 * US_PER_S
CHUNK_S = 60  # event-time seconds generated per step; fixed, so every consumer sees one stream
CHUNK_US = CHUNK_S * US_PER_S
PACE_S = 0.05  # wall seconds per paced batch (before capping at one chunk of event time)

SIGMA_S = 5e-5  # unconditional per-second log-return stddev of BTCUSDT
GARCH_ALPHA, GARCH_BETA = 0.05, 0.94
INTENSITY_PHI, INTENSITY_SD = 0.95, 0.7  # log-intensity AR(1): persistence, stationary sd
JUMP_PER_S = 2e-5  # chance of a 1-4 % jump in any second
SWEEP_PER_S = 1 / 300  # chance of a sweep in any second at 30 trades/s (scaled with the rate)
FILLS_CAP, SWEEP_MIN, SWEEP_MAX = 50, 100, 2000
MEAN_FILLS = 1.85  # mean of min(zipf(2.5), FILLS_CAP): maker fills per ordinary taker order
ADVANCE_P = 0.3  # chance that the next fill of a taker order is at a deeper price level
NOTIONAL_MEDIAN, NOTIONAL_SIGMA, NOTIONAL_MAX = 60.0, 1.7, 2e6  # quote value per fill, lognormal
E8 = 100_000_000

#: start price, first trade id and volatility multiplier of well-known symbols.
KNOWN_SYMBOLS: dict[str, tuple[float, int, float]] = {
    "BTCUSDT": (60_000.0, 3_735_683_259, 1.0),
    "ETHUSDT": (2_700.0, 1_520_538_925, 1.25),
    "SOLUSDT": (150.0, 380_271_044, 1.8),
    "BNBUSDT": (550.0, 771_604_180, 1.1),
}


def symbol_params(symbol: str) -> tuple[float, int, float]:
    """Start price, first trade id and volatility multiplier; derived from the name if unknown.

    >>> symbol_params("BTCUSDT")
    (60000.0, 3735683259, 1.0)
    """
    if symbol in KNOWN_SYMBOLS:
        return KNOWN_SYMBOLS[symbol]
    crc = zlib.crc32(symbol.encode())
    return round(10.0 ** (crc % 600 / 100 - 2), 6), 10_000_000 + crc % 900_000_000, 1.5


def tick_size(price: float) -> float:
    """Price tick: 0.01 from 1000 up, five significant digits below (at least 1e-8).

    >>> tick_size(61837.63), tick_size(150.0), tick_size(0.5)
    (0.01, 0.001, 1e-06)
    """
    if price >= 1000:
        return 0.01
    return max(1e-8, 10.0 ** (math.floor(math.log10(price)) - 5))


def lot_size(price: float) -> float:
    """Quantity step: the power of ten worth 0.1-1 quote units, within [1e-8, 1].

    >>> lot_size(60000.0), lot_size(2700.0), lot_size(0.5)
    (1e-05, 0.0001, 1.0)
    """
    return min(1.0, max(1e-8, 10.0 ** -math.ceil(math.log10(price))))


class _Market:
    """One symbol's market state, advanced one fixed chunk of event time per call."""

    def __init__(self, symbol: str, seed: int, start_time_us: int, trades_per_s: float) -> None:
        price0, self.next_id, vol = symbol_params(symbol)
        self.tick, self.lot = tick_size(price0), lot_size(price0)
        entropy = [seed & 0xFFFF_FFFF_FFFF_FFFF, zlib.crc32(symbol.encode())]
        self.rng = np.random.default_rng(np.random.SeedSequence(entropy))
        self.sigma = SIGMA_S * vol
        self.log_mid, self.var, self.h = math.log(price0), self.sigma**2, 0.0
        self.t_us = start_time_us - start_time_us % US_PER_MS
        self.last_event_us = int(NO_TIME)
        self.rate = trades_per_s
        self.step_ticks = max(1.0, 2e-6 * price0 / self.tick)  # mean depth of one book level

    def next_chunk(self) -> dict[str, np.ndarray]:
        """The trades of the next ``CHUNK_S`` seconds, in id order."""
        rng, n_s, sig0 = self.rng, CHUNK_S, self.sigma
        z = rng.standard_t(5, n_s) * math.sqrt(3 / 5)  # unit-variance fat-tailed shocks
        eps = rng.standard_normal(n_s)
        jump = np.where(rng.random(n_s) < JUMP_PER_S, rng.uniform(0.01, 0.04, n_s), 0.0)
        jump *= np.where(rng.random(n_s) < 0.5, -1.0, 1.0)
        jump_ms = rng.integers(0, 1000, n_s)
        sweep_at = rng.random(n_s) < SWEEP_PER_S * min(1.0, self.rate / 30)
        sweep_k = np.clip(SWEEP_MIN * (1 + rng.pareto(1.2, n_s)), SWEEP_MIN, SWEEP_MAX)
        sweep_k = sweep_k.astype(np.int64)
        sweep_buy = rng.random(n_s) < 0.5
        sweep_ms = rng.integers(0, 1000, n_s)
        depth = (sweep_k - 1) * ADVANCE_P * self.step_ticks * self.tick / math.exp(self.log_mid)
        sweep = np.where(sweep_at, np.where(sweep_buy, 0.5, -0.5) * depth, 0.0)

        # GARCH(1,1) variance, log-intensity AR(1): a short sequential loop over seconds.
        sd, h_sd = np.empty(n_s), np.empty(n_s)
        var, h, c = self.var, self.h, INTENSITY_SD * math.sqrt(1 - INTENSITY_PHI**2)
        omega = sig0**2 * (1 - GARCH_ALPHA - GARCH_BETA)
        for s, (zs, es, js) in enumerate(zip(z.tolist(), eps.tolist(), jump.tolist())):
            sd[s] = sig = math.sqrt(var)
            h_sd[s] = h = INTENSITY_PHI * h + c * es
            var = omega + GARCH_ALPHA * (sig * zs) ** 2 + GARCH_BETA * var
            var += 8 * sig0**2 if js else 0.0  # a jump excites volatility
        self.var, self.h = var, h
        diffusion = sd * z
        mid_start = self.log_mid + np.concatenate(([0.0], np.cumsum(diffusion + jump + sweep)))
        self.log_mid = float(mid_start[-1])
        lam = self.rate / MEAN_FILLS * np.exp(h_sd - INTENSITY_SD**2 / 2)
        lam *= np.sqrt(np.clip(sd / sig0, 0.25, 16.0))  # busier when volatile

        # Taker orders: ordinary ones, then sweeps; sorted by millisecond (stable).
        sec = np.repeat(np.arange(n_s), rng.poisson(lam))
        ms = rng.integers(0, 1000, sec.size)
        k = np.minimum(rng.zipf(2.5, sec.size), FILLS_CAP)
        p_buy = 0.5 + 0.2 * np.tanh(diffusion / sd)
        buy = rng.random(sec.size) < p_buy[sec]
        sw = np.flatnonzero(sweep_at)
        sec, ms = np.concatenate((sec, sw)), np.concatenate((ms, sweep_ms[sw]))
        k, buy = np.concatenate((k, sweep_k[sw])), np.concatenate((buy, sweep_buy[sw]))
        order = np.argsort(sec * 1000 + ms, kind="stable")
        sec, ms, k, buy = sec[order], ms[order], k[order], buy[order]
        mid = (
            mid_start[sec] + diffusion[sec] * (ms / 1000) + jump[sec] * (ms >= jump_ms[sec])
            + sweep[sec] * (ms > sweep_ms[sec])
        )
        bid = np.floor(np.exp(mid) / self.tick).astype(np.int64)

        # Fills: each order walks the book from the touch, monotonically.
        n = int(k.sum())
        starts = np.cumsum(k) - k
        step = np.where(rng.random(n) < ADVANCE_P, rng.geometric(1 / self.step_ticks, n), 0)
        step[starts] = 0
        walk = np.cumsum(step)
        walk -= np.repeat(walk[starts], k)
        bid_t, buy_t = np.repeat(bid, k), np.repeat(buy, k)
        ticks = np.maximum(np.where(buy_t, bid_t + 1 + walk, bid_t - walk), 1)
        price = np.round(ticks * self.tick, 8)
        notional = np.exp(rng.normal(math.log(NOTIONAL_MEDIAN), NOTIONAL_SIGMA, n))
        notional = np.minimum(notional, NOTIONAL_MAX)
        lots = np.maximum(np.rint(notional / price / self.lot), 1)
        mag = 10.0 ** np.floor(np.log10(lots))
        lots = np.where(rng.random(n) < 0.3, np.maximum(np.rint(lots / mag), 1) * mag, lots)
        qty = np.round(lots * self.lot, 8)

        times = self.t_us + np.repeat(sec * US_PER_S + ms * US_PER_MS, k).astype(np.int64)
        delay = rng.choice(3, n, p=[0.35, 0.5, 0.15]) * US_PER_MS
        event = np.maximum.accumulate(np.concatenate(([self.last_event_us], times + delay)))[1:]
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        self.t_us += CHUNK_US
        if n:
            self.last_event_us = int(event[-1])
        return {
            "trade_id": ids, "price": price, "qty": qty, "trade_time_us": times,
            "event_time_us": event.astype(np.int64), "is_buyer_maker": ~buy_t,
        }


def _cat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _take(arrays: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {key: v[idx] for key, v in arrays.items()}


def _merge(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One chunk per symbol -> all trades in time order (ties keep symbol, then id order)."""
    for i, chunk in enumerate(chunks):
        chunk["symbol_idx"] = np.full(len(chunk["trade_id"]), i, np.int64)
    merged = _cat(chunks)
    return _take(merged, np.argsort(merged["trade_time_us"], kind="stable"))


def simulate_arrays(
    symbol: str, n_trades: int | None = None, *, duration_s: float | None = None, seed: int = 0,
    start_time_us: int = DEFAULT_START_US, trades_per_s: float = 30.0,
) -> dict[str, np.ndarray]:
    """The first ``n_trades`` trades, or those of the first ``duration_s`` seconds, of a symbol.

    Keys: ``trade_id``, ``price``, ``qty``, ``trade_time_us``, ``event_time_us`` (int64/float64)
    and ``is_buyer_maker`` (bool), named like the ``TradeBatch`` columns.

    >>> a = simulate_arrays("ETHUSDT", duration_s=60, seed=3)
    >>> int(a["trade_time_us"].max() - DEFAULT_START_US) < 60_000_000
    True
    >>> b = simulate_arrays("ETHUSDT", n_trades=10, seed=3)
    >>> bool((b["price"] == a["price"][:10]).all())
    True
    """
    if (n_trades is None) == (duration_s is None):
        raise ValueError("give exactly one of n_trades and duration_s")
    market = _Market(symbol, seed, start_time_us, trades_per_s)
    end = None if duration_s is None else market.t_us + round(duration_s * US_PER_S)
    parts, have = [], 0
    while not parts or (have < n_trades if end is None else market.t_us < end):
        parts.append(market.next_chunk())
        have += len(parts[-1]["trade_id"])
    arrays = _cat(parts)
    stop = n_trades if end is None else int(np.searchsorted(arrays["trade_time_us"], end))
    return _take(arrays, slice(0, stop))


class SimulatorSource(OfflineSource):
    """A simulated market as a ``Source``: batches of several symbols in trade-time order.

    >>> src = SimulatorSource(["BTCUSDT", "ETHUSDT"], seed=7, duration_s=30)
    >>> batches = list(src.batches())
    >>> sorted(set(np.concatenate([b.trades.symbol for b in batches])))
    ['BTCUSDT', 'ETHUSDT']
    >>> int(batches[-1].trades.offset[-1]) + 1 == sum(len(b.trades) for b in batches)
    True
    """

    state = "simulated"

    def __init__(
        self, symbols: Sequence[str], seed: int = 0, duration_s: float | None = None,
        speed: float | None = None, start_time_us: int | None = None, trades_per_s: float = 30.0,
        batch_size: int = 4096, clock: Callable[[], int] | None = None, name: str = "simulate",
    ) -> None:
        symbols = [symbols] if isinstance(symbols, str) else list(symbols)
        if not symbols or len(set(symbols)) != len(symbols):
            raise ValueError(f"simulator needs distinct symbols, got {symbols!r}")
        if not ((speed is None or speed > 0) and (duration_s is None or duration_s >= 0)
                and trades_per_s > 0 and batch_size >= 1):
            raise ValueError("need speed > 0 or None, duration_s >= 0 or None, "
                             "trades_per_s > 0 and batch_size >= 1")
        self.name = name
        self.finite = duration_s is not None
        self._symbols = np.array(symbols, dtype=object)
        self._seed, self._duration_s, self._speed = seed, duration_s, speed
        start = DEFAULT_START_US if start_time_us is None else int(start_time_us)
        self._start = start - start % US_PER_MS
        self._rate, self._batch_size, self._clock = trades_per_s, batch_size, clock
        self._closed = False
        self._offset = 0

    @property
    def speed(self) -> float | None:
        return self._speed

    def close(self) -> None:
        self._closed = True

    def batches(self) -> Iterator[SourceBatch]:
        """Yield batches until ``duration_s`` of event time has passed or ``close()`` is called."""
        markets = [_Market(s, self._seed, self._start, self._rate) for s in self._symbols]
        end = None if self._duration_s is None else self._start + round(self._duration_s * 1e6)
        paced, size = self._speed is not None, self._batch_size
        step = CHUNK_US  # event time per step; paced: PACE_S of wall time, in whole ms
        if paced:
            step = min(CHUNK_US, max(1, int(self._speed * PACE_S * 1000)) * US_PER_MS)
        ready: list[dict[str, np.ndarray]] = []  # due, not yet emitted
        later: list[dict[str, np.ndarray]] = []  # generated, past the current step
        made = t = self._start
        wall0 = time.monotonic_ns()
        try:
            while not self._closed and (end is None or t < end):
                t = t + step if end is None else min(t + step, end)
                while made < t:
                    later.append(_merge([m.next_chunk() for m in markets]))
                    made += CHUNK_US
                pending = _cat(later)
                cut = int(np.searchsorted(pending["trade_time_us"], t))
                due = _cat([*ready, _take(pending, slice(0, cut))])
                later = [_take(pending, slice(cut, None))]
                deadline = wall0 + round((t - self._start) * 1000 / (self._speed or 1))
                if paced and not self._wait_until(deadline):
                    break
                n = len(due["trade_id"])
                full = n if paced or t == end else n - n % size
                for i in range(0, full, size):
                    if self._closed:
                        return
                    yield SourceBatch(self._batch(_take(due, slice(i, min(i + size, full)))))
                ready = [_take(due, slice(full, None))]
        finally:
            self.close()

    def _wait_until(self, deadline_ns: int) -> bool:
        """Sleep (in short naps, so ``close()`` is prompt) until the deadline; False if closed."""
        while not self._closed:
            left = deadline_ns - time.monotonic_ns()
            if left <= 0:
                return True
            time.sleep(min(left / 1e9, PACE_S))
        return False

    def _batch(self, a: dict[str, np.ndarray]) -> TradeBatch:
        n = len(a["trade_id"])
        recv = NO_TIME if self._clock is None else int(self._clock())
        offset = np.arange(self._offset, self._offset + n, dtype=np.int64)
        self._offset += n
        return TradeBatch(
            self.name, self._symbols[a["symbol_idx"]], a["trade_id"], a["price"], a["qty"],
            a["trade_time_us"], a["event_time_us"], np.full(n, recv, np.int64),
            a["is_buyer_maker"], offset, np.zeros(n, np.uint8), None,
        )


def _blocks(
    symbols: Sequence[str], n_trades: int, seed: int, start_time_us: int, trades_per_s: float
) -> Iterator[dict[str, np.ndarray]]:
    """The first ``n_trades`` merged trades of the symbols, in blocks of about 100 000."""
    markets = [_Market(s, seed, start_time_us, trades_per_s) for s in symbols]
    done = 0
    while done < n_trades:
        parts, have = [], 0
        while have < 100_000 and done + have < n_trades:
            parts.append(_merge([m.next_chunk() for m in markets]))
            have += len(parts[-1]["trade_id"])
        block = _take(_cat(parts), slice(0, n_trades - done))
        done += len(block["trade_id"])
        yield block


def _e8(values: np.ndarray) -> tuple[list[int], list[int]]:
    """Integer and 8-digit fraction parts of non-negative decimals (for ``%d.%08d``)."""
    scaled = np.rint(values * E8).astype(np.int64)
    return (scaled // E8).tolist(), (scaled % E8).tolist()


def _write(path, blocks, fmt: str, columns, progress) -> int:
    """Format the blocks (``fmt % row`` per row, columns from ``columns(block)``) into ``path``."""
    done = 0
    with open(path, "w", encoding="ascii", newline="") as fh:
        for block in blocks:
            fh.write("".join([fmt % row for row in zip(*columns(block))]))
            done += len(block["trade_id"])
            if progress is not None:
                progress(done)
    return done


def write_trade_csv(
    path: str | PathLike[str], symbol: str, n_trades: int, seed: int = 0, *,
    start_time_us: int = DEFAULT_START_US, trades_per_s: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``n_trades`` simulated trades as an official data.binance.vision spot trade CSV.

    No header; ``id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch``; time in milliseconds;
    8-decimal numbers; quoteQty = price * qty exactly. Returns the number of rows written;
    ``progress`` is called with the running count after each block.
    """
    tf = np.array(["False", "True"], dtype=object)

    def columns(b: dict[str, np.ndarray]) -> list[list]:
        return [
            b["trade_id"].tolist(), *_e8(b["price"]), *_e8(b["qty"]), *_e8(b["price"] * b["qty"]),
            (b["trade_time_us"] // US_PER_MS).tolist(), tf[b["is_buyer_maker"].view(np.int8)],
        ]

    blocks = _blocks([symbol], n_trades, seed, start_time_us, trades_per_s)
    return _write(path, blocks, "%d,%d.%08d,%d.%08d,%d.%08d,%d,%s,True\n", columns, progress)


def write_ws_jsonl(
    path: str | PathLike[str], symbols: Sequence[str], n_trades: int, seed: int = 0,
    combined: bool = True, recv_prefix: bool = False, *, start_time_us: int = DEFAULT_START_US,
    trades_per_s: float = 30.0, progress: Callable[[int], None] | None = None,
) -> int:
    """Write ``n_trades`` simulated trades (all symbols, time order) as Binance WebSocket messages.

    One ``{"e":"trade","E":..,"s":..,"t":..,"p":..,"q":..,"T":..,"m":..,"M":true}`` per line,
    times in ms, wrapped as ``{"stream":"btcusdt@trade","data":{...}}`` when ``combined``,
    prefixed by ``<recv_ns> `` (receive time in ns: event time plus a small, never decreasing
    latency) when ``recv_prefix``. Returns the number of lines written.
    """
    symbols = [symbols] if isinstance(symbols, str) else list(symbols)
    names = np.array(symbols, dtype=object)
    streams = np.array([s.lower() for s in symbols], dtype=object)
    tf = np.array(["false", "true"], dtype=object)
    lat_rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFF_FFFF_FFFF_FFFF, 0x7EC7]))
    last_recv = 0

    def columns(b: dict[str, np.ndarray]) -> list[list]:
        nonlocal last_recv
        sym, event_ms = b["symbol_idx"], b["event_time_us"] // US_PER_MS
        cols = [
            event_ms.tolist(), names[sym].tolist(), b["trade_id"].tolist(),
            *_e8(b["price"]), *_e8(b["qty"]), (b["trade_time_us"] // US_PER_MS).tolist(),
            tf[b["is_buyer_maker"].view(np.int8)],
        ]
        if combined:
            cols.insert(0, streams[sym].tolist())
        if recv_prefix:
            latency = (1e6 + lat_rng.exponential(4e6, len(sym))).astype(np.int64)
            recv = np.maximum.accumulate(np.r_[last_recv, event_ms * 1_000_000 + latency])[1:]
            last_recv = int(recv[-1]) if len(recv) else last_recv
            cols.insert(0, recv.tolist())
        return cols

    fmt = '{"e":"trade","E":%d,"s":"%s","t":%d,"p":"%d.%08d","q":"%d.%08d","T":%d,"m":%s,"M":true}'
    if combined:
        fmt = '{"stream":"%s@trade","data":' + fmt + "}"
    fmt = ("%d " if recv_prefix else "") + fmt + "\n"
    blocks = _blocks(symbols, n_trades, seed, start_time_us, trades_per_s)
    return _write(path, blocks, fmt, columns, progress)
