"""Replay recorded Binance data (trade CSV/ZIP files, WebSocket recordings) as a source.

Each ``--replay [SYMBOL=]PATH`` names one file; its format is detected from its name and
first line. ``speed=None`` replays as fast as possible; ``speed=N`` paces the batches so
that trade time advances N times faster than wall time, merging several files in trade-
time order. Replayed records take the same decoding and cleaning path as live ones.
"""

from __future__ import annotations

import gzip
import heapq
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryptostream.errors import SourceError
from cryptostream.model import (
    SYMBOL_RE,
    Rejected,
    RejectReason,
    SourceBatch,
    SymbolCodes,
    TradeBatch,
)
from cryptostream.sources.base import OfflineSource
from cryptostream.sources.binance_messages import DEFAULT_MAX_LINE_BYTES, symbol_of
from cryptostream.sources.lines import Oversize, read_blocks
from cryptostream.sources.trade_csv import read_trade_csv, symbol_from_filename
from cryptostream.sources.ws_columnar import ColumnarDecoder

#: Bytes of WebSocket lines decoded per batch (whole lines; the columnar decoder likes big ones).
WS_CHUNK_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class ReplayFile:
    """One file to replay and the symbol it is for (None: taken from the messages)."""

    path: Path
    symbol: str | None

    @classmethod
    def parse(cls, spec: str) -> ReplayFile:
        """``SYMBOL=PATH`` or ``PATH`` (official file names carry the symbol).

        >>> ReplayFile.parse("BTCUSDT=/data/x.csv").symbol
        'BTCUSDT'
        >>> ReplayFile.parse("/data/ETHUSDT-trades-2024-08-08.zip").symbol
        'ETHUSDT'
        """
        head, sep, tail = spec.partition("=")
        if sep and SYMBOL_RE.match(head):
            return cls(Path(tail), head)
        return cls(Path(spec), symbol_from_filename(spec))

    @property
    def kind(self) -> str:
        """``csv`` for official trade files, ``ws`` for WebSocket message recordings."""
        name = self.path.name.lower()
        if name.endswith((".zip", ".csv", ".csv.gz")):
            return "csv"
        first = _first_line(self.path)
        if first[:1].isdigit() and b"," in first and b"{" not in first:
            return "csv"
        return "ws"


def _open(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _first_line(path: Path) -> bytes:
    """The start (at most 4 KB) of the first non-blank line, read in bounded pieces (a
    first line of 1 GB is not read whole)."""
    try:
        with _open(path) as fh:
            while True:
                part = fh.readline(4096)
                if not part:
                    return b""
                if part.strip():
                    return part.strip()[:4096]
    except (OSError, EOFError) as exc:
        raise SourceError(f"{path}: cannot read ({exc}); check the --replay path") from exc


class ReplaySource(OfflineSource):
    """Replays files; see the module docstring. Implements the ``Source`` protocol."""

    finite = True

    def __init__(self, files: list[ReplayFile], speed: float | None = None, name: str = "replay",
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES):
        if not files:
            raise SourceError("replay needs at least one file: --replay [SYMBOL=]PATH")
        for f in files:
            if not f.path.exists():
                raise SourceError(f"{f.path}: no such file; check the --replay path")
            if f.kind == "csv" and f.symbol is None:
                raise SourceError(
                    f"{f.path}: cannot tell the symbol of a trade CSV; write --replay SYMBOL={f.path}"
                )
        if speed is not None and speed <= 0:
            raise SourceError("--speed must be 'max' or a positive number")
        if max_line_bytes < 1:
            raise SourceError("the line size limit must be at least 1 byte")
        self.files = files
        self.name = name
        #: longest line kept as a message; a longer one is rejected as ``oversize`` unread
        self.max_line_bytes = max_line_bytes
        self._speed = speed
        self._closed = False
        self.bytes_total = sum(_size_hint(f.path) for f in files)
        self.bytes_done = 0

    @property
    def speed(self) -> float | None:
        return self._speed

    def close(self) -> None:
        self._closed = True

    def batches(self) -> Iterator[SourceBatch]:
        if self._speed is None:
            for f in self.files:
                for sb in self._file_batches(f):
                    if self._closed:
                        return
                    yield sb
            return
        yield from self._paced()

    # -- reading ----------------------------------------------------------------------
    def _file_batches(self, f: ReplayFile) -> Iterator[SourceBatch]:
        source = f"replay:{f.path.name}"
        if f.kind == "csv":
            size = _size_hint(f.path)
            done = 0
            for sb in read_trade_csv(f.path, f.symbol or "", source,
                                     max_line_bytes=self.max_line_bytes):
                step = min(size - done, max(1, len(sb.trades)) * 60)
                done += step
                self.bytes_done += step
                yield sb
            self.bytes_done += size - done
            return
        yield from self._ws_batches(f, source)

    def _ws_batches(self, f: ReplayFile, source: str) -> Iterator[SourceBatch]:
        offset = 0
        last_pos = 0
        decoder = ColumnarDecoder(threads=1, max_line_bytes=self.max_line_bytes)
        try:
            with open(f.path, "rb") as raw:
                gz = raw.read(2) == b"\x1f\x8b"
                raw.seek(0)
                fh = gzip.GzipFile(fileobj=raw) if gz else raw
                # whole lines in chunks of WS_CHUNK_BYTES; a line over the limit is dropped
                # unread past its first bytes (memory stays bounded whatever its length)
                for data in read_blocks(fh, self.max_line_bytes, WS_CHUNK_BYTES):
                    if isinstance(data, Oversize):
                        sb = self._oversize(data, source, offset)
                        offset += 1
                    else:
                        sb = decoder.decode_chunk(data, source, offset)
                        offset += decoder.last_line_count
                        if f.symbol is not None:
                            sb = _only_symbol(sb, f.symbol)
                    pos = raw.tell()
                    self.bytes_done += pos - last_pos
                    last_pos = pos
                    yield sb
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise SourceError(f"{f.path}: the compressed file is damaged ({exc}); the lines "
                              "before the damage were replayed") from exc
        finally:
            decoder.close()

    def _oversize(self, line: Oversize, source: str, offset: int) -> SourceBatch:
        rej = Rejected(source, offset, symbol_of(line.head), RejectReason.OVERSIZE,
                       line.detail(self.max_line_bytes)[:500],
                       line.head.decode("utf-8", "replace"))
        return SourceBatch(TradeBatch.empty(source), [rej], {})

    # -- pacing -----------------------------------------------------------------------
    def _paced(self) -> Iterator[SourceBatch]:
        speed = float(self._speed or 1.0)
        slice_us = max(1_000, int(100_000 * speed))
        heap: list = []
        iters = [self._sliced(self._file_batches(f), slice_us) for f in self.files]
        for k, it in enumerate(iters):
            first = next(it, None)
            if first is not None:
                heapq.heappush(heap, (first[0], k, first[1]))
        if not heap:
            return
        t0_us = heap[0][0]
        wall0 = time.monotonic()
        while heap and not self._closed:
            t_us, k, sb = heapq.heappop(heap)
            due = wall0 + (t_us - t0_us) / 1e6 / speed
            while not self._closed:
                delay = due - time.monotonic()
                if delay <= 0:
                    break
                time.sleep(min(delay, 0.2))
            if self._closed:
                return
            yield sb
            nxt = next(iters[k], None)
            if nxt is not None:
                heapq.heappush(heap, (nxt[0], k, nxt[1]))

    @staticmethod
    def _sliced(batches: Iterator[SourceBatch], slice_us: int):
        """Split batches into slices of at most ``slice_us`` of trade time, keyed by start."""
        last_t = 0
        for sb in batches:
            t = sb.trades.trade_time_us
            if len(t) == 0:
                yield last_t, sb
                continue
            bucket = (t - t.min()) // slice_us
            if bucket.max() == 0:
                last_t = int(t.min())
                yield last_t, sb
                continue
            cuts = np.flatnonzero(np.diff(bucket)) + 1
            bounds = [0, *cuts.tolist(), len(t)]
            for j in range(len(bounds) - 1):
                idx = np.arange(bounds[j], bounds[j + 1])
                part = SourceBatch(sb.trades.take(idx), sb.rejects if j == 0 else [],
                                   sb.ignored if j == 0 else {})
                last_t = int(t[bounds[j]])
                yield last_t, part


def _only_symbol(sb: SourceBatch, symbol: str) -> SourceBatch:
    """Keep ``symbol``'s trades; count other symbols' trades as ignored."""
    syms = sb.trades.symbol
    if isinstance(syms, str):
        syms = np.full(len(sb.trades), syms, dtype=object)
    elif isinstance(syms, SymbolCodes):
        syms = syms.to_objects()
    if len(syms) == 0 or (syms == symbol).all():
        return sb
    keep = syms == symbol
    ignored = dict(sb.ignored)
    for s in syms[~keep].tolist():
        key = s if isinstance(s, str) and SYMBOL_RE.match(s) else ""
        ignored[key] = ignored.get(key, 0) + 1
    return SourceBatch(sb.trades.take(keep), sb.rejects, ignored)


def _size_hint(path: Path) -> int:
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                return sum(i.file_size for i in zf.infolist())
        return path.stat().st_size
    except (OSError, zipfile.BadZipFile):
        return 0
