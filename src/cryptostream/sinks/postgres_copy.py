"""PostgreSQL's binary ``COPY`` format, encoded straight from Arrow columns (used by
``sinks.postgres_sink``): no Python object per row, about a million trade rows per second.

Supported column types: BIGINT, DOUBLE PRECISION, BOOLEAN, TIMESTAMPTZ (Arrow timestamps in
µs, UTC) and TEXT/VARCHAR (plain or dictionary-encoded strings); nulls of every type.
PostgreSQL text cannot hold U+0000: it is written as U+FFFD.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cryptostream.errors import SinkError
from cryptostream.sinks.base import TS

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_TRAILER = b"\xff\xff"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC in Unix microseconds
#: PostgreSQL type -> (Arrow type the column is cast to, width of a value; 0 = variable)
_KINDS = {
    "bigint": (pa.int64(), 8),
    "double precision": (pa.float64(), 8),
    "timestamp with time zone": (TS, 8),
    "boolean": (pa.bool_(), 1),
    "text": (pa.string(), 0),
    "character varying": (pa.string(), 0),
}


class _Col:
    """One column ready to encode: fixed-width big-endian values (``fixed``, an (n, width)
    byte matrix), or text as byte ranges (``starts``, ``lens``) of ``data``; ``valid`` is
    None when no value is null."""

    __slots__ = ("data", "fixed", "lens", "starts", "valid")

    def __init__(self, valid, fixed=None, starts=None, lens=None, data=None):
        self.valid, self.fixed, self.starts, self.lens, self.data = valid, fixed, starts, lens, data

    def width(self, lo: int, hi: int) -> int:
        """Bytes the widest value of rows ``lo:hi`` takes."""
        if self.fixed is not None:
            return self.fixed.shape[1]
        return int(self.lens[lo:hi].max(initial=0))

    def values(self, lo: int, hi: int, width: int) -> np.ndarray:
        """Rows ``lo:hi`` as an (m, width) byte matrix (text padded with junk past its end)."""
        if self.fixed is not None:
            return self.fixed[lo:hi]
        idx = np.minimum(self.starts[lo:hi, None] + np.arange(width), len(self.data) - 1)
        return self.data[idx]


def _column(arr: pa.ChunkedArray | pa.Array, pgtype: str) -> _Col:
    if pgtype not in _KINDS:
        raise SinkError(f"cannot write a column of PostgreSQL type {pgtype} (no encoder)")
    atype, width = _KINDS[pgtype]
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
    if not width:
        return _text(arr, valid)
    arr = arr.cast(atype)
    if atype == TS:
        arr = arr.cast(pa.int64())
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar(False if width == 1 else 0, arr.type))
    vals = arr.to_numpy(zero_copy_only=False)
    if atype == TS:
        vals = vals - _PG_EPOCH_US
    if width == 8:
        vals = vals.astype(">i8" if vals.dtype.kind == "i" else ">f8")
    return _Col(valid, fixed=np.ascontiguousarray(vals).view(np.uint8).reshape(len(vals), width))


def _text(arr: pa.Array, valid: np.ndarray | None) -> _Col:
    if pa.types.is_dictionary(arr.type):
        if len(arr.dictionary) == 0:  # every value is null
            zeros = np.zeros(len(arr), np.int64)
            return _Col(valid, starts=zeros, lens=zeros, data=np.zeros(1, np.uint8))
        d = _text(arr.dictionary, None)
        idx = pc.fill_null(arr.indices, 0).to_numpy(zero_copy_only=False).astype(np.intp)
        starts, lens, data = d.starts[idx], d.lens[idx], d.data
    else:
        # PostgreSQL text cannot hold U+0000 (a reject's raw payload can): it becomes U+FFFD,
        # the character undecodable bytes already become
        arr = pc.replace_substring(arr.cast(pa.large_string()), "\x00", "\ufffd")
        offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset: arr.offset + len(arr) + 1]
        buf = arr.buffers()[2]
        data = np.frombuffer(buf, np.uint8) if buf is not None and buf.size else np.zeros(1, np.uint8)
        starts, lens = offsets[:-1], np.diff(offsets)
    if valid is not None:
        lens = np.where(valid, lens, 0)
    return _Col(valid, starts=starts, lens=lens, data=data)


def encode_binary_copy(table: pa.Table, pgtypes: list[str],
                       chunk_bytes: int = 16 << 20) -> Iterator[bytes]:
    """``table`` in PostgreSQL's binary COPY format (signature ... trailer), in chunks of
    about ``chunk_bytes`` (a chunk holding a very long text is split until it fits).

    The rows of a chunk are laid out in a byte matrix (field count, then per column a length
    word and room for the chunk's widest value); null values and the unused tail of shorter
    texts are then dropped with one boolean mask, so no Python code runs per row.
    """
    cols = [_column(table.column(i), t) for i, t in enumerate(pgtypes)]
    n = table.num_rows
    typical = 2 + sum(4 + (c.fixed.shape[1] if c.fixed is not None else
                           int(c.lens.mean()) if n else 0) for c in cols)
    step = max(1, chunk_bytes // typical)
    yield _SIGNATURE
    for lo in range(0, n, step):
        yield from _blocks(cols, lo, min(n, lo + step), chunk_bytes)
    yield _TRAILER


def _blocks(cols: list[_Col], lo: int, hi: int, budget: int) -> Iterator[bytes]:
    widths = [c.width(lo, hi) for c in cols]
    row = 2 + sum(4 + w for w in widths)
    if hi - lo > 1 and (hi - lo) * row > budget:
        mid = (lo + hi) // 2
        yield from _blocks(cols, lo, mid, budget)
        yield from _blocks(cols, mid, hi, budget)
        return
    m = hi - lo
    buf = np.empty((m, row), np.uint8)
    buf[:, 0:2] = np.array([len(cols)], ">i2").view(np.uint8)
    keep = None
    pos = 2
    for c, w in zip(cols, widths, strict=True):
        v = None if c.valid is None else c.valid[lo:hi]
        size = np.full(m, w, np.int64) if c.lens is None else c.lens[lo:hi]
        hdr = size if v is None else np.where(v, size, -1)
        buf[:, pos: pos + 4] = hdr.astype(">i4").view(np.uint8).reshape(m, 4)
        buf[:, pos + 4: pos + 4 + w] = c.values(lo, hi, w)
        short = v is not None if c.lens is None else bool(m) and int(size.min()) < w
        if short:  # some values take less than w bytes: mask the rest out
            if keep is None:
                keep = np.ones((m, row), np.bool_)
            keep[:, pos + 4: pos + 4 + w] = np.arange(w) < np.where(
                v if v is not None else True, size, 0)[:, None]
        pos += 4 + w
    yield (buf[keep] if keep is not None else buf.reshape(-1)).tobytes()
