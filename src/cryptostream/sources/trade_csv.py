"""Read data.binance.vision spot trade files (CSV, CSV.gz or ZIP) as columnar trade batches.

Layout: ``id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch``, normally without a header
(a header line, as some archives have, is detected and skipped). ``time`` is in
milliseconds before 2025 and microseconds from 2025-01-01 on: the unit is detected once
per file from its first rows. The fast path is Arrow's CSV reader; a file with a malformed
row is read on from that point row by row, each bad row becoming a reject.
"""

from __future__ import annotations

import csv
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from cryptostream.errors import SourceError
from cryptostream.model import (
    NO_TIME,
    US_PER_MS,
    Rejected,
    RejectReason,
    SourceBatch,
    TradeBatch,
)
from cryptostream.sources.binance_messages import DEFAULT_MAX_LINE_BYTES
from cryptostream.sources.lines import Oversize, read_lines

COLUMNS = ["id", "price", "qty", "quoteQty", "time", "isBuyerMaker", "isBestMatch"]
_TYPES = {
    "id": pa.int64(), "price": pa.float64(), "qty": pa.float64(), "quoteQty": pa.float64(),
    "time": pa.int64(), "isBuyerMaker": pa.bool_(), "isBestMatch": pa.bool_(),
}
_OFFICIAL_NAME = re.compile(r"^([A-Z0-9]{2,20})-trades-\d{4}-\d{2}")
#: A time above this is in microseconds (1e14 ms would be the year 5138).
_US_THRESHOLD = 10**14
_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def symbol_from_filename(path: str | Path) -> str | None:
    """``BTCUSDT-trades-2024-08-08.csv`` -> ``BTCUSDT``; None for other names.

    >>> symbol_from_filename("/x/ETHUSDT-trades-2025-01-01.zip")
    'ETHUSDT'
    """
    m = _OFFICIAL_NAME.match(Path(path).name)
    return m.group(1) if m else None


def _open_binary(path: Path):
    if path.suffix == ".zip":
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise SourceError(f"{path}: not a readable ZIP archive ({exc})") from exc
        names = [n for n in zf.namelist() if n.endswith(".csv")]
        if not names:
            raise SourceError(f"{path}: the archive holds no .csv file")
        return zf.open(names[0])
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")


class _LineTooLong(Exception):
    """Raised into Arrow's reader: a row is longer than the limit (the row-by-row reader
    takes over and rejects it unread)."""


class _LineGuard:
    """A binary file for Arrow's CSV reader that fails as soon as an unfinished row grows
    past ``limit`` bytes: Arrow would otherwise read a straddling row whole, however long."""

    def __init__(self, fh, limit: int):
        self._fh, self._limit, self._run = fh, limit, 0
        self.closed = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        eol = max(data.rfind(b"\n"), data.rfind(b"\r"))
        self._run = self._run + len(data) if eol < 0 else len(data) - eol - 1
        if self._run > self._limit:
            raise _LineTooLong
        return data

    def close(self) -> None:
        self.closed = True


def _has_header(first_line: bytes) -> bool:
    field = first_line.split(b",", 1)[0].strip()
    return not field.lstrip(b"-").isdigit()


def read_trade_csv(
    path: str | Path, symbol: str, source: str, block_size: int = 8 << 20,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[SourceBatch]:
    """Yield batches of the trades in one official trade file.

    A row longer than ``max_line_bytes`` is rejected as ``oversize`` without being read
    whole (official rows are ~60 bytes)."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file; check the --replay path")
    with _open_binary(path) as fh:
        head = fh.peek(4096)[:4096] if hasattr(fh, "peek") else b""
    header = _has_header(head.split(b"\n", 1)[0]) if head else False
    unit_us: int | None = None
    emitted = 0
    try:
        with _open_binary(path) as fh:
            reader = pacsv.open_csv(
                _LineGuard(fh, max_line_bytes),
                read_options=pacsv.ReadOptions(
                    column_names=COLUMNS, skip_rows=1 if header else 0, block_size=block_size,
                    use_threads=False,
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types=_TYPES, true_values=["True", "true", "1"],
                    false_values=["False", "false", "0"], strings_can_be_null=False,
                ),
            )
            for rb in reader:
                n = rb.num_rows
                if n == 0:
                    continue
                if any(col.null_count for col in rb.columns[:6]):
                    raise pa.ArrowInvalid("null field")
                t = rb.column("time").to_numpy()
                if unit_us is None:
                    unit_us = 1 if int(t[: min(n, 100)].max()) >= _US_THRESHOLD else US_PER_MS
                yield SourceBatch(
                    TradeBatch(
                        source=source,
                        symbol=symbol,
                        trade_id=rb.column("id").to_numpy(),
                        price=rb.column("price").to_numpy(),
                        qty=rb.column("qty").to_numpy(),
                        trade_time_us=t * unit_us if unit_us != 1 else t,
                        event_time_us=np.full(n, NO_TIME, np.int64),
                        recv_time_us=np.full(n, NO_TIME, np.int64),
                        is_buyer_maker=rb.column("isBuyerMaker").to_numpy(zero_copy_only=False),
                        offset=np.arange(emitted, emitted + n, dtype=np.int64),
                        status=np.zeros(n, np.uint8),
                    )
                )
                emitted += n
    except (pa.ArrowInvalid, _LineTooLong):
        # A malformed row somewhere in the next block: read on row by row from there.
        yield from _read_rows_slow(path, symbol, source, header, emitted, unit_us,
                                   max_line_bytes)


def _read_rows_slow(path, symbol, source, header, skip, unit_us,
                    max_line_bytes=DEFAULT_MAX_LINE_BYTES, chunk=65_536):
    """Row by row from the start of the file, skipping the ``skip`` records already
    emitted. Lines are read in bounded memory (``sources.lines``) and parsed one at a time,
    so a broken quote or a huge field spoils one row, never the rest of the file."""
    try:
        with _open_binary(path) as fh:
            pending: list[tuple] = []
            rejects: list[Rejected] = []
            off = -1
            first = True
            for line in read_lines(fh, max_line_bytes, crlf=True):
                if first:
                    first = False
                    if header:
                        continue
                if isinstance(line, Oversize):
                    off += 1
                    if off >= skip:
                        rejects.append(Rejected(source, off, symbol, RejectReason.OVERSIZE,
                                                line.detail(max_line_bytes),
                                                line.head.decode("utf-8", "replace")))
                else:
                    text = line.decode("utf-8", "replace")
                    try:
                        row = next(csv.reader([text]), [])
                    except csv.Error as exc:
                        row, bad = None, f"malformed CSV row: {exc}"
                    if row is not None and (not row or (len(row) == 1 and not row[0].strip())):
                        continue  # blank lines are not records (Arrow's reader skips them too)
                    off += 1
                    if off < skip:
                        continue
                    parsed = (RejectReason.DECODE_ERROR, bad) if row is None else _parse_row(row)
                    if isinstance(parsed, tuple) and len(parsed) == 2:
                        rejects.append(Rejected(source, off, symbol, parsed[0], parsed[1][:500],
                                                text[:4096]))
                    else:
                        tid, price, qty, t, mk = parsed
                        if unit_us is None:
                            unit_us = 1 if t >= _US_THRESHOLD else US_PER_MS
                        if -(2**62) <= t * unit_us < 2**62:
                            pending.append((off, tid, price, qty, t * unit_us, mk, text))
                        else:  # a time in ms so large that it does not fit in µs
                            rejects.append(Rejected(source, off, symbol, RejectReason.BAD_TYPE,
                                                    f"time {t} out of range", text[:4096]))
                if len(pending) + len(rejects) >= chunk:
                    yield _rows_batch(pending, rejects, symbol, source)
                    pending, rejects = [], []
            if pending or rejects:
                yield _rows_batch(pending, rejects, symbol, source)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise SourceError(f"{path}: cannot read on ({exc}); the rows before were replayed") from exc


def _parse_row(row: list[str]):
    if len(row) < 6:
        return RejectReason.MISSING_FIELD, f"{len(row)} fields, expected 7"
    try:
        tid = int(row[0])
        price = float(row[1])
        qty = float(row[2])
        t = int(row[4])
    except ValueError as exc:
        return RejectReason.BAD_TYPE, str(exc)
    flag = row[5].strip().lower()
    if flag not in _TRUE and flag not in _FALSE:
        return RejectReason.BAD_TYPE, f"isBuyerMaker {row[5]!r} is not a boolean"
    if not -(2**63) <= tid < 2**63 or not -(2**62) <= t < 2**62:
        return RejectReason.BAD_TYPE, "integer out of range"
    return tid, price, qty, t, flag in _TRUE


def _rows_batch(pending, rejects, symbol, source) -> SourceBatch:
    n = len(pending)
    cols = list(zip(*pending)) if pending else [[]] * 7
    batch = TradeBatch(
        source=source,
        symbol=symbol,
        trade_id=np.array(cols[1], np.int64),
        price=np.array(cols[2], np.float64),
        qty=np.array(cols[3], np.float64),
        trade_time_us=np.array(cols[4], np.int64),
        event_time_us=np.full(n, NO_TIME, np.int64),
        recv_time_us=np.full(n, NO_TIME, np.int64),
        is_buyer_maker=np.array(cols[5], np.bool_),
        offset=np.array(cols[0], np.int64),
        status=np.zeros(n, np.uint8),
        raw=[r.encode() for r in cols[6]],
    )
    return SourceBatch(batch, rejects, {})

