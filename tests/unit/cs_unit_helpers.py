"""Builders for hand-written unit-test inputs (not tests themselves).

Times are written in whole milliseconds/seconds relative to ``T0`` (2024-08-09T00:00:00Z,
which is a multiple of 60 s and of 300 s since the epoch, so window bounds are round).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cryptostream.model import (
    DEFAULT_WINDOWS,
    NO_TIME,
    US_PER_MS,
    US_PER_S,
    SourceBatch,
    TradeBatch,
)
from cryptostream.processing.engine import EngineConfig, Output, Processor

T0_S = 1_723_161_600  # 2024-08-09T00:00:00Z
T0_US = T0_S * US_PER_S
NOW_US = T0_US + 3_600 * US_PER_S  # a wall clock far enough after every test trade


def at(seconds: float) -> int:
    """Trade time in µs, ``seconds`` after T0 (exact for ms resolution)."""
    return T0_US + round(seconds * 1000) * US_PER_MS


@dataclass(frozen=True)
class T:
    """One trade as a test writes it."""

    id: int
    price: float
    qty: float
    t_us: int
    maker: bool = False
    symbol: str = "BTCUSDT"
    recv_us: int | None = None
    event_us: int | None = None


def trade_batch(trades: Sequence[T], source: str = "test") -> TradeBatch:
    n = len(trades)
    if n == 0:
        return TradeBatch.empty(source)
    return TradeBatch(
        source=source,
        symbol=np.array([x.symbol for x in trades], dtype=object),
        trade_id=np.array([x.id for x in trades], np.int64),
        price=np.array([x.price for x in trades], np.float64),
        qty=np.array([x.qty for x in trades], np.float64),
        trade_time_us=np.array([x.t_us for x in trades], np.int64),
        event_time_us=np.array(
            [NO_TIME if x.event_us is None else x.event_us for x in trades], np.int64
        ),
        recv_time_us=np.array(
            [NO_TIME if x.recv_us is None else x.recv_us for x in trades], np.int64
        ),
        is_buyer_maker=np.array([x.maker for x in trades], np.bool_),
        offset=np.arange(n, dtype=np.int64),
        status=np.zeros(n, np.uint8),
        raw=None,
    )


def source_batch(trades: Sequence[T], source: str = "test") -> SourceBatch:
    return SourceBatch(trade_batch(trades, source))


def json_line(x: T, combined: bool = True) -> bytes:
    """The Binance WebSocket message of trade ``x`` (times must be whole ms)."""
    assert x.t_us % US_PER_MS == 0
    payload = {
        "e": "trade",
        "E": (x.event_us if x.event_us is not None else x.t_us) // US_PER_MS,
        "s": x.symbol,
        "t": x.id,
        "p": f"{x.price:.8f}",
        "q": f"{x.qty:.8f}",
        "T": x.t_us // US_PER_MS,
        "m": x.maker,
        "M": True,
    }
    msg = {"stream": f"{x.symbol.lower()}@trade", "data": payload} if combined else payload
    return json.dumps(msg, separators=(",", ":")).encode()


def config(
    windows=DEFAULT_WINDOWS,
    lateness_s: float = 2.0,
    skew_s: float = 0.0,
    spike: float = 0.02,
    max_open_gaps: int = 10_000,
) -> EngineConfig:
    return EngineConfig(
        windows=tuple(windows),
        allowed_lateness_us=int(lateness_s * US_PER_S),
        max_clock_skew_us=int(skew_s * US_PER_S),
        spike_threshold=spike,
        max_open_gaps=max_open_gaps,
    )


def run(
    batches: Iterable[SourceBatch | Sequence[T]],
    cfg: EngineConfig | None = None,
    close: bool = True,
    now_us: int = NOW_US,
) -> tuple[Processor, Output]:
    """Process every batch (a SourceBatch or a list of ``T``) then close; all output merged."""
    proc = Processor(cfg or config())
    out = Output()
    for b in batches:
        sb = b if isinstance(b, SourceBatch) else source_batch(list(b))
        out.extend(proc.process(sb, now_us))
    if close:
        out.extend(proc.close(now_us))
    return proc, out


def split(items: Sequence, sizes: Sequence[int]) -> list[list]:
    """``items`` cut into consecutive chunks of the given sizes (the last takes the rest)."""
    out, i = [], 0
    for s in sizes:
        out.append(list(items[i : i + s]))
        i += s
    if i < len(items):
        out.append(list(items[i:]))
    return [c for c in out if c]


def windows_of(out: Output, table: str, symbol: str | None = None) -> dict[int, dict]:
    """Rows of ``table`` keyed by window start relative to T0 in seconds."""
    rows = {}
    for r in out.windows.get(table, []):
        if symbol is not None and r["symbol"] != symbol:
            continue
        key = (r["window_start_us"] - T0_US) // US_PER_S
        assert (r["symbol"], key) not in {(v["symbol"], k) for k, v in rows.items()}, (
            f"window {table} {r['symbol']} {key} emitted twice"
        )
        rows[key] = r
    return rows


#: Columns whose values are compared exactly / approximately when comparing runs.
EXACT_COLS = ("trade_count", "spike_count", "first_trade_id", "last_trade_id", "missing_trades",
              "symbol", "window_start_us", "window_end_us")
FLOAT_COLS = ("open", "high", "low", "close", "volume", "quote_volume", "vwap", "avg_price",
              "price_stddev", "buy_volume", "sell_volume", "buy_sell_ratio", "trade_intensity",
              "range_pct", "return_pct")


def comparable(out: Output) -> dict:
    """Windows of every table as sorted tuples of the spec'd columns (no timing columns)."""
    res = {}
    for table, rows in out.windows.items():
        res[table] = sorted(
            tuple(r[c] for c in EXACT_COLS) + tuple(r[c] for c in FLOAT_COLS) for r in rows
        )
    return res


def counters_of(proc: Processor) -> dict:
    return {
        sym: (c.received, c.accepted, c.duplicates, c.ignored, dict(c.rejected), c.gaps,
              c.gap_trades)
        for sym, c in proc.counters.items()
    }


def assert_reconciled(proc: Processor) -> None:
    """received == accepted + rejected + duplicates + ignored, for every symbol."""
    for sym, c in proc.counters.items():
        assert c.received == c.accepted + c.rejected_total + c.duplicates + c.ignored, (
            f"{sym!r}: received {c.received} != accepted {c.accepted} + rejected "
            f"{dict(c.rejected)} + duplicates {c.duplicates} + ignored {c.ignored}"
        )


def accepted_ids(out: Output, symbol: str | None = None) -> list[int]:
    """Trade ids accepted in ``out``, in output order."""
    return [
        int(i)
        for a in out.trades
        if symbol is None or a.symbol == symbol
        for i in a.trade_id.tolist()
    ]


def assert_same_windows(a: Output, b: Output, rel: float = 1e-9) -> None:
    """Same windows in every table: exact counts and ids, floats within ``rel``."""
    import math

    ca, cb = comparable(a), comparable(b)
    assert sorted(ca) == sorted(cb), "different window tables"
    ne = len(EXACT_COLS)
    for table in ca:
        ra, rb = ca[table], cb[table]
        assert [r[:ne] for r in ra] == [r[:ne] for r in rb], f"{table}: windows differ"
        for x, y in zip(ra, rb):
            for name, u, v in zip(FLOAT_COLS, x[ne:], y[ne:]):
                if u is None or v is None:
                    assert u is v, f"{table} {x[:ne]} {name}: {u} vs {v}"
                else:
                    assert math.isclose(u, v, rel_tol=rel, abs_tol=1e-12), (
                        f"{table} {x[:ne]} {name}: {u} vs {v}"
                    )


def columnar_decode_lines(lines, source, first_offset, recv_time_us=None,
                          max_line_bytes=None):
    """``decode_lines`` through the columnar (DuckDB) decoder used for replays."""
    from cryptostream.sources.binance_messages import DEFAULT_MAX_LINE_BYTES
    from cryptostream.sources.ws_columnar import ColumnarDecoder

    dec = ColumnarDecoder(max_line_bytes=max_line_bytes or DEFAULT_MAX_LINE_BYTES)
    try:
        return dec.decode_lines(lines, source, first_offset, recv_time_us)
    finally:
        dec.close()
