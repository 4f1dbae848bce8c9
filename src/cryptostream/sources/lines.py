"""Read a byte stream as lines in bounded memory: a line over the limit is skipped unread.

``read_blocks`` yields blocks of whole lines (for the columnar decoder, which wants big
chunks) and, in their place in the stream, an ``Oversize`` marker for each line longer than
``max_line_bytes`` that could not be held: only its first ``RAW_KEEP_BYTES`` are kept, the
rest is read in chunks and dropped, so a 1 GB line costs one chunk of memory, not 1 GB.
``read_lines`` yields single lines (and the same markers) for the row-by-row readers.

A line longer than the limit can still reach a caller inside a block (a block holds up to
``chunk_bytes`` of whole lines, so lines between the limit and the chunk size are already in
memory); callers reject those by length, as the decoders do. Either way the outcome is the
same reject, with reason ``oversize`` and the raw payload truncated.

>>> import io
>>> data = b"a\\n" + b"x" * 50 + b"\\nb\\n"
>>> [x if isinstance(x, bytes) else ("oversize", x.size)
...  for x in read_lines(io.BytesIO(data), max_line_bytes=10, chunk_bytes=8)]
[b'a', ('oversize', 50), b'b']
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

#: Bytes of an oversize line kept for its reject (``Rejected.raw``).
RAW_KEEP_BYTES = 4096
#: Default read size of ``read_blocks``.
CHUNK_BYTES = 16 << 20


@dataclass(slots=True)
class Oversize:
    """A line longer than the limit: its first bytes and its full length (newline excluded)."""

    head: bytes
    size: int

    def detail(self, limit: int) -> str:
        text = f"line of {self.size} bytes > limit {limit}"
        if self.size > len(self.head):
            text += f" (raw truncated to {len(self.head)} of {self.size} bytes, the rest was not read)"
        return text


def _last_eol(data: bytes, crlf: bool) -> int:
    cut = data.rfind(b"\n")
    if crlf:
        cut = max(cut, data.rfind(b"\r"))
    return cut


def _first_eol(data: bytes, crlf: bool) -> int:
    nl = data.find(b"\n")
    if crlf:
        cr = data.find(b"\r")
        if cr >= 0 and (nl < 0 or cr < nl):
            return cr
    return nl


def read_blocks(fh: BinaryIO, max_line_bytes: int, chunk_bytes: int = CHUNK_BYTES,
                crlf: bool = False) -> Iterator[bytes | Oversize]:
    """Blocks of whole lines (each ending with its newline, but maybe the last one of the
    stream) and ``Oversize`` markers, in stream order. ``crlf`` also ends lines at a lone
    ``\\r`` (CSV files), else only ``\\n`` does. Memory stays below ``chunk_bytes +
    max_line_bytes`` whatever the line lengths."""
    chunk_bytes = max(1, chunk_bytes)
    rest = b""
    skipping: Oversize | None = None  # the line being dropped, while its end is not found
    while True:
        block = fh.read(chunk_bytes)
        if skipping is not None:
            if not block:
                yield skipping
                return
            eol = _first_eol(block, crlf)
            if eol < 0:
                skipping.size += len(block)
                continue
            skipping.size += eol
            yield skipping
            skipping = None
            block = block[eol + 1:]
            if not block:
                continue
        if not block:
            if rest:
                yield rest
            return
        data = rest + block if rest else block
        cut = _last_eol(data, crlf)
        if cut < 0:
            rest = data
        else:
            whole, rest = data[: cut + 1], data[cut + 1:]
            yield whole
        if len(rest) > max_line_bytes:  # an unfinished line already over the limit
            skipping = Oversize(rest[:RAW_KEEP_BYTES], len(rest))
            rest = b""


def read_lines(fh: BinaryIO, max_line_bytes: int, chunk_bytes: int = 1 << 20,
               crlf: bool = False) -> Iterator[bytes | Oversize]:
    """Lines without their line ends, and ``Oversize`` markers in place of lines over
    ``max_line_bytes`` (whether or not they were read whole). With ``crlf``, ``\\r\\n``
    ends a line and so does a lone ``\\r`` (an empty line may then appear between them)."""
    for item in read_blocks(fh, max_line_bytes, chunk_bytes, crlf):
        if isinstance(item, Oversize):
            yield item
            continue
        parts = item.split(b"\n")
        if parts[-1] == b"":
            parts.pop()
        for part in parts:
            pieces = part.split(b"\r") if crlf else (part,)
            if crlf and len(pieces) > 1 and pieces[-1] == b"":
                pieces.pop()  # the \r of a \r\n
            for line in pieces:
                if len(line) > max_line_bytes:
                    yield Oversize(line[:RAW_KEEP_BYTES], len(line))
                else:
                    yield line
