"""Decode Binance WebSocket messages (raw, combined-stream, recorder-prefixed) into trade batches.

Accepted line shapes, detected per line:

* raw payload ``{"e":"trade","E":..,"s":"BTCUSDT","t":..,"p":"..","q":"..","T":..,"m":..,"M":..}``
* combined stream ``{"stream":"btcusdt@trade","data":{...}}``
* either one prefixed by a recorder's local receive time: ``<ns> <json>`` (hftbacktest) or
  ``<epoch seconds>: <json>`` (cryptofeed)

Messages that are valid but not trades (bookTicker, depthUpdate, kline, aggTrade, REST
snapshots, subscription replies) are counted as ``ignored`` under their symbol. Broken lines
become rejects with a stable reason code. Nothing here raises on bad input.

Decoding is columnar: a chunk of lines is decoded by msgspec in one call (typed structs,
``strict=False`` so that Binance's decimal strings become floats in C), with a per-line
fallback only for chunks that hold a broken line.

>>> b = decode_lines([b'{"e":"trade","E":2,"s":"BTCUSDT","t":7,"p":"1.5","q":"2","T":1,"m":true}',
...                   b'{"u":1,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1"}', b'{oops'],
...                  source="demo", first_offset=0)
>>> b.trades.trade_id.tolist(), b.trades.price.tolist(), b.ignored, [r.reason.value for r in b.rejects]
([7], [1.5], {'BTCUSDT': 1}, ['decode_error'])
"""

from __future__ import annotations

import gc
import math
import re
from contextlib import contextmanager
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np

from cryptostream.model import (
    NO_TIME,
    REASON_INDEX,
    US_PER_MS,
    Rejected,
    RejectReason,
    SourceBatch,
    TradeBatch,
)

#: Longest line kept as a record; a longer one is rejected as ``oversize`` (raw truncated).
DEFAULT_MAX_LINE_BYTES = 1 << 20
RAW_KEEP_BYTES = 4096

_PREFIX_NS = re.compile(rb"^(\d{12,20}) (?=[{\[])")
_PREFIX_S = re.compile(rb"^(\d{9,11}(?:\.\d+)?): (?=[{\[])")


class _Payload(msgspec.Struct, gc=False):
    e: str | None = None
    E: int | None = None
    s: str | None = None
    t: int | None = None
    p: float | None = None
    q: float | None = None
    T: int | None = None
    m: bool | None = None
    # aggregate trade id of aggTrade payloads; raw, because bookTicker's "a" is a price string
    a: Any = None


class _Message(_Payload, gc=False):
    stream: str | None = None
    data: _Payload | None = None


_DECODE_ONE = msgspec.json.Decoder(_Message, strict=False)
_DECODE_MANY = msgspec.json.Decoder(list[_Message], strict=False)
_DECODE_MANY_NS = msgspec.json.Decoder(list[tuple[int, _Message]], strict=False)
_DECODE_ANY = msgspec.json.Decoder()


@contextmanager
def _no_gc():
    """Decoding a chunk allocates ~1e5 objects that cannot form cycles; pausing the cyclic GC
    meanwhile saves its repeated scans (large for one huge decode, small for 4 MB chunks)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _split_prefix(line: bytes) -> tuple[int | None, bytes]:
    """(receive time in µs or None, json bytes) of one line."""
    if line[:1] in (b"{", b"["):
        return None, line
    m = _PREFIX_NS.match(line)
    if m:
        return int(m.group(1)) // 1000, line[m.end() :]
    m = _PREFIX_S.match(line)
    if m:
        return round(float(m.group(1)) * 1e6), line[m.end() :]
    return None, line


def decode_lines(
    lines: list[bytes],
    source: str,
    first_offset: int,
    recv_time_us: int | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    event: str = "trade",
) -> SourceBatch:
    """Decode one chunk of lines (without newlines). Blank lines are skipped, not counted,
    but keep their place: record offsets are ``first_offset`` + line index.

    ``recv_time_us`` stamps every record (live sockets); a recorder prefix on a line wins.
    ``event="aggTrade"`` takes aggregate trades (id ``a``) as the trades, and plain trades
    as ignored messages.
    """
    msgs: list[_Message | None] | None = None
    recv: list[int | None] | None = None
    if lines and max(map(len, lines)) <= max_line_bytes:
        msgs, recv = _decode_fast(lines)
    if msgs is None:
        return _decode_slow(lines, source, first_offset, recv_time_us, max_line_bytes, event)
    return _assemble(lines, msgs, recv, source, first_offset, recv_time_us, [], event)


def _decode_fast(lines: list[bytes]):
    first = lines[0][:1]
    try:
        with _no_gc():
            if first == b"{":
                return _DECODE_MANY.decode(b"[" + b",".join(lines) + b"]"), None
            if _PREFIX_NS.match(lines[0]):
                body = _PREFIX_NS_ALL.sub(rb"[\1,", b"\n".join(lines))
                pairs = _DECODE_MANY_NS.decode(b"[" + body.replace(b"\n", b"],") + b"]]")
                return [p[1] for p in pairs], [p[0] // 1000 for p in pairs]
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None, None  # (nesting deeper than msgspec's limit: judged line by line)
    return None, None


_PREFIX_NS_ALL = re.compile(rb"(?m)^(\d{12,20}) ")


def _decode_slow(lines, source, first_offset, recv_time_us, max_line_bytes,
                 event: str = "trade") -> SourceBatch:
    msgs: list[_Message | None] = []
    recv: list[int | None] = []
    rejects: list[Rejected] = []
    for i, line in enumerate(lines):
        off = first_offset + i
        if not line.strip() or line.startswith((b"wss://", b"ws://")):
            # blank, or a recorder's connection header (cryptofeed): not a message
            msgs.append(None)
            recv.append(None)
            continue
        if len(line) > max_line_bytes:
            rejects.append(_reject(source, off, RejectReason.OVERSIZE,
                                   f"line of {len(line)} bytes > limit {max_line_bytes}", line))
            msgs.append(None)
            recv.append(None)
            continue
        rt, body = _split_prefix(line)
        try:
            msgs.append(_DECODE_ONE.decode(body))
            recv.append(rt)
            continue
        except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
            reason, detail = _classify_invalid(body, exc, event)
        except msgspec.DecodeError as exc:
            reason, detail = RejectReason.DECODE_ERROR, str(exc)
        except RecursionError:
            reason, detail = RejectReason.DECODE_ERROR, "JSON nested too deeply"
        if reason is None:  # valid JSON, not a trade (e.g. a list, or a REST snapshot)
            msgs.append(_Message())
            recv.append(rt)
            continue
        rejects.append(_reject(source, off, reason, detail, line, symbol_of(body)))
        msgs.append(None)
        recv.append(None)
    return _assemble(lines, msgs, recv, source, first_offset, recv_time_us, rejects, event)


def _classify_invalid(body: bytes, exc: Exception, event: str = "trade"):
    """A line that is JSON but does not fit the message shape: bad type, or not a trade."""
    try:
        obj = _DECODE_ANY.decode(body)
    except msgspec.DecodeError as e2:  # pragma: no cover - decoded once already
        return RejectReason.DECODE_ERROR, str(e2)
    except RecursionError:  # valid JSON nested deeper than msgspec decodes
        return RejectReason.DECODE_ERROR, "JSON nested too deeply"
    payload = obj.get("data", obj) if isinstance(obj, dict) else None
    if not isinstance(payload, dict) or payload.get("e") != event:
        return None, ""
    return RejectReason.BAD_TYPE, str(exc)


def symbol_of(body: bytes) -> str:
    """The symbol a broken line names, if it names one plainly (for counting its reject)."""
    m = re.search(rb'"s"\s*:\s*"([A-Z0-9]{2,20})"', body[:4096])
    return m.group(1).decode() if m else ""


def _reject(source, off, reason, detail, line: bytes, symbol: str = "") -> Rejected:
    raw = line[:RAW_KEEP_BYTES].decode("utf-8", "replace")
    if len(line) > RAW_KEEP_BYTES:
        detail = f"{detail} (raw truncated to {RAW_KEEP_BYTES} of {len(line)} bytes)".strip()
    return Rejected(source, off, symbol, reason, detail[:500], raw)


_GET = {name: attrgetter(name)
        for name in ("data", "e", "s", "t", "a", "p", "q", "T", "m", "E", "stream")}


def _assemble(lines, msgs, recv, source, first_offset, recv_time_us, rejects,
              event: str = "trade") -> SourceBatch:
    ignored: dict[str, int] = {}
    # Normalise to payloads: combined-stream messages carry theirs in ``data``.
    datas = list(map(_GET["data"], msgs)) if None not in msgs else None
    if datas is not None and None not in datas:
        payloads = datas
    else:
        payloads = [None if m is None else (m.data if m.data is not None else m) for m in msgs]
    kinds = [None if d is None else d.e for d in payloads] if None in payloads \
        else list(map(_GET["e"], payloads))
    if kinds.count(event) == len(kinds):
        keep = None
    else:
        keep = [i for i, k in enumerate(kinds) if k == event]
        for i, k in enumerate(kinds):
            if k != event and msgs[i] is not None:
                m, d = msgs[i], payloads[i]
                sym = d.s or (m.stream.split("@", 1)[0].upper() if m.stream else "")
                ignored[sym] = ignored.get(sym, 0) + 1
        payloads = [payloads[i] for i in keep]
    n = len(payloads)
    if n == 0:
        return SourceBatch(TradeBatch.empty(source), rejects, ignored)
    status = np.zeros(n, np.uint8)
    missing = REASON_INDEX[RejectReason.MISSING_FIELD]
    id_key = "a" if event == "aggTrade" else "t"
    col = {k: list(map(_GET[k], payloads)) for k in ("s", id_key, "p", "q", "T", "m", "E")}
    if id_key == "a":
        col["t"] = [_raw_int(v) for v in col["a"]]
    symbols = col["s"]
    if None in symbols:
        status[[i for i, v in enumerate(symbols) if v is None]] = missing
    first = symbols[0]
    uniform = first is not None and symbols.count(first) == n
    symbol = first if uniform else np.array(symbols, dtype=object)
    trade_id = _ints(col["t"], status, missing)
    t_ms = _ms_times(_ints(col["T"], status, missing), status)
    price = _floats(col["p"], status, missing)
    qty = _floats(col["q"], status, missing)
    mk = col["m"]
    if None in mk:
        status[[i for i, v in enumerate(mk) if v is None]] = missing
        mk = [bool(v) for v in mk]
    e_ms = col["E"]
    if None in e_ms:  # no event time: NO_TIME (the field is optional)
        has_e = np.array([v is not None for v in e_ms])
        e_status = np.zeros(n, np.uint8)
        e_ms = _ms_times(_ints(e_ms, e_status, 0), e_status)
        bad_e = e_status != 0  # present but not a time: bad_type, like a missing_field
        status[bad_e & (status == 0)] = REASON_INDEX[RejectReason.BAD_TYPE]
        event = np.where(has_e & ~bad_e, e_ms * US_PER_MS, NO_TIME)
    else:
        event = _ms_times(_ints(e_ms, status, missing), status) * US_PER_MS
    if recv is not None:
        r = recv if keep is None else [recv[i] for i in keep]
        recv_arr = np.array([NO_TIME if v is None else v for v in r], np.int64) if None in r \
            else np.array(r, np.int64)
    elif recv_time_us is not None:
        recv_arr = np.full(n, recv_time_us, np.int64)
    else:
        recv_arr = np.full(n, NO_TIME, np.int64)
    idx = np.arange(len(msgs), dtype=np.int64) if keep is None else np.array(keep, np.int64)
    batch = TradeBatch(
        source=source,
        symbol=symbol,
        trade_id=trade_id,
        price=price,
        qty=qty,
        trade_time_us=t_ms * US_PER_MS,
        event_time_us=event,
        recv_time_us=recv_arr,
        is_buyer_maker=np.array(mk, np.bool_),
        offset=idx + first_offset,
        status=status,
        raw=lines if keep is None else [lines[i] for i in keep],
    )
    return SourceBatch(batch, rejects, ignored)


def _raw_int(v: Any) -> int | None:
    return v if type(v) is int else None


def _ints(values: list, status: np.ndarray, code: int) -> np.ndarray:
    if None in values:
        status[[i for i, v in enumerate(values) if v is None]] = code
        values = [0 if v is None else v for v in values]
    try:
        return np.array(values, np.int64)
    except OverflowError:
        big = [i for i, v in enumerate(values) if not -(2**63) <= v < 2**63]
        status[big] = REASON_INDEX[RejectReason.BAD_TYPE]
        return np.array([0 if not -(2**63) <= v < 2**63 else v for v in values], np.int64)


#: largest time in ms whose value in µs fits in int64
MAX_MS = (2**63 - 1) // US_PER_MS


def _ms_times(ms: np.ndarray, status: np.ndarray) -> np.ndarray:
    """``ms`` with times that would overflow in µs set to 0 and marked ``bad_type``."""
    big = (ms > MAX_MS) | (ms < -MAX_MS)
    if big.any():
        status[big & (status == 0)] = REASON_INDEX[RejectReason.BAD_TYPE]
        ms = np.where(big, 0, ms)
    return ms


def _floats(values: list, status: np.ndarray, code: int) -> np.ndarray:
    if None in values:
        status[[i for i, v in enumerate(values) if v is None]] = code
        values = [math.nan if v is None else v for v in values]
    return np.array(values, np.float64)
