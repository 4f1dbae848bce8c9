"""Read model inputs: data.binance.vision 1-minute kline files or a store's ``agg_1m``.

Kline files have 12 columns (``open_time,open,high,low,close,volume,close_time,
quote_volume,trades,taker_buy_base,taker_buy_quote,ignore``), with or without a header
line, plain, ``.gz`` or ``.zip`` (the first ``.csv`` member). ``open_time`` is in ms, or in
µs in the official files from 2025 on (detected per value). The symbol comes from
``SYMBOL=PATH`` or from the file name (``BTCUSDT-1m-2024-01-01.zip``,
``binance-spot-BTCUSDT-1m-….csv.gz``). A kline carries what a closed ``agg_1m`` window
holds: OHLC, base and quote volume, trade count and taker-buy volume (spike counts are not
known: NaN). Rows that cannot be parsed are skipped and counted (``KlineFile.bad_rows``),
never raised.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "ETHUSDT-1m-2022-08-14.csv").write_text(
...     "1660435200000,1983.55,1983.9,1982.14,1982.29,205.131,1660435259999,406814.92,288,"
...     "105.2993,208854.93,0\\nnot,a,row\\n")
>>> k = read_klines(str(d / "ETHUSDT-1m-2022-08-14.csv"))
>>> k.bars.symbol, len(k.bars), k.bad_rows, int(k.bars.trade_count[0])
('ETHUSDT', 1, 1, 288)
"""

from __future__ import annotations

import csv
import gzip
import math
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cryptostream.errors import SourceError
from cryptostream.ml.features import Bars
from cryptostream.model import SYMBOL_RE
from cryptostream.sources.lines import Oversize, read_lines

_NAME_RE = re.compile(r"(?:^|[-_])([A-Z0-9]{2,20})-1m-")
_US_THRESHOLD = 10**14  # open_time above this is in microseconds (ms reaches 1e14 in 5138)
_MIN_START_MS = 1_262_304_000_000  # 2010-01-01: no kline can be older
_MAX_START_MS = 4_102_444_800_000  # 2100-01-01
#: longest line read as a row (a kline row is ~130 bytes); longer ones are bad rows, unread
MAX_LINE_BYTES = 1 << 16


@dataclass(frozen=True)
class KlineFile:
    path: str
    bars: Bars
    rows: int  # data rows read (== len(bars) + bad_rows + duplicate_rows)
    bad_rows: int
    duplicate_rows: int = 0  # rows whose window start a later row repeated (the last wins)


def split_spec(spec: str) -> tuple[str | None, str]:
    """``SYMBOL=PATH`` -> (SYMBOL, PATH); a bare path -> (None, PATH)."""
    head, sep, tail = spec.partition("=")
    if sep and SYMBOL_RE.match(head):
        return head, tail
    return None, spec


def symbol_from_name(path: str) -> str | None:
    m = _NAME_RE.search(Path(path).name)
    return m.group(1) if m else None


def _open_binary(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zip":
        zf = zipfile.ZipFile(path)
        members = [n for n in zf.namelist() if n.endswith(".csv")] or zf.namelist()
        if not members:
            raise SourceError(f"{path}: the zip archive is empty; expected one kline .csv")
        return zf.open(members[0])
    return open(path, "rb")


def _row(text: str) -> list[str] | None:
    """The fields of one line (None: not a CSV row, e.g. an unbalanced quote)."""
    try:
        return next(csv.reader([text]), [])
    except csv.Error:
        return None


def read_klines(spec: str, symbol: str | None = None) -> KlineFile:
    """Read one kline file (``SYMBOL=PATH`` or ``PATH``) into ``Bars``.

    Never raises on a bad row: a line that is not a CSV row, is longer than
    ``MAX_LINE_BYTES`` (not read whole), is not valid UTF-8, lacks a column, holds a value
    that is not a finite number, a non-positive price, a negative volume or count, or an
    open time outside 2010..2100 is counted in ``bad_rows``; a repeated window start keeps
    its last row and counts the others in ``duplicate_rows``. So ``rows == len(bars) +
    bad_rows + duplicate_rows``.
    """
    sym, path_s = split_spec(spec)
    path = Path(path_s)
    sym = symbol or sym or symbol_from_name(path_s)
    if not sym:
        raise SourceError(
            f"{path}: cannot tell the symbol from the file name; pass it as SYMBOL={path}"
        )
    if not path.exists():
        raise SourceError(f"{path}: no such kline file")
    cols: list[list[float]] = [[] for _ in range(10)]
    rows = bad = 0
    try:
        with _open_binary(path) as fh:
            for line in read_lines(fh, MAX_LINE_BYTES, crlf=True):
                if isinstance(line, Oversize):
                    rows += 1
                    bad += 1
                    continue
                rec = _row(line.decode("utf-8", "replace"))
                if rec is not None and (not rec or (
                        rows == 0 and not rec[0].strip().lstrip("-").isdigit()
                        and "open" in rec[0].lower())):
                    continue  # blank line or the header
                rows += 1
                vals = _values(rec)
                if vals is None:
                    bad += 1
                    continue
                for i, v in enumerate(vals):
                    cols[i].append(v)
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise SourceError(f"{path}: cannot read the kline file ({exc})") from exc
    start_ms = np.array([int(v) for v in cols[0]], np.int64)
    n = len(start_ms)
    bars = Bars.from_columns(sym, {
        "start_ms": start_ms, "open": cols[1], "high": cols[2], "low": cols[3],
        "close": cols[4], "volume": cols[5], "quote_volume": cols[6], "trade_count": cols[7],
        "buy_volume": cols[8], "spike_count": np.full(n, np.nan),
    })
    return KlineFile(str(path), bars, rows, bad, n - len(bars))


def _values(rec: list[str] | None) -> list[float] | None:
    """open time (ms), open, high, low, close, volume, quote volume, trades, taker buy
    volume of one row; None when the row is garbage (see ``read_klines``)."""
    if rec is None:
        return None
    try:
        vals = [float(rec[i]) for i in (0, 1, 2, 3, 4, 5, 7, 8, 9)]
    except (ValueError, IndexError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in vals):
        return None
    if min(vals[1:5]) <= 0 or min(vals[5:]) < 0:
        return None
    start = vals[0] // 1000 if vals[0] >= _US_THRESHOLD else vals[0]
    if not _MIN_START_MS <= start < _MAX_START_MS:
        return None
    vals[0] = start
    return vals


def read_store(db: str, symbols: list[str] | None = None, table: str = "agg_1m") -> list[Bars]:
    """One ``Bars`` per symbol from a DuckDB file (via ``cryptostream.query``, so it works
    while a pipeline writes it) or a PostgreSQL DSN (``postgresql://…``)."""
    sql = (f"SELECT symbol, epoch_ms(window_start) AS start_ms, open, high, low, close, volume, "
           f"quote_volume, trade_count, buy_volume, spike_count FROM {table} "
           "ORDER BY symbol, window_start")
    if db.startswith(("postgresql://", "postgres://")) or "host=" in db:
        import psycopg

        pg_sql = sql.replace("epoch_ms(window_start)",
                             "(extract(epoch FROM window_start) * 1000)::bigint")
        with psycopg.connect(db) as conn:
            cur = conn.execute(pg_sql)
            names = [d.name for d in cur.description]
            data = {n: [] for n in names}
            for rec in cur:
                for n, v in zip(names, rec, strict=True):
                    data[n].append(v)
    else:
        from cryptostream.query import run_query

        if not Path(db).exists():
            raise SourceError(f"{db}: no such database; run the pipeline first or pass klines")
        # the whole table is the input: no row limit, a generous timeout
        data = run_query(db, sql, timeout_s=3600.0, max_rows=0).to_pydict()
    sym_col = np.array(data["symbol"], dtype=object)
    out = []
    for sym in dict.fromkeys(data["symbol"]):
        if symbols and sym not in symbols:
            continue
        idx = np.flatnonzero(sym_col == sym)
        cols = {k: np.array([data[k][i] for i in idx], dtype=np.float64 if k != "start_ms"
                            else np.int64) for k in data if k != "symbol"}
        out.append(Bars.from_columns(sym, cols))
    return out


def load_inputs(specs: list[str], symbols: list[str] | None = None,
                on_file=None) -> dict[str, Bars]:
    """Every ``--from`` input merged per symbol (kline files and stores; later rows of the
    same window replace earlier ones)."""
    merged: dict[str, Bars] = {}

    def add(b: Bars) -> None:
        if symbols and b.symbol not in symbols:
            return
        merged[b.symbol] = b if b.symbol not in merged else merged[b.symbol].append(b)

    for spec in specs:
        _, path = split_spec(spec)
        if path.endswith((".duckdb", ".db")) or path.startswith(("postgresql://",
                                                                 "postgres://")):
            for b in read_store(path, symbols):
                add(b)
            if on_file:
                on_file(path, None)
        else:
            k = read_klines(spec)
            add(k.bars)
            if on_file:
                on_file(path, k)
    if not merged:
        raise SourceError("no 1-minute windows in the inputs " + ", ".join(specs)
                          + (f" for symbols {symbols}" if symbols else ""))
    return merged
