"""Decode large chunks of recorded WebSocket lines with DuckDB's JSON functions (columnar).

Same input shapes and the same outcomes as ``binance_messages.decode_lines`` (which stays the
decoder for live sockets and small batches), but for replays: a chunk of lines becomes one
zero-copy Arrow string column, and one SQL query extracts every field in C++ with the GIL
released, so decoding overlaps with processing. A chunk that is not valid UTF-8 is handed to
the msgspec decoder line by line (DuckDB must not see invalid strings). Per CPU second it is
no faster than msgspec (docs/benchmarks.md); it wins wall time because it runs outside the
GIL, beside the processor.

>>> dec = ColumnarDecoder()
>>> chunk = (b'{"stream":"btcusdt@trade","data":{"e":"trade","E":2,"s":"BTCUSDT","t":7,'
...          b'"p":"1.5","q":"2","T":1,"m":true}}\\n{"u":1,"s":"BTCUSDT","b":"1"}\\n{oops\\n')
>>> sb = dec.decode_chunk(chunk, "demo", 0)
>>> sb.trades.trade_id.tolist(), sb.ignored, [r.reason.value for r in sb.rejects]
([7], {'BTCUSDT': 1}, ['decode_error'])
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from cryptostream.model import (
    NO_TIME,
    RawLines,
    Rejected,
    RejectReason,
    SourceBatch,
    SymbolCodes,
    TradeBatch,
)
from cryptostream.sources.binance_messages import (
    DEFAULT_MAX_LINE_BYTES,
    MAX_MS,
    RAW_KEEP_BYTES,
    decode_lines,
    symbol_of,
)

_FIELDS = ("e", "s", "t", "p", "q", "T", "m", "E")
#: Paths to extract per line shape: raw payloads, combined-stream messages, or a mix of both.
_PATHS = {
    "raw": [f"$.{f}" for f in _FIELDS] + ["$.stream"],
    "combined": [f"$.data.{f}" for f in _FIELDS] + ["$.stream"],
    "mixed": [p for f in _FIELDS for p in (f"$.{f}", f"$.data.{f}")] + ["$.stream"],
}



# line kinds returned by the query
SKIP, DECODE, TRADE, SUSPECT, OTHER, OVERSIZE = range(6)


def _sql(shape: str, prefixed: bool, check: bool) -> str:
    """The extraction query. ``lines`` has idx, line (the whole line), jstart (1-based start
    of the JSON after a recorder prefix; 1 when none) and skip (blank or oversize)."""
    j = "CASE WHEN jstart > 1 THEN line[jstart:] ELSE line END" if prefixed else "line"
    paths = "[" + ", ".join(f"'{p}'" for p in _PATHS[shape]) + "]"
    extract = f"json_extract_string({j}, {paths})"
    if shape == "mixed":
        fields = [f"coalesce(v[{2 * k + 2}], v[{2 * k + 1}])" for k in range(len(_FIELDS))]
    else:
        fields = [f"v[{k + 1}]" for k in range(len(_FIELDS))]
    e, s_, t, p, q, tt, m, ev = fields
    stream = f"v[{len(_PATHS[shape])}]"
    if check:
        extract = f"CASE WHEN json_valid({j}) THEN {extract} END"
        ok = f"skip OR json_valid({j})"
    else:
        ok = "true"
    pfx = "CASE WHEN jstart > 1 THEN rtrim(line[1:jstart - 2], ':') END" if prefixed else "NULL"
    return f"""
WITH x AS (
    SELECT idx, skip, {ok} AS ok, {pfx} AS pfx,
           CASE WHEN skip THEN NULL ELSE {extract} END AS v
    FROM lines
), f AS (
    SELECT idx, skip, ok, pfx, {e} AS e, {s_} AS s, {t} AS t, {p} AS p, {q} AS q,
           {tt} AS tt, lower({m}) AS m, {ev} AS ev, {stream} AS stream
    FROM x
), c AS (
    SELECT *, TRY_CAST(t AS BIGINT) AS t_i, TRY_CAST(p AS DOUBLE) AS p_d,
           TRY_CAST(q AS DOUBLE) AS q_d,
           -- times whose value in µs would overflow are left to the msgspec verdict (suspect)
           CASE WHEN TRY_CAST(tt AS BIGINT) BETWEEN -{MAX_MS} AND {MAX_MS}
                THEN TRY_CAST(tt AS BIGINT) END AS tt_i,
           CASE WHEN TRY_CAST(ev AS BIGINT) BETWEEN -{MAX_MS} AND {MAX_MS}
                THEN TRY_CAST(ev AS BIGINT) END AS ev_i
    FROM f
)
SELECT idx,
       CAST(CASE WHEN skip THEN {SKIP} WHEN NOT ok THEN {DECODE}
            WHEN e = 'trade' THEN
                 -- one flat test (a nested CASE costs a third of the query): the rare suspect
                 -- rows are classified afterwards by the msgspec decoder, line by line
                 CASE WHEN t_i IS NULL OR p_d IS NULL OR q_d IS NULL OR tt_i IS NULL OR s IS NULL
                        OR m IS NULL OR (m <> 'true' AND m <> 'false')
                        OR (ev_i IS NULL AND ev IS NOT NULL)
                      THEN {SUSPECT} ELSE {TRADE} END
            ELSE {OTHER} END AS TINYINT) AS kind,
       CASE WHEN s IS NOT NULL THEN s
            ELSE coalesce(upper(split_part(stream, '@', 1)), '') END AS symbol,
       coalesce(t_i, 0) AS trade_id,
       coalesce(p_d, 'NaN'::DOUBLE) AS price,
       coalesce(q_d, 'NaN'::DOUBLE) AS qty,
       coalesce(tt_i, 0) * 1000 AS trade_time_us,
       coalesce(ev_i * 1000, {NO_TIME}) AS event_time_us,
       coalesce(m = 'true', false) AS is_buyer_maker,
       CASE WHEN pfx IS NULL THEN {NO_TIME}
            WHEN contains(pfx, '.') OR length(pfx) <= 11
            THEN CAST(round(TRY_CAST(pfx AS DOUBLE) * 1e6) AS BIGINT)
            ELSE TRY_CAST(pfx AS BIGINT) // 1000 END AS recv_time_us
FROM c
"""


_QUERIES = {
    (shape, pre, chk): _sql(shape, pre, chk)
    for shape in _PATHS for pre in (False, True) for chk in (False, True)
}


class ColumnarDecoder:
    """Owns an in-memory DuckDB connection; ``threads`` bounds its CPU use."""

    def __init__(self, threads: int = 1, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES):
        self.con = duckdb.connect()
        self.con.execute(f"SET threads = {int(threads)}")
        self.max_line_bytes = max_line_bytes
        self.last_line_count = 0  # lines in the last chunk decoded (blank ones included)

    def close(self) -> None:
        self.con.close()

    def decode_lines(self, lines: list[bytes], source: str, first_offset: int,
                     recv_time_us: int | None = None) -> SourceBatch:
        """``decode_lines``-compatible entry point (lines without their newlines)."""
        return self.decode_chunk(b"\n".join(lines), source, first_offset, recv_time_us)

    def decode_chunk(self, chunk: bytes, source: str, first_offset: int,
                     recv_time_us: int | None = None) -> SourceBatch:
        """Decode whole lines in ``chunk`` (split on ``\\n``; a final newline is optional)."""
        if chunk.endswith(b"\n"):
            chunk = chunk[:-1]
            if not chunk:
                self.last_line_count = 1
                return SourceBatch(TradeBatch.empty(source))
        if not chunk:
            self.last_line_count = 0
            return SourceBatch(TradeBatch.empty(source))
        buf = np.frombuffer(chunk, np.uint8)
        nl = np.flatnonzero(buf == 10)
        starts = np.concatenate(([0], nl + 1)).astype(np.int64)
        ends = np.concatenate((nl, [len(buf)])).astype(np.int64)
        self.last_line_count = len(starts)
        lines = _string_array(chunk, starts, ends)
        try:
            lines.validate(full=True)  # DuckDB must never see invalid UTF-8
        except pa.ArrowInvalid:
            return decode_lines([chunk[s:e] for s, e in zip(starts.tolist(), ends.tolist())],
                                source, first_offset, recv_time_us, self.max_line_bytes)
        raw = RawLines(chunk, starts, ends)
        oversize = (ends - starts) > self.max_line_bytes
        jstart = _json_starts(buf, starts, ends)
        table = pa.table({
            "idx": np.arange(len(starts), dtype=np.int64),
            "line": lines,
            "jstart": jstart,
            "skip": _blank(buf, starts, ends, chunk) | oversize,
        })
        res = self._query(table, _shape(chunk, len(starts)), prefixed=bool((jstart > 1).any()))
        return _assemble(res, raw, oversize, source, first_offset, recv_time_us)

    def _query(self, table: pa.Table, shape: str, prefixed: bool) -> pa.Table:
        self.con.register("lines", table)
        try:
            try:
                return self.con.sql(_QUERIES[shape, prefixed, False]).to_arrow_table()
            except duckdb.Error:  # a line that is not JSON: validate line by line
                return self.con.sql(_QUERIES[shape, prefixed, True]).to_arrow_table()
        finally:
            self.con.unregister("lines")


def _string_array(chunk: bytes, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """Zero-copy string column over the lines; each value keeps its trailing newline (JSON
    whitespace), which keeps the values contiguous; ``\\r`` is stripped the same way."""
    offsets = np.concatenate((starts, [len(chunk)])).astype(np.int32 if len(chunk) < 2**31 else np.int64)
    typ = pa.string() if offsets.dtype == np.int32 else pa.large_string()
    return pa.Array.from_buffers(typ, len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(chunk)])


def _json_starts(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """1-based start of the JSON in each line: after ``<ns> `` or ``<seconds>: `` prefixes."""
    jstart = np.ones(len(starts), np.int32)
    nonempty = ends > starts
    first = np.zeros(len(starts), np.uint8)
    first[nonempty] = buf[starts[nonempty]]
    digit = nonempty & (first >= 48) & (first <= 57)
    if not digit.any():
        return jstart
    spaces = np.flatnonzero(buf == 32)
    if spaces.size == 0:
        return jstart
    k = np.searchsorted(spaces, starts[digit])
    ok = k < spaces.size
    sp = np.where(ok, spaces[np.minimum(k, spaces.size - 1)], -1)
    rows = np.flatnonzero(digit)
    inside = ok & (sp < ends[digit]) & (sp - starts[digit] <= 24)
    jstart[rows[inside]] = (sp[inside] - starts[digit][inside] + 2).astype(np.int32)
    return jstart


def _shape(chunk: bytes, n_lines: int) -> str:
    """``combined`` when every line holds a ``{"stream":`` wrapper, ``raw`` when no line
    mentions one (nor a ``"data"`` key), else ``mixed`` (extracts both shapes' paths)."""
    wrapped = chunk.count(b'{"stream":')
    if wrapped == n_lines:
        return "combined"
    if wrapped == 0 and b'"data"' not in chunk:
        return "raw"
    return "mixed"


def _blank(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, chunk: bytes) -> np.ndarray:
    """Lines that are not messages: only whitespace, or a recorder's ``wss://`` header.

    Only lines that are empty or start with whitespace (what ``bytes.strip`` removes, as
    the msgspec decoder tests) or ``w`` are looked at one by one."""
    blank = ends == starts
    first = buf[np.minimum(starts, len(buf) - 1)]
    odd = ~blank & ((first == 32) | ((first >= 9) & (first <= 13)) | (first == 119))
    for i in np.flatnonzero(odd).tolist():
        line = chunk[starts[i] : ends[i]]
        blank[i] = not line.strip() or line.startswith((b"wss://", b"ws://"))
    return blank


def _assemble(res: pa.Table, raw: RawLines, oversize: np.ndarray, source: str,
              first_offset: int, recv_time_us: int | None) -> SourceBatch:
    kind = res.column("kind").to_numpy()
    kind = np.where(oversize, OVERSIZE, kind)
    rejects: list[Rejected] = []
    ignored: dict[str, int] = {}
    fixed: dict[int, TradeBatch] = {}
    if (kind != TRADE).any():
        for i in np.flatnonzero(kind == OVERSIZE).tolist():
            line = raw[i]
            rejects.append(_reject(source, first_offset + i, RejectReason.OVERSIZE,
                                   f"line of {len(line)} bytes > limit", line))
        for i in np.flatnonzero(kind == DECODE).tolist():
            rejects.append(_reject(source, first_offset + i, RejectReason.DECODE_ERROR,
                                   "not valid JSON", raw[i], symbol_of(raw[i])))
        other = np.flatnonzero(kind == OTHER)
        if other.size:
            for sym in res.column("symbol").take(pa.array(other)).to_pylist():
                ignored[sym] = ignored.get(sym, 0) + 1
        for i in np.flatnonzero(kind == SUSPECT).tolist():
            one = decode_lines([raw[i]], source, first_offset + i, recv_time_us)
            rejects.extend(one.rejects)
            for sym, k in one.ignored.items():
                ignored[sym] = ignored.get(sym, 0) + k
            if len(one.trades):
                fixed[i] = one.trades  # kept in place, with msgspec's verdict (missing_field)
            else:
                kind[i] = SKIP
    keep = np.flatnonzero((kind == TRADE) | (kind == SUSPECT))
    n = len(keep)
    if n == 0:
        return SourceBatch(TradeBatch.empty(source), rejects, ignored)
    all_trades = n == len(kind)
    t = res if all_trades else res.take(pa.array(keep))
    syms = t.column("symbol").combine_chunks().dictionary_encode()
    names = syms.dictionary.to_pylist()
    symbol = names[0] if len(names) == 1 else SymbolCodes(
        syms.indices.to_numpy(zero_copy_only=False), names)
    recv = t.column("recv_time_us").to_numpy(zero_copy_only=False)
    if recv_time_us is not None:
        recv = np.where(recv == NO_TIME, recv_time_us, recv)
    batch = TradeBatch(
        source=source,
        symbol=symbol,
        trade_id=t.column("trade_id").to_numpy(),
        price=t.column("price").to_numpy(),
        qty=t.column("qty").to_numpy(),
        trade_time_us=t.column("trade_time_us").to_numpy(),
        event_time_us=t.column("event_time_us").to_numpy(),
        recv_time_us=recv.astype(np.int64),
        is_buyer_maker=t.column("is_buyer_maker").to_numpy(zero_copy_only=False),
        offset=keep.astype(np.int64) + first_offset,
        status=np.zeros(n, np.uint8),
        raw=raw if all_trades else raw.take(keep),
    )
    if fixed:
        _apply_fixes(batch, keep, fixed)
    return SourceBatch(batch, rejects, ignored)


def _apply_fixes(batch: TradeBatch, keep: np.ndarray, fixed: dict[int, TradeBatch]) -> None:
    """Overwrite suspect rows with the msgspec decoder's record of the same line."""
    cols = ("trade_id", "price", "qty", "trade_time_us", "event_time_us", "recv_time_us",
            "is_buyer_maker", "status")
    for name in cols:
        setattr(batch, name, np.array(getattr(batch, name)))  # writable copies
    for i, one in fixed.items():
        pos = int(np.searchsorted(keep, i))
        for name in cols:
            getattr(batch, name)[pos] = getattr(one, name)[0]


def _reject(source: str, off: int, reason: RejectReason, detail: str, line: bytes,
            symbol: str = "") -> Rejected:
    text = line[:RAW_KEEP_BYTES].decode("utf-8", "replace")
    if len(line) > RAW_KEEP_BYTES:
        detail = f"{detail} (raw truncated to {RAW_KEEP_BYTES} of {len(line)} bytes)"
    return Rejected(source, off, symbol, reason, detail, text)

