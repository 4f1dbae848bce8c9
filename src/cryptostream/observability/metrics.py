"""Prometheus metrics of one process, read from the pipelines' own state at scrape time.

Nothing here runs per trade. Counters come from the processors' ``SymbolCounters`` when
Prometheus scrapes (a custom collector); the end-to-end latency histogram is filled once
per sink write with numpy (bucket counts of the whole batch); batch and flush times are
observed once per batch / write. Every metric lives in the ``CollectorRegistry`` of one
``PipelineTelemetry`` (no global state). Symbol labels are bounded: the configured symbols,
then at most ``MAX_EXTRA_SYMBOLS`` more (replayed files, Kafka ``process``), the rest
``other``.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import HistogramMetricFamily

from cryptostream.model import SYMBOL_RE
from cryptostream.observability.collector import StateCollector
from cryptostream.observability.hooks import Telemetry

log = logging.getLogger("cryptostream.observability")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0)
BATCH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1.0, 2.5)
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0)
MAX_EXTRA_SYMBOLS = 64
OTHER = "other"
GAPS_LOGGED_PER_WRITE = 50


class SymbolLabels:
    """Symbol -> label value: configured symbols as they are, up to ``extra`` others that
    look like symbols (first come), then ``other``.

    >>> lab = SymbolLabels(["BTCUSDT"], extra=1)
    >>> [lab(s) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "", "ETHUSDT")]
    ['BTCUSDT', 'ETHUSDT', 'other', 'other', 'ETHUSDT']
    """

    def __init__(self, configured: Iterable[str] = (), extra: int = MAX_EXTRA_SYMBOLS):
        self.configured = frozenset(configured)
        self._extra: set[str] = set()
        self._room = extra
        self._lock = threading.Lock()

    def __call__(self, symbol: str) -> str:
        if symbol in self.configured or symbol in self._extra:
            return symbol
        with self._lock:
            if len(self._extra) < self._room and isinstance(symbol, str) and SYMBOL_RE.match(symbol):
                self._extra.add(symbol)
                return symbol
        return OTHER


class BucketHistogram:
    """A labelled histogram fed whole arrays (numpy ``searchsorted`` + ``bincount``).

    >>> h = BucketHistogram("x_seconds", "x", (0.1, 1.0), ("symbol",))
    >>> h.observe_many(np.array([0.05, 0.1, 0.5, 7.0]), ("BTCUSDT",))
    >>> fam = h.family(); [(s.labels.get("le"), s.value) for s in fam.samples[:3]]
    [('0.1', 2.0), ('1.0', 3.0), ('+Inf', 4.0)]
    """

    def __init__(self, name: str, doc: str, bounds: tuple[float, ...],
                 labelnames: tuple[str, ...] = ()):
        self.name, self.doc, self.labelnames = name, doc, labelnames
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self._bounds = tuple(bounds)
        self._counts: dict[tuple, np.ndarray] = {}
        self._sums: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def _slot(self, labels: tuple) -> np.ndarray:
        c = self._counts.get(labels)
        if c is None:
            c = self._counts[labels] = np.zeros(len(self._bounds) + 1, np.int64)
            self._sums[labels] = 0.0
        return c

    def observe_many(self, values: np.ndarray, labels: tuple = ()) -> None:
        if not len(values):
            return
        idx = np.searchsorted(self.bounds, values, side="left")  # le is inclusive
        add = np.bincount(idx, minlength=len(self._bounds) + 1)
        total = float(values.sum())
        with self._lock:
            self._slot(labels)[:] += add
            self._sums[labels] += total

    def observe(self, value: float, labels: tuple = ()) -> None:
        i = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._slot(labels)[i] += 1
            self._sums[labels] += value

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.doc, labels=list(self.labelnames))
        with self._lock:
            items = [(k, v.copy(), self._sums[k]) for k, v in self._counts.items()]
        for labels, counts, total in sorted(items):
            cum = np.cumsum(counts).tolist()
            buckets = [(repr(float(b)), float(n)) for b, n in zip(self._bounds, cum)]
            buckets.append(("+Inf", float(cum[-1])))
            fam.add_metric(list(labels), buckets, sum_value=total)
        return fam


class InstrumentedSink:
    """Writes through to ``sink``; times each write, feeds the latency histogram and the
    windows counter from what was stored, logs each new gap once and a failed write once."""

    def __init__(self, sink, telemetry: PipelineTelemetry):
        self._sink = sink
        self._t = telemetry

    def __getattr__(self, name):
        return getattr(self._sink, name)

    def open(self) -> None:
        self._sink.open()
        self._t.sink_open = True

    def close(self) -> None:
        self._t.sink_open = False
        self._sink.close()

    def write(self, output, stats, now_us: int = 0, **kw) -> None:
        t0 = time.perf_counter()
        try:
            self._sink.write(output, stats, now_us, **kw)
        except BaseException as exc:
            self._t.sink_failed(exc, output)
            raise
        self._t.sink_written(output, time.perf_counter() - t0)


class _Processing:
    """``with telemetry.processing():`` around one batch: timed, and under the counters lock."""

    __slots__ = ("t", "t0")

    def __init__(self, t: PipelineTelemetry):
        self.t = t

    def __enter__(self):
        self.t.counters_lock.acquire()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        seconds = time.perf_counter() - self.t0
        self.t.counters_lock.release()
        self.t.batch_time.observe(seconds)
        return False


class PipelineTelemetry(Telemetry):
    """The metrics (and health, see ``health.Health``) of the pipelines of one process."""

    def __init__(self, role: str, symbols: Iterable[str] = (), extra_symbols: int = MAX_EXTRA_SYMBOLS,
                 broker: str | None = None, stale_after_s: float = 30.0):
        from cryptostream.observability.health import Health

        self.role = role
        self.labels = SymbolLabels(symbols, extra_symbols)
        self.registry = CollectorRegistry()
        self.latency = BucketHistogram(
            "cryptostream_end_to_end_latency_seconds",
            "Trade time to stored in the sinks, per accepted trade", LATENCY_BUCKETS, ("symbol",))
        self.batch_time = BucketHistogram("cryptostream_batch_processing_seconds",
                                          "Processing time of one input batch", BATCH_BUCKETS)
        self.flush_time = BucketHistogram("cryptostream_sink_flush_seconds",
                                          "Time of one write to the sinks (all of them)",
                                          FLUSH_BUCKETS)
        self.pipelines: list = []
        self.tables: tuple[str, ...] = ()
        self.lag: dict[tuple[str, int], int] = {}
        self._windows: Counter = Counter()
        self._lock = threading.Lock()
        #: held while a batch is processed and while a scrape reads the counters, so that a
        #: scrape sees ``received == accepted + rejected + duplicates + ignored``
        self.counters_lock = threading.Lock()
        self._gaps_seen: OrderedDict = OrderedDict()
        self.started = time.monotonic()
        self.last_beat: float | None = None
        self.sink_open = False
        self.sink_error: str | None = None
        self.health = Health(self, broker=broker, stale_after_s=stale_after_s)
        self.server = None  # set by server.observe
        self.registry.register(StateCollector(self))
        ProcessCollector(registry=self.registry)

    # -- hooks ------------------------------------------------------------------------
    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def processing(self) -> _Processing:
        return _Processing(self)

    def wrap_sink(self, sink):
        return InstrumentedSink(sink, self)

    def watch(self, pipeline) -> None:
        self.pipelines.append(pipeline)
        s = getattr(pipeline, "s", None)
        if s is not None and not hasattr(pipeline, "cleaner"):
            self.tables = tuple(dict.fromkeys((*self.tables, *(w.table for w in s.window_specs()))))
        if hasattr(pipeline, "procs"):  # Kafka process: consumer lag after every flush
            previous = pipeline.on_progress

            def on_flush(p, _prev=previous):
                self.update_lag(p)
                if _prev is not None:
                    _prev(p)

            pipeline.on_progress = on_flush

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # -- called by the sink proxy (writer thread) -------------------------------------
    def sink_written(self, output, seconds: float) -> None:
        self.flush_time.observe(seconds)
        self.sink_error = None
        stored_us = time.time_ns() // 1000
        for a in output.trades:
            if len(a):
                lat = (stored_us - a.trade_time_us) * 1e-6
                self.latency.observe_many(lat, (self.labels(a.symbol),))
        if output.windows:
            counts = Counter()
            for table, rows in output.windows.items():
                for r in rows:
                    counts[(table, self.labels(r["symbol"]))] += 1
            with self._lock:
                self._windows.update(counts)
        if output.gaps:
            self._log_gaps(output.gaps)

    def sink_failed(self, exc: BaseException, output) -> None:
        from cryptostream.observability.logs import redact

        self.sink_error = redact(f"{type(exc).__name__}: {exc}")
        log.error("writing to the sinks failed: %s", self.sink_error, extra={
            "event": "flush_error", "role": self.role, "trades": sum(len(a) for a in output.trades),
            "windows": output.window_count, "rejects": len(output.rejects)})

    def _log_gaps(self, gaps) -> None:
        new = []
        for g in gaps:
            key = (g.symbol, g.from_id)
            if not getattr(g, "published", True) or key in self._gaps_seen:
                continue
            self._gaps_seen[key] = True
            if len(self._gaps_seen) > 100_000:
                self._gaps_seen.popitem(last=False)
            new.append(g)
        for g in new[:GAPS_LOGGED_PER_WRITE]:
            log.warning("gap in %s: trade ids %d..%d missing (%d)", g.symbol, g.from_id, g.to_id,
                        g.count, extra={"event": "gap", "symbol": g.symbol, "from_id": g.from_id,
                                        "to_id": g.to_id, "missing": g.count})
        if len(new) > GAPS_LOGGED_PER_WRITE:
            log.warning("%d more gaps in this write (not logged one by one)",
                        len(new) - GAPS_LOGGED_PER_WRITE,
                        extra={"event": "gap", "more": len(new) - GAPS_LOGGED_PER_WRITE})

    # -- Kafka process: lag, in the pipeline's thread -----------------------------------
    def update_lag(self, pipe) -> None:
        consumer = getattr(pipe, "_consumer", None)
        if consumer is None:
            return
        from confluent_kafka import TopicPartition

        lag = {}
        for (topic, part), nxt in list(pipe.offsets.items()):
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, part), cached=True)
            except Exception:  # noqa: BLE001 - a closing consumer: keep the last values
                return
            if high is not None and high >= 0:
                lag[(topic, part)] = max(0, high - nxt)
        self.lag = lag

    # -- what the collector reads -----------------------------------------------------
    def windows_emitted(self) -> dict:
        with self._lock:
            return dict(self._windows)
