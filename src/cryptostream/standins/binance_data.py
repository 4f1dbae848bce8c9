"""Load trade recordings for the Binance stand-in and shape them the way Binance serves them.

Each recording is given as ``PATH`` or ``SYMBOL=PATH``; plain or gzip files (official CSVs
also as ``.zip``):

* WebSocket JSON lines: raw payloads ``{"e":"trade",...}`` or combined-stream messages
  ``{"stream":...,"data":{...}}``, optionally behind a receive-time prefix (``<ns> {...}``
  as hftbacktest writes, ``<epoch>: {...}``). Only ``e == "trade"`` events are kept; the
  symbol comes from ``s`` (with ``SYMBOL=``, other symbols' trades are left out) and the
  recorded payload bytes are kept to be sent again verbatim.
* Official data.binance.vision trade CSVs ``id,price,qty,quoteQty,time,isBuyerMaker,
  isBestMatch`` (a header line is skipped; times in ms, or in µs from 2025 on, floored to
  ms; event time = trade time). The symbol comes from the file name
  ``SYMBOL-trades-YYYY-MM...`` or from ``SYMBOL=``. Rows that do not parse are skipped.

Price and quantity strings are never reformatted. Per symbol the trades are sorted by id; a
trade id seen twice (the same trades in two recordings) keeps the first one loaded. A trade
is *released* (has happened) once the replay clock reaches the running maximum of the trade
times in id order, which is its own time in any exchange recording (times never decrease
with ids); this keeps "what has happened" a prefix of the id order. Aggregate trades are
derived by grouping consecutive trades (in id order) with the same time, price string and
``m`` flag, numbered from :data:`AGG_ID_BASE`.
"""

from __future__ import annotations

import gzip
import itertools
import re
import zipfile
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from pathlib import Path

import msgspec

from cryptostream.errors import SourceError

#: Id of the first aggregate trade of every symbol.
AGG_ID_BASE = 1_000_000
#: A CSV time at or above this is in microseconds (1e14 ms would be the year 5138).
_US_THRESHOLD = 10**14
_OFFICIAL_NAME = re.compile(r"^([A-Z0-9]{2,20})-trades-\d{4}-\d{2}")
_SYMBOL = re.compile(r"^[A-Z0-9]{2,20}$")
#: Exact arithmetic for sums and products of recorded decimals (never rounds in practice).
_EXACT = Context(prec=100)


class Trade(msgspec.Struct, frozen=True, gc=False):
    """One recorded trade; ``raw`` is the recorded JSON payload (None for CSV rows)."""

    id: int
    price: str
    qty: str
    time: int  #: trade time T, ms
    event_time: int  #: event time E, ms
    buyer_maker: bool
    best_match: bool
    raw: str | None = None


class AggTrade(msgspec.Struct, frozen=True, gc=False):
    """An aggregate of the trades ``first``..``last`` (indexes in the symbol's trade list)."""

    id: int
    price: str
    qty: str
    first_id: int
    last_id: int
    time: int
    event_time: int
    buyer_maker: bool
    best_match: bool
    first: int
    last: int


class _Envelope(msgspec.Struct):
    data: msgspec.Raw = msgspec.Raw()
    e: str | None = None


class _WsTrade(msgspec.Struct):
    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool = True


@dataclass(frozen=True, slots=True)
class Recording:
    """One recording to load and the symbol it is restricted to (None: from the data)."""

    path: Path
    symbol: str | None

    @classmethod
    def parse(cls, spec: str | Path) -> Recording:
        """``SYMBOL=PATH`` or ``PATH`` (official CSV names carry the symbol).

        >>> Recording.parse("ETHUSDT=/data/eth.jsonl").symbol
        'ETHUSDT'
        >>> Recording.parse("/data/BTCUSDT-trades-2024-08-08.csv").symbol
        'BTCUSDT'
        >>> Recording.parse("/data/btcusdt.jsonl").symbol is None
        True
        """
        text = str(spec)
        head, sep, tail = text.partition("=")
        if sep and _SYMBOL.match(head):
            return cls(Path(tail), head)
        m = _OFFICIAL_NAME.match(Path(text).name)
        return cls(Path(text), m.group(1) if m else None)


class SymbolData:
    """A symbol's trades (sorted by id) and aggregate trades, with release times."""

    def __init__(self, symbol: str, trades: list[Trade]):
        self.symbol = symbol
        self.trades = trades
        self.ids = [t.id for t in trades]
        self.release = list(itertools.accumulate((t.time for t in trades), max))
        self.aggs, self.agg_of = derive_aggs(trades)
        self.agg_release = [self.release[a.last] for a in self.aggs]
        self.agg_times = [a.time for a in self.aggs]
        self.trade_stream = f"{symbol.lower()}@trade"
        self.agg_stream = f"{symbol.lower()}@aggTrade"

    def happened(self, clock: int | None) -> int:
        """How many trades (a prefix in id order) have happened at ``clock`` (ms)."""
        return 0 if clock is None else bisect_right(self.release, clock)

    def aggs_happened(self, clock: int | None) -> int:
        """How many aggregate trades have happened at ``clock`` (ms)."""
        return 0 if clock is None else bisect_right(self.agg_release, clock)


# -- loading --------------------------------------------------------------------------------
def load_recordings(specs: Iterable[str | Path]) -> dict[str, SymbolData]:
    """Load every recording; the symbols in name order. Raises SourceError when unusable."""
    if isinstance(specs, (str, Path)):
        specs = [specs]  # one path, not a sequence of characters
    recordings = [Recording.parse(s) for s in specs]
    if not recordings:
        raise SourceError("fake-binance needs at least one recording: --recording [SYMBOL=]FILE")
    by_symbol: dict[str, dict[int, Trade]] = {}
    for rec in recordings:
        for symbol, trade in _load_one(rec):
            by_symbol.setdefault(symbol, {}).setdefault(trade.id, trade)
    if not by_symbol:
        names = ", ".join(str(r.path) for r in recordings)
        raise SourceError(
            f"no trades in {names}: fake-binance replays trade events (e == 'trade') of "
            "WebSocket recordings and official trade CSVs; pass such a --recording"
        )
    return {
        sym: SymbolData(sym, sorted(trades.values(), key=lambda t: t.id))
        for sym, trades in sorted(by_symbol.items())
    }


def _load_one(rec: Recording) -> Iterator[tuple[str, Trade]]:
    if not rec.path.is_file():
        raise SourceError(f"{rec.path}: no such file; check the --recording path")
    data = _read_bytes(rec.path)
    if _is_csv(rec.path, data):
        if rec.symbol is None:
            raise SourceError(
                f"{rec.path}: cannot tell the symbol of a trade CSV; "
                f"write --recording SYMBOL={rec.path}"
            )
        yield from ((rec.symbol, t) for t in _csv_trades(data))
    else:
        yield from _ws_trades(data, rec.symbol)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.lower().endswith(".csv")]
                if not names:
                    raise SourceError(f"{path}: the archive holds no .csv file")
                return zf.read(names[0])
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic == b"\x1f\x8b":
            with gzip.open(path, "rb") as gz:
                return gz.read()
        return path.read_bytes()
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise SourceError(f"{path}: cannot read ({exc}); check the --recording file") from exc


def _is_csv(path: Path, data: bytes) -> bool:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz", ".zip")):
        return True
    for line in data[:65536].splitlines():
        if line.strip():
            first = line.strip()
            return first[:1].isdigit() and b"," in first and b"{" not in first
    return False


def _csv_trades(data: bytes) -> Iterator[Trade]:
    for line in data.splitlines():
        f = line.strip().split(b",")
        if len(f) < 6 or not f[0].isdigit():
            continue  # header, blank or broken row
        try:
            tid, t = int(f[0]), int(f[4])
        except ValueError:
            continue
        if t >= _US_THRESHOLD:
            t //= 1000
        best = f[6].strip().lower() not in (b"false", b"0") if len(f) > 6 else True
        yield Trade(tid, f[1].strip().decode(), f[2].strip().decode(), t, t,
                    f[5].strip().lower() in (b"true", b"1"), best)


def _ws_trades(data: bytes, only: str | None) -> Iterator[tuple[str, Trade]]:
    envelope = msgspec.json.Decoder(_Envelope)
    trade = msgspec.json.Decoder(_WsTrade)
    for line in data.splitlines():
        if b'"trade"' not in line:
            continue  # fast path: depth, bookTicker, aggTrade... never hold that token
        start = line.find(b"{")
        if start < 0:
            continue
        body = line[start:].rstrip()
        try:
            env = envelope.decode(body)
            payload = bytes(env.data) if len(env.data) else body
            msg = trade.decode(payload)
        except msgspec.DecodeError:
            continue
        if msg.e != "trade" or (only is not None and msg.s != only):
            continue
        yield msg.s, Trade(msg.t, msg.p, msg.q, msg.T, msg.E, msg.m, msg.M, payload.decode())


# -- aggregates and numbers -------------------------------------------------------------------
def derive_aggs(trades: Sequence[Trade], base: int = AGG_ID_BASE) -> tuple[list[AggTrade], list[int]]:
    """Group consecutive trades with equal time, price string and ``m`` flag.

    Returns the aggregates and, per trade, the index of its aggregate.
    """
    aggs: list[AggTrade] = []
    agg_of: list[int] = []
    i, n = 0, len(trades)
    while i < n:
        t0 = trades[i]
        j = i + 1
        while (j < n and trades[j].time == t0.time and trades[j].price == t0.price
               and trades[j].buyer_maker == t0.buyer_maker):
            j += 1
        last = trades[j - 1]
        qty = t0.qty if j - i == 1 else sum_decimals([t.qty for t in trades[i:j]])
        agg_of.extend([len(aggs)] * (j - i))
        aggs.append(AggTrade(base + len(aggs), t0.price, qty, t0.id, last.id, t0.time,
                             last.event_time, t0.buyer_maker, t0.best_match, i, j - 1))
        i = j
    return aggs, agg_of


def decimals(number: str) -> int:
    """Digits after the decimal point of a plain decimal string.

    >>> decimals("0.02000000"), decimals("12"), decimals("1.5e-3")
    (8, 0, 4)
    """
    if "e" in number or "E" in number:
        exp = Decimal(number).as_tuple().exponent
        return max(0, -exp) if isinstance(exp, int) else 0
    dot = number.find(".")
    return 0 if dot < 0 else len(number) - dot - 1


def sum_decimals(values: Sequence[str]) -> str:
    """Exact sum, written with as many decimals as the most precise value.

    >>> sum_decimals(["0.00100000", "0.02000000", "1.50000000"])
    '1.52100000'
    """
    total = Decimal(0)
    for v in values:
        total = _EXACT.add(total, Decimal(v))
    return f"{total:.{max(decimals(v) for v in values)}f}"


def quote_qty(price: str, qty: str) -> str:
    """Exact ``price * qty``, with the inputs' precision when that loses nothing.

    >>> quote_qty("61837.63000000", "0.00009000")
    '5.56538670'
    >>> quote_qty("0.123", "0.1")
    '0.0123'
    """
    try:
        product = _EXACT.multiply(Decimal(price), Decimal(qty))
    except InvalidOperation:
        return "0"
    places = max(decimals(price), decimals(qty))
    if product == product.quantize(Decimal(1).scaleb(-places), context=_EXACT):
        return f"{product:.{places}f}"
    return f"{product.normalize():f}"


def _json_bool(value: bool) -> str:
    return "true" if value else "false"


def trade_event(symbol: str, t: Trade, shift: int = 0, verbatim: bool = True) -> str:
    """The ``<symbol>@trade`` payload: the recorded bytes when ``verbatim`` and known."""
    if verbatim and t.raw is not None:
        return t.raw
    return (f'{{"e":"trade","E":{t.event_time + shift},"s":"{symbol}","t":{t.id},'
            f'"p":"{t.price}","q":"{t.qty}","T":{t.time + shift},'
            f'"m":{_json_bool(t.buyer_maker)},"M":{_json_bool(t.best_match)}}}')


def agg_event(symbol: str, a: AggTrade, shift: int = 0) -> str:
    """The ``<symbol>@aggTrade`` payload."""
    return (f'{{"e":"aggTrade","E":{a.event_time + shift},"s":"{symbol}","a":{a.id},'
            f'"p":"{a.price}","q":"{a.qty}","f":{a.first_id},"l":{a.last_id},'
            f'"T":{a.time + shift},"m":{_json_bool(a.buyer_maker)},'
            f'"M":{_json_bool(a.best_match)}}}')


def rest_trade(t: Trade, shift: int = 0) -> dict:
    """One element of ``/api/v3/trades`` and ``/api/v3/historicalTrades``."""
    return {"id": t.id, "price": t.price, "qty": t.qty, "quoteQty": quote_qty(t.price, t.qty),
            "time": t.time + shift, "isBuyerMaker": t.buyer_maker, "isBestMatch": t.best_match}


def rest_agg(a: AggTrade, shift: int = 0) -> dict:
    """One element of ``/api/v3/aggTrades``."""
    return {"a": a.id, "p": a.price, "q": a.qty, "f": a.first_id, "l": a.last_id,
            "T": a.time + shift, "m": a.buyer_maker, "M": a.best_match}
