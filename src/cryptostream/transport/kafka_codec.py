"""How records look on the Kafka topics (the documented wire format of every topic).

* ``raw_trades``: the trade message exactly as received (bytes untouched); key = symbol;
  headers ``recv_time_ns`` (local receive time, when known) and ``source``.
* ``clean_trades``: a *batch* of consecutive validated, deduplicated, enriched trades of
  ONE symbol, as an Arrow IPC stream (one record batch, columns ``trade_id int64,
  price float64, qty float64, trade_time_us int64, event_time_us int64, recv_time_us int64,
  is_buyer_maker bool, is_price_spike bool, source_offset int64``; absent times are
  ``-2**63``); key = symbol; Kafka timestamp = the first trade's time (ms); headers
  ``source`` and ``format=arrow-v1``. Per-trade JSON would cost more CPU than all the
  processing (~2 µs per trade to encode and decode in Python); a batch costs ~0.05 µs per
  trade and any Arrow reader (Spark, DuckDB, pyarrow) reads it.
* ``rejects``: one JSON object per dead letter: ``source, source_offset, symbol, reason,
  detail, raw, trade_id, trade_time_us, recv_time_us``; key = symbol.
* ``pipeline_stats``: one JSON row of the ingest role's counters per symbol (the columns of
  the ``pipeline_stats`` table, times in µs); key = ``run_id/symbol``.
* ``agg_1m``, ``agg_5m_1m``, …: one JSON object per written window (the table's columns,
  times as ISO 8601 UTC); key = symbol.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import numpy as np
import pyarrow as pa

from cryptostream.model import NO_TIME, Rejected, RejectReason, SymbolCodes, TradeBatch

CLEAN_FORMAT = b"arrow-v1"
CLEAN_SCHEMA = pa.schema([
    ("trade_id", pa.int64()), ("price", pa.float64()), ("qty", pa.float64()),
    ("trade_time_us", pa.int64()), ("event_time_us", pa.int64()), ("recv_time_us", pa.int64()),
    ("is_buyer_maker", pa.bool_()), ("is_price_spike", pa.bool_()), ("source_offset", pa.int64()),
])
_JSON = msgspec.json.Encoder()


def encode_clean(trade_id, price, qty, trade_time_us, event_time_us, recv_time_us,
                 is_buyer_maker, is_price_spike, source_offset) -> bytes:
    """One symbol's trades (numpy columns) as an Arrow IPC stream."""
    batch = pa.record_batch([pa.array(c) for c in (trade_id, price, qty, trade_time_us,
                                                   event_time_us, recv_time_us, is_buyer_maker,
                                                   is_price_spike, source_offset)],
                            schema=CLEAN_SCHEMA)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, CLEAN_SCHEMA) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def decode_clean(value: bytes, symbol: str, source: str) -> TradeBatch:
    """A ``clean_trades`` message back into a trade batch (spike flags included)."""
    table = pa.ipc.open_stream(value).read_all()
    col = {name: table.column(name).to_numpy() for name in CLEAN_SCHEMA.names}
    n = table.num_rows
    return TradeBatch(
        source=source, symbol=symbol, trade_id=col["trade_id"], price=col["price"],
        qty=col["qty"], trade_time_us=col["trade_time_us"], event_time_us=col["event_time_us"],
        recv_time_us=col["recv_time_us"], is_buyer_maker=col["is_buyer_maker"],
        offset=col["source_offset"], status=np.zeros(n, np.uint8), raw=None,
        is_price_spike=col["is_price_spike"],
    )


class _Reject(msgspec.Struct):
    source: str
    source_offset: int
    symbol: str
    reason: str
    detail: str
    raw: str
    trade_id: int | None = None
    trade_time_us: int | None = None
    recv_time_us: int | None = None


_REJECT = msgspec.json.Decoder(_Reject)


def encode_reject(r: Rejected) -> bytes:
    return _JSON.encode(_Reject(r.source, r.source_offset, r.symbol, r.reason.value, r.detail,
                                r.raw, r.trade_id, r.trade_time_us, r.recv_time_us))


def decode_reject(value: bytes) -> Rejected:
    r = _REJECT.decode(value)
    return Rejected(r.source, r.source_offset, r.symbol, RejectReason(r.reason), r.detail, r.raw,
                    trade_id=r.trade_id, trade_time_us=r.trade_time_us, recv_time_us=r.recv_time_us)




def encode_window(row: dict) -> bytes:
    """A window (or anomaly) row as JSON, its times (``*_us`` keys) as ISO 8601 UTC under
    the table's column names."""
    out = {}
    for k, v in row.items():
        if k.endswith("_us") and isinstance(v, int):
            out[k[:-3]] = dt.datetime.fromtimestamp(v / 1e6, dt.UTC).isoformat()
        else:
            out[k] = v
    return _JSON.encode(out)


def encode_stats(row: dict) -> bytes:
    """A ``stats_rows`` row as JSON (times stay µs integers under their ``*_us`` keys)."""
    return _JSON.encode(row)


def decode_stats(value: bytes) -> dict:
    return msgspec.json.decode(value)


def symbols_of(tb: TradeBatch) -> list[str]:
    """The distinct symbols of a batch, in first-seen order."""
    s = tb.symbol
    if isinstance(s, str):
        return [s]
    if isinstance(s, SymbolCodes):
        return [s.names[k] for k in np.flatnonzero(np.bincount(s.codes, minlength=len(s.names)))]
    return list(dict.fromkeys(s.tolist()))


def time_or_none(us: int) -> int | None:
    return None if us == NO_TIME else us
