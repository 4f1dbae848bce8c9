"""The types every stage shares: trade batches, rejects, window specs and the stored contract.

Trades travel between stages as *columnar batches* (numpy arrays, one per field), never as
one Python object per trade: that is what lets the engine clean and aggregate at millions of
trades per second. Times are integers in microseconds since the Unix epoch (``_us``), so
millisecond (pre-2025) and microsecond (2025+) Binance files share one representation.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

import numpy as np

#: Marker for an absent integer time (receive time of a CSV trade, event time of a CSV row).
NO_TIME = np.iinfo(np.int64).min

SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")

US_PER_MS = 1_000
US_PER_S = 1_000_000


class RejectReason(enum.StrEnum):
    """Stable reason codes stored in ``rejects.reason``; never renamed, only added to."""

    DECODE_ERROR = "decode_error"  # not parseable as JSON / CSV
    OVERSIZE = "oversize"  # one line longer than the configured limit
    MISSING_FIELD = "missing_field"  # a required trade field is absent
    BAD_TYPE = "bad_type"  # a field is present but not convertible
    NON_FINITE = "non_finite"  # NaN or infinite price/quantity
    NON_POSITIVE_PRICE = "non_positive_price"
    NON_POSITIVE_QTY = "non_positive_qty"
    BAD_SYMBOL = "bad_symbol"  # symbol does not match ^[A-Z0-9]{2,20}$
    CLOCK_SKEW = "clock_skew"  # trade time too far from receive time
    LATE = "late"  # the trade's window was already final


#: Codes in a uint8 column: 0 means "valid so far".
REASON_CODES: tuple[RejectReason | None, ...] = (None, *RejectReason)
REASON_INDEX: dict[RejectReason, int] = {r: i for i, r in enumerate(REASON_CODES) if r}


class RawLines:
    r"""The original lines of a chunk, sliced on demand (no per-record bytes objects).

    >>> r = RawLines(b"ab\ncd", np.array([0, 3]), np.array([2, 5]))
    >>> r[1], r.take(np.array([1]))[0], len(r)
    (b'cd', b'cd', 2)
    """

    __slots__ = ("buf", "ends", "starts")

    def __init__(self, buf: bytes, starts: np.ndarray, ends: np.ndarray):
        self.buf, self.starts, self.ends = buf, starts, ends

    def __getitem__(self, i: int) -> bytes:
        line = self.buf[self.starts[i] : self.ends[i]]
        return line[:-1] if line.endswith(b"\r") else line

    def __len__(self) -> int:
        return len(self.starts)

    def take(self, idx: np.ndarray) -> RawLines:
        return RawLines(self.buf, self.starts[idx], self.ends[idx])


class SymbolCodes:
    """A symbol column as small integer codes into ``names`` (what a columnar decoder has).

    >>> s = SymbolCodes(np.array([1, 0, 1], np.int32), ["BTCUSDT", "ETHUSDT"])
    >>> s[0], s[np.array([0, 2])].to_objects().tolist(), len(s)
    ('ETHUSDT', ['ETHUSDT', 'ETHUSDT'], 3)
    """

    __slots__ = ("codes", "names")

    def __init__(self, codes: np.ndarray, names: list[str]):
        self.codes, self.names = codes, names

    def __getitem__(self, idx):
        if isinstance(idx, np.ndarray):
            return SymbolCodes(self.codes[idx], self.names)
        return self.names[self.codes[idx]]

    def __len__(self) -> int:
        return len(self.codes)

    def to_objects(self) -> np.ndarray:
        return np.array(self.names, dtype=object)[self.codes]


@dataclass(slots=True)
class TradeBatch:
    """Decoded trade records of one source, column by column, in arrival order.

    ``status`` holds a reason index (see ``REASON_INDEX``) for records the decoder already
    knows are bad (missing or unconvertible fields); 0 for the rest. ``raw`` keeps the
    original payload of each record so that a reject can store it.
    """

    source: str
    symbol: np.ndarray | SymbolCodes | str  # per record, or one str for the whole batch
    trade_id: np.ndarray  # int64
    price: np.ndarray  # float64
    qty: np.ndarray  # float64
    trade_time_us: np.ndarray  # int64
    event_time_us: np.ndarray  # int64, NO_TIME when absent
    recv_time_us: np.ndarray  # int64, NO_TIME when absent
    is_buyer_maker: np.ndarray  # bool
    offset: np.ndarray  # int64: position of the record in its source (line number, sequence)
    status: np.ndarray  # uint8 reason index, 0 = not rejected by the decoder
    raw: list[bytes] | RawLines | None = None  # one payload per record, when kept
    #: price-spike flags already computed upstream (the Kafka ``ingest`` role); None: compute
    is_price_spike: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.trade_id)

    def take(self, idx: np.ndarray) -> TradeBatch:
        """A new batch holding the records at ``idx`` (indices or boolean mask)."""
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)
        if isinstance(self.raw, RawLines):
            raw: list[bytes] | RawLines | None = self.raw.take(idx)
        else:
            raw = [self.raw[i] for i in idx.tolist()] if self.raw is not None else None
        return TradeBatch(
            self.source,
            self.symbol if isinstance(self.symbol, str) else self.symbol[idx],
            self.trade_id[idx],
            self.price[idx],
            self.qty[idx],
            self.trade_time_us[idx],
            self.event_time_us[idx],
            self.recv_time_us[idx],
            self.is_buyer_maker[idx],
            self.offset[idx],
            self.status[idx],
            raw,
            None if self.is_price_spike is None else self.is_price_spike[idx],
        )

    def symbol_at(self, i: int) -> object:
        return self.symbol if isinstance(self.symbol, str) else self.symbol[i]

    def raw_payload(self, i: int) -> str:
        """The original payload of record ``i`` (re-serialised when the source kept none)."""
        if self.raw is not None:
            return self.raw[i].decode("utf-8", "replace")
        return (
            f"{self.trade_id[i]},{self.price[i]!r},{self.qty[i]!r},"
            f"{self.trade_time_us[i]},{bool(self.is_buyer_maker[i])}"
        )

    @staticmethod
    def empty(source: str) -> TradeBatch:
        i64 = np.empty(0, np.int64)
        return TradeBatch(
            source, np.empty(0, object), i64, np.empty(0), np.empty(0), i64, i64, i64,
            np.empty(0, np.bool_), i64, np.empty(0, np.uint8), [],
        )


@dataclass(slots=True, frozen=True)
class Rejected:
    """A record the pipeline refused, kept with its stable reason and raw payload."""

    source: str
    source_offset: int
    symbol: str
    reason: RejectReason
    detail: str
    raw: str
    trade_id: int | None = None
    trade_time_us: int | None = None
    recv_time_us: int | None = None


@dataclass(slots=True)
class SourceBatch:
    """What a source hands to the processor: trades plus what the decoder already sorted out.

    ``ignored`` counts messages that are valid but not trades (bookTicker, depth, snapshots),
    per symbol ("" when the message names none). Every received message is in exactly one
    of ``trades``, ``rejects`` or ``ignored``.
    """

    trades: TradeBatch
    rejects: list[Rejected] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class WindowSpec:
    """An event-time window family: ``[start, start + size)`` every ``slide``, epoch aligned.

    >>> WindowSpec("agg_5m_1m", size_s=300, slide_s=60).is_tumbling
    False
    >>> WindowSpec.parse("agg_1m=60").slide_s
    60
    """

    table: str
    size_s: int
    slide_s: int

    def __post_init__(self) -> None:
        if self.size_s <= 0 or self.slide_s <= 0 or self.size_s % self.slide_s:
            raise ValueError(
                f"window {self.table}: size ({self.size_s}s) must be a positive multiple "
                f"of slide ({self.slide_s}s)"
            )
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", self.table):
            raise ValueError(f"window table name {self.table!r} must match [a-z][a-z0-9_]*")

    @property
    def is_tumbling(self) -> bool:
        return self.size_s == self.slide_s

    @property
    def size_us(self) -> int:
        return self.size_s * US_PER_S

    @property
    def slide_us(self) -> int:
        return self.slide_s * US_PER_S

    @classmethod
    def parse(cls, text: str) -> WindowSpec:
        """``TABLE=SIZE`` (tumbling) or ``TABLE=SIZE/SLIDE``, sizes in seconds."""
        table, _, spec = text.partition("=")
        size, _, slide = spec.partition("/")
        try:
            size_s = int(size)
            slide_s = int(slide) if slide else size_s
        except ValueError:
            raise ValueError(f"window spec {text!r}: expected TABLE=SIZE[/SLIDE] in seconds")
        return cls(table.strip(), size_s, slide_s)


DEFAULT_WINDOWS = (WindowSpec("agg_1m", 60, 60), WindowSpec("agg_5m_1m", 300, 60))

#: Columns of every aggregate table, in stored order (the external contract).
AGG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("symbol", "VARCHAR"),
    ("window_start", "TIMESTAMPTZ"),
    ("window_end", "TIMESTAMPTZ"),
    ("trade_count", "BIGINT"),
    ("open", "DOUBLE"),
    ("high", "DOUBLE"),
    ("low", "DOUBLE"),
    ("close", "DOUBLE"),
    ("volume", "DOUBLE"),
    ("quote_volume", "DOUBLE"),
    ("vwap", "DOUBLE"),
    ("avg_price", "DOUBLE"),
    ("price_stddev", "DOUBLE"),
    ("buy_volume", "DOUBLE"),
    ("sell_volume", "DOUBLE"),
    ("buy_sell_ratio", "DOUBLE"),
    ("trade_intensity", "DOUBLE"),
    ("spike_count", "BIGINT"),
    ("first_trade_id", "BIGINT"),
    ("last_trade_id", "BIGINT"),
    ("range_pct", "DOUBLE"),
    ("return_pct", "DOUBLE"),
    ("missing_trades", "BIGINT"),
    ("latency_avg_ms", "DOUBLE"),
    ("latency_p50_ms", "DOUBLE"),
    ("latency_p99_ms", "DOUBLE"),
    ("latency_max_ms", "DOUBLE"),
    ("recv_latency_avg_ms", "DOUBLE"),
    ("recv_latency_p50_ms", "DOUBLE"),
    ("recv_latency_p99_ms", "DOUBLE"),
    ("recv_latency_max_ms", "DOUBLE"),
    ("emitted_at", "TIMESTAMPTZ"),
    ("complete", "BOOLEAN"),  # missing_trades == 0 (added last: older stores get it by ALTER)
)

#: Columns of the ``trades`` table.
TRADE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("symbol", "VARCHAR"),
    ("trade_id", "BIGINT"),
    ("price", "DOUBLE"),
    ("qty", "DOUBLE"),
    ("quote_qty", "DOUBLE"),
    ("trade_time", "TIMESTAMPTZ"),
    ("is_buyer_maker", "BOOLEAN"),
    ("is_price_spike", "BOOLEAN"),
    ("event_time", "TIMESTAMPTZ"),
    ("recv_time", "TIMESTAMPTZ"),
    ("processed_at", "TIMESTAMPTZ"),
    ("latency_ms", "DOUBLE"),
    ("recv_latency_ms", "DOUBLE"),
    ("source", "VARCHAR"),
)

#: ``anomalies``: one row per (symbol, window_start, detector) once the detector is warm.
#: ``top_features`` is a JSON list of {"feature", "value"} (the largest |robust z| first).
ANOMALY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("symbol", "VARCHAR"),
    ("window_start", "TIMESTAMPTZ"),
    ("detector", "VARCHAR"),
    ("score", "DOUBLE"),
    ("threshold", "DOUBLE"),
    ("is_anomaly", "BOOLEAN"),
    ("model_version", "VARCHAR"),
    ("top_features", "VARCHAR"),
    ("scored_at", "TIMESTAMPTZ"),
)
ANOMALY_KEY = ("symbol", "window_start", "detector")

#: ``predictions``: the forecast of a window's VWAP and close, made when the window before
#: it (``base_window_start``, whose actual value is ``base_value``) closed.
PREDICTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("symbol", "VARCHAR"),
    ("target_window_start", "TIMESTAMPTZ"),
    ("model", "VARCHAR"),
    ("target", "VARCHAR"),  # 'vwap' or 'close'
    ("predicted", "DOUBLE"),
    ("base_window_start", "TIMESTAMPTZ"),
    ("base_value", "DOUBLE"),
    ("made_at", "TIMESTAMPTZ"),
    ("model_version", "VARCHAR"),
)
PREDICTION_KEY = ("symbol", "target_window_start", "model", "target")

#: ``prediction_errors``: a prediction scored when its target window closed.
PREDICTION_ERROR_COLUMNS: tuple[tuple[str, str], ...] = (
    ("symbol", "VARCHAR"),
    ("target_window_start", "TIMESTAMPTZ"),
    ("model", "VARCHAR"),
    ("target", "VARCHAR"),
    ("predicted", "DOUBLE"),
    ("actual", "DOUBLE"),
    ("error", "DOUBLE"),  # predicted - actual
    ("abs_error", "DOUBLE"),
    ("pct_error", "DOUBLE"),  # |error| / actual * 100
    ("direction_correct", "BOOLEAN"),  # sign(predicted - base) == sign(actual - base)
    ("model_version", "VARCHAR"),
    ("scored_at", "TIMESTAMPTZ"),
)

#: ``ml_status``: what each model is doing per symbol, for the dashboard ("warming up").
ML_STATUS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("symbol", "VARCHAR"),
    ("component", "VARCHAR"),  # a model or detector name
    ("kind", "VARCHAR"),  # 'forecaster' or 'detector'
    ("state", "VARCHAR"),  # 'warming_up', 'ready', 'failed'
    ("history", "BIGINT"),  # closed windows seen
    ("needed", "BIGINT"),  # windows needed before it predicts / flags
    ("model_version", "VARCHAR"),
    ("detail", "VARCHAR"),
    ("updated_at", "TIMESTAMPTZ"),
)
ML_STATUS_KEY = ("symbol", "component")

#: the ML tables: name -> (columns, primary key). Rows are upserted by key (a re-scored
#: window replaces its row, so a replay after a crash writes the same keys again).
ML_TABLES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "anomalies": (ANOMALY_COLUMNS, ANOMALY_KEY),
    "predictions": (PREDICTION_COLUMNS, PREDICTION_KEY),
    "prediction_errors": (PREDICTION_ERROR_COLUMNS, PREDICTION_KEY),
    "ml_status": (ML_STATUS_COLUMNS, ML_STATUS_KEY),
}
