"""The ``Sink`` seam and the conversion of processor output to Arrow tables every sink shares.

Lifecycle: construct -> ``open()`` (creates tables/folders; raises ``SinkError`` with a
remedy when the store cannot be used) -> ``write(output, stats)`` any number of times ->
``flush()`` (everything written so far is durable; the pipeline commits source offsets only
after it) -> ``close()`` (flushes, idempotent).

Writes are idempotent upserts: aggregates keyed by (symbol, window_start), trades by
(symbol, trade_id), rejects by (source, source_offset), gaps by (symbol, from_id). Writing
the same output twice leaves the store as after the first write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from cryptostream.model import AGG_COLUMNS, ML_TABLES, NO_TIME
from cryptostream.processing.engine import Output, SymbolCounters
from cryptostream.sources.base import SourceStatus

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Checkpoint:
    """Where a Kafka ``process`` replica resumes a partition: the next offset to read and
    the processor state (``processing.state``) that goes with it. Stored by the sink in the
    same transaction as the rows derived from the records before ``next_offset``."""

    group: str
    topic: str
    partition: int
    next_offset: int
    state: bytes | None


@runtime_checkable
class Sink(Protocol):
    def open(self) -> None: ...

    def write(self, output: Output, stats: list[dict]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _ts(values: np.ndarray) -> pa.Array:
    mask = values == NO_TIME
    return pa.array(values, type=TS, mask=mask if mask.any() else None)


def _const(value: str, n: int) -> pa.Array:
    """A column holding one string n times, dictionary-encoded (no per-row objects)."""
    return pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array([value], pa.string()))


def _labels(values: list[str], sizes: np.ndarray) -> pa.Array:
    """``values[i]`` repeated ``sizes[i]`` times, dictionary-encoded (no per-row objects)."""
    uniq = sorted(set(values))
    if len(uniq) == 1:
        return _const(uniq[0], int(sizes.sum()))
    code = {v: i for i, v in enumerate(uniq)}
    idx = np.repeat(np.fromiter((code[v] for v in values), np.int32, len(values)), sizes)
    return pa.DictionaryArray.from_arrays(idx, pa.array(uniq, pa.string()))


def trades_table(output: Output) -> pa.Table | None:
    """All accepted trades of ``output`` as one Arrow table (TRADE_COLUMNS order).

    Built column by column over all the output's parts at once: a live flush holds many
    small parts (one per symbol and processed batch), and a table per part cost more than
    the insert itself (bench_live_latency profile)."""
    parts = [t for t in output.trades if len(t)]
    if not parts:
        return None

    def cat(name: str) -> np.ndarray:
        cols = [getattr(t, name) for t in parts]
        return cols[0] if len(cols) == 1 else np.concatenate(cols)

    sizes = np.fromiter((len(t) for t in parts), np.int64, len(parts))
    price, qty = cat("price"), cat("qty")
    return pa.table(
        {
            "symbol": _labels([t.symbol for t in parts], sizes),
            "trade_id": cat("trade_id"),
            "price": price,
            "qty": qty,
            "quote_qty": price * qty,
            "trade_time": _ts(cat("trade_time_us")),
            "is_buyer_maker": cat("is_buyer_maker"),
            "is_price_spike": cat("is_price_spike"),
            "event_time": _ts(cat("event_time_us")),
            "recv_time": _ts(cat("recv_time_us")),
            "processed_at": pa.array(
                np.repeat(np.fromiter((t.processed_at_us for t in parts), np.int64, len(parts)),
                          sizes), TS),
            "latency_ms": cat("latency_ms"),
            "recv_latency_ms": pa.array(cat("recv_latency_ms"), from_pandas=True),
            "source": _labels([t.source for t in parts], sizes),
        }
    )


def id_ranges(output: Output) -> dict[str, tuple[int, int]]:
    """Per symbol, the lowest and highest trade id among the output's accepted trades."""
    ranges: dict[str, tuple[int, int]] = {}
    for t in output.trades:
        if len(t):
            lo, hi = int(t.trade_id.min()), int(t.trade_id.max())
            cur = ranges.get(t.symbol)
            ranges[t.symbol] = (lo, hi) if cur is None else (min(lo, cur[0]), max(hi, cur[1]))
    return ranges


_AGG_SCHEMA = pa.schema(
    [
        (name, {"VARCHAR": pa.string(), "TIMESTAMPTZ": TS, "BIGINT": pa.int64(),
                "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_()}[sql])
        for name, sql in AGG_COLUMNS
    ]
)


def last_by(rows: list[dict], key: tuple[str, ...]) -> list[dict]:
    """``rows`` with only the last row of each ``key`` (a later emission of a window or an
    ML row supersedes an earlier one; one upsert statement must not touch a key twice)."""
    if len(rows) < 2:
        return rows
    latest = {tuple(r.get(k) for k in key): r for r in rows}
    return rows if len(latest) == len(rows) else list(latest.values())


def windows_table(rows: list[dict]) -> pa.Table:
    """Window rows from the processor as an Arrow table in AGG_COLUMNS order (the last
    emission of each window)."""
    rows = last_by(rows, ("symbol", "window_start_us"))
    data = {}
    for name, _ in AGG_COLUMNS:
        if name in ("window_start", "window_end", "emitted_at"):
            data[name] = pa.array([r[name + "_us"] for r in rows], pa.int64()).cast(TS)
        else:
            data[name] = pa.array([r[name] for r in rows], _AGG_SCHEMA.field(name).type)
    return pa.table(data, schema=_AGG_SCHEMA)


_ARROW_TYPES = {"VARCHAR": pa.string(), "DOUBLE": pa.float64(), "BIGINT": pa.int64(),
                "BOOLEAN": pa.bool_()}


def ml_tables(output: Output) -> list[tuple[str, pa.Table]]:
    """The ML rows of ``output`` as Arrow tables in ``model.ML_TABLES`` column order.
    Times come as ``<column>_us`` integers (like the window rows); absent values as None."""
    out = []
    for table, rows in output.ml.items():
        if not rows:
            continue
        columns, key = ML_TABLES[table]
        rows = last_by(rows, tuple(k + "_us" if dict(columns)[k] == "TIMESTAMPTZ" else k
                                   for k in key))
        data = {}
        for name, typ in columns:
            if typ == "TIMESTAMPTZ":
                data[name] = pa.array([r.get(name + "_us") for r in rows], pa.int64()).cast(TS)
            else:
                data[name] = pa.array([r.get(name) for r in rows], _ARROW_TYPES[typ])
        out.append((table, pa.table(data)))
    return out


def rejects_table(output: Output, now_us: int) -> pa.Table | None:
    if not output.rejects:
        return None
    r = output.rejects
    return pa.table(
        {
            "source": pa.array([x.source for x in r], pa.string()),
            "source_offset": pa.array([x.source_offset for x in r], pa.int64()),
            "symbol": pa.array([x.symbol for x in r], pa.string()),
            "reason": pa.array([x.reason.value for x in r], pa.string()),
            "detail": pa.array([x.detail for x in r], pa.string()),
            "raw": pa.array([x.raw for x in r], pa.string()),
            "trade_id": pa.array([x.trade_id for x in r], pa.int64()),
            "trade_time": pa.array([x.trade_time_us for x in r], pa.int64()).cast(TS),
            "recv_time": pa.array([x.recv_time_us for x in r], pa.int64()).cast(TS),
            "rejected_at": pa.array([now_us] * len(r), pa.int64()).cast(TS),
        }
    )


def gaps_table(output: Output) -> pa.Table | None:
    if not output.gaps:
        return None
    latest = {(g.symbol, g.from_id): g for g in output.gaps}
    g = list(latest.values())
    return pa.table(
        {
            "symbol": pa.array([x.symbol for x in g], pa.string()),
            "from_id": pa.array([x.from_id for x in g], pa.int64()),
            "to_id": pa.array([x.to_id for x in g], pa.int64()),
            "count": pa.array([x.count for x in g], pa.int64()),
            "filled": pa.array([x.filled for x in g], pa.int64()),
            "after_trade_time": pa.array([x.after_trade_time_us for x in g], pa.int64()).cast(TS),
            "detected_at": pa.array([x.detected_at_us for x in g], pa.int64()).cast(TS),
        }
    )


def reference_table(output: Output) -> pa.Table | None:
    """CoinGecko ticks (``ReferenceTick``), one row per (asset, symbol, last_updated_at)."""
    r = output.reference_prices
    if not r:
        return None
    return pa.table(
        {
            "asset": pa.array([x.asset for x in r], pa.string()),
            "symbol": pa.array([x.symbol for x in r], pa.string()),
            "price_usd": pa.array([x.price_usd for x in r], pa.float64()),
            "volume_24h": pa.array([x.volume_24h for x in r], pa.float64()),
            "change_24h": pa.array([x.change_24h for x in r], pa.float64()),
            "last_updated_at": pa.array([x.last_updated_at_s * 1_000_000 for x in r], pa.int64()).cast(TS),
            "received_at": pa.array([x.received_at_us for x in r], pa.int64()).cast(TS),
        }
    )


def stats_rows(run_id: str, started_us: int, now_us: int, source: str,
               counters: dict[str, SymbolCounters], status: SourceStatus | None = None) -> list[dict]:
    """One row per symbol of the cumulative counters of this run, with the source's state
    (the same on every row of the run: the dashboard reads any of them)."""
    st = status or SourceStatus("unknown")
    src = {
        "gaps_open": 0,
        "source_state": st.state,
        "source_attempt": st.attempt,
        "reconnects": st.reconnects,
        "last_message_at_us": None if st.last_message_at is None else int(st.last_message_at * 1e6),
        "exchange_clock_skew_ms": st.clock_skew_ms,
        "backfill_pending": st.backfill_pending,
        "backfilled_trades": st.backfilled_trades,
        "source_detail": json.dumps(st.detail, default=str),
    }
    rows = []
    for sym, c in sorted(counters.items()):
        rows.append(
            {
                "run_id": run_id,
                "symbol": sym,
                "source": source,
                "received": c.received,
                "accepted": c.accepted,
                "rejected": c.rejected_total,
                "duplicates": c.duplicates,
                "ignored": c.ignored,
                "late": c.late,
                "gaps": c.gaps,
                "gap_trades": c.gap_trades,
                "rejected_by_reason": json.dumps({str(k): v for k, v in sorted(c.rejected.items())}),
                "watermark_us": c.watermark_us if c.watermark_us is not None and abs(c.watermark_us) < 2**61 else None,
                "max_trade_time_us": c.max_trade_time_us,
                "recv_skew_ms": c.last_recv_skew_ms,
                "started_at_us": started_us,
                "updated_at_us": now_us,
                **src,
                "gaps_open": c.gaps_open,
            }
        )
    return rows


def stats_table(rows: list[dict]) -> pa.Table | None:
    if not rows:
        return None
    rows = last_by(rows, ("run_id", "symbol"))
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    out = {}
    for k, v in cols.items():
        if k.endswith("_us"):
            out[k[:-3]] = pa.array(v, pa.int64()).cast(TS)
        elif k.endswith("_ms"):
            out[k] = pa.array(v, pa.float64())
        elif isinstance(v[0], str):
            out[k] = pa.array(v, pa.string())
        else:
            out[k] = pa.array(v, pa.int64())
    return pa.table(out)
