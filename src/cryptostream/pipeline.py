"""Wires the embedded pipeline: source thread -> channel -> processor -> sinks (no domain logic).

The source runs in its own thread and feeds a bounded channel (backpressure); the calling
thread processes batches and writes to the sinks every ``flush_interval_s`` (live sources:
25 ms, so a trade is queryable within tens of milliseconds) or
``flush_max_trades`` trades, whichever comes first. A read-only query endpoint lets other
processes read the DuckDB file while this process owns it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptostream import shutdown
from cryptostream.config import Settings
from cryptostream.errors import ConfigError
from cryptostream.observability.hooks import NO_TELEMETRY, Telemetry
from cryptostream.processing.engine import EngineConfig, Output, Processor, SymbolCounters
from cryptostream.processing.state import continue_run, snapshot
from cryptostream.sinks.base import Checkpoint, stats_rows
from cryptostream.sinks.fanout import build_sinks
from cryptostream.sinks.lake import DEFAULT_SETTLE_US, ParquetLake
from cryptostream.sinks.writer import SinkWriter
from cryptostream.sources.base import NoTrades, Source
from cryptostream.transport.channel import InProcessChannel, feed

US = 1_000_000
HEARTBEAT_S = 1.0
#: how often a live loop holding unwritten output checks whether the writer became idle
EAGER_POLL_S = 0.002
#: how often a live loop with nothing arriving advances the quiet symbols' watermarks
QUIET_POLL_S = 0.05
ML_TABLE = "agg_1m"  # the ML stage scores the closed windows of this table
RETAIN_EVERY_S = 60  # how often trades past the retention are pruned
RESUME_GROUP = "embedded"  # consumer_checkpoints.group_id of the embedded pipeline's state

log = logging.getLogger("cryptostream.pipeline")


def now_us() -> int:
    return time.time_ns() // 1000


def build_source(s: Settings) -> Source:
    kind = s.trade_source
    if kind is None:
        return NoTrades(s.duration_s)
    if kind == "binance":
        from cryptostream.sources.binance import BinanceSource
        from cryptostream.sources.binance_stream import StreamOptions

        return BinanceSource(
            s.symbols, ws_url=s.binance_url, rest_url=s.rest_url, stream=s.binance_stream,
            duration_s=s.duration_s, buffer_messages=s.ws_buffer_messages,
            options=StreamOptions(stale_after_s=s.stale_after_s,
                                  max_connection_age_s=s.max_connection_age_s, seed=s.seed,
                                  max_frame_bytes=s.max_message_bytes),
        )
    if kind == "replay":
        from cryptostream.sources.replay import ReplayFile, ReplaySource

        if not s.replay:
            raise ConfigError("--source replay needs at least one --replay [SYMBOL=]PATH")
        return ReplaySource([ReplayFile.parse(r) for r in s.replay], speed=s.pace,
                            max_line_bytes=s.max_message_bytes)
    if kind == "simulate":
        from cryptostream.sources.simulator import SimulatorSource

        # An open-ended simulation plays "now", and so does one paced in real time by a
        # --rate; one with a duration is reproducible (fixed epoch).
        playing_now = s.duration_s is None or (s.sim_rate is not None and s.pace == 1.0)
        start = (now_us() // 1000) * 1000 if playing_now else None
        return SimulatorSource(
            s.symbols, seed=s.seed, duration_s=s.duration_s, speed=s.pace,
            trades_per_s=s.sim_trades_per_symbol, start_time_us=start,
            # unpaced: big batches (per-batch costs dominate small ones, see docs/benchmarks.md)
            batch_size=4096 if s.pace is not None else 65536,
        )
    raise ConfigError(f"unknown source {s.source!r}")


class ReferenceFeed:
    """Runs the CoinGecko poller in a thread; the main loop takes its ticks with ``drain``."""

    def __init__(self, s: Settings):
        from cryptostream.sources.coingecko import CoinGeckoPoller, assets_for

        assets = assets_for(s.symbols)
        if not assets:
            raise ConfigError(f"none of {', '.join(s.symbols)} has a known CoinGecko id")
        self.poller = CoinGeckoPoller(assets, base_url=s.coingecko_url,
                                      interval_s=s.coingecko_interval_s,
                                      api_key=os.environ.get("COINGECKO_API_KEY") or None,
                                      seed=s.seed)
        self._ticks: list = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="coingecko", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for ticks in self.poller.run(self._stop):
                with self._lock:
                    self._ticks.extend(ticks)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the pipeline's main loop
            self.error = exc

    def drain(self) -> list:
        if self.error is not None:
            raise self.error
        with self._lock:
            ticks, self._ticks = self._ticks, []
        return ticks

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self.poller.close()


def ml_stage(s: Settings):
    """The live ML stage when ML is on and an ``agg_1m`` (1-minute tumbling) table exists."""
    cfg = s.ml_config()
    if cfg is None or not any(w.table == ML_TABLE and w.size_s == 60 and w.is_tumbling
                              for w in s.window_specs()):
        return None
    from cryptostream.ml.live import MLStage

    return MLStage(cfg)


def score_windows(ml, out: Output, now: int) -> None:
    """Add the ML rows for the closed ``agg_1m`` windows of ``out`` (no-op without ML)."""
    rows = out.windows.get(ML_TABLE)
    if ml is not None and rows:
        for table, ml_rows in ml.on_windows(rows, now).items():
            out.ml.setdefault(table, []).extend(ml_rows)


def engine_config(s: Settings) -> EngineConfig:
    return EngineConfig(
        windows=s.window_specs(),
        allowed_lateness_us=s.allowed_lateness_us,
        max_clock_skew_us=int(s.max_clock_skew_s * US),
        spike_threshold=s.spike_threshold_pct / 100.0,
        max_open_gaps=s.max_open_gaps,
        gap_wait_us=int(s.backfill_wait_s * US) if s.trade_source == "binance" else 0,
    )


@dataclass
class RunSummary:
    run_id: str
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    ignored: int = 0
    windows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def trades_per_s(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0


class EmbeddedPipeline:
    """One process: source -> in-process channel -> processor -> DuckDB (+ Parquet lake)."""

    def __init__(self, settings: Settings, source: Source | None = None,
                 on_progress: Callable[[RunSummary, Source], None] | None = None,
                 telemetry: Telemetry | None = None):
        self.s = settings
        self.telemetry = telemetry or NO_TELEMETRY  # metrics hooks (observability/hooks.py)
        self.source = source or build_source(settings)
        self.processor = Processor(engine_config(settings))
        if not self.source.finite:  # live: every configured symbol shows up in the stats at once
            for sym in settings.symbols:
                self.processor.counters.setdefault(sym, SymbolCounters())
        self.sinks = self.telemetry.wrap_sink(build_sinks(
            settings.sinks, settings.db, settings.window_specs(), settings.duckdb_threads,
            duckdb_memory_mb=settings.duckdb_memory_mb))
        self.sink = self.sinks.duckdb  # the lake and the query endpoint need the DuckDB file
        self.lake = ParquetLake(settings.lake, settings.window_specs(),
                                settle_us=settings.allowed_lateness_us + DEFAULT_SETTLE_US) \
            if settings.lake and self.sink is not None else None
        self.channel = InProcessChannel(maxsize=settings.queue_batches)
        self.ml = ml_stage(settings)
        # a live run continues where the previous one over the same store stopped: its
        # processor state is checkpointed with every stats write (decision 18)
        self.resume_key = None if self.source.finite else f"embedded:{self.source.name}"
        self.resumed_from: dict[str, int] = {}
        self.reference = ReferenceFeed(settings) if settings.coingecko else None
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.summary = RunSummary(self.run_id)
        self.on_progress = on_progress
        self._stop = threading.Event()
        self._started_us = now_us()
        self._stats_written_us = 0
        self._pruned_us = 0

    # -- control ----------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the pipeline to stop: the source stops, queued batches are still processed."""
        self._stop.set()
        self.source.close()

    def _produce(self) -> None:
        feed(self.source, self.channel, self._stop)

    # -- main loop --------------------------------------------------------------------
    def run(self, install_signals: bool = True) -> RunSummary:
        from cryptostream.query import QueryServer

        s = self.s
        self.sinks.open()
        if self.lake:
            self.lake.open()
        self._resume()
        server = QueryServer(self.sink, Path(s.db), lake=s.lake) \
            if s.serve_queries and self.sink else None
        if server:
            server.start()
        old = self._install_signals() if install_signals else None
        writer = self.writer = SinkWriter(self.sinks, self.lake, s.lake_interval_s,
                                          lake_source=self.sink)
        t0 = time.monotonic()
        producer = threading.Thread(target=self._produce, name="source", daemon=True)
        producer.start()
        if self.reference:
            self.reference.start()
        pending = Output()
        pending_trades = 0
        last_flush = time.monotonic()
        live = not self.source.finite or self.source.speed is not None
        speed = self.source.speed or 1.0
        # live with the default interval: group commit, i.e. hand over what is pending as
        # soon as the writer is idle (a busy writer lets the next write grow instead)
        eager = not self.source.finite and s.flush_interval_s is None
        try:
            interval = s.flush_every_s
            while True:
                wait = QUIET_POLL_S if live else 0.2  # quiet symbols' windows close on time
                if pending_trades or pending.window_count:  # wake up when the flush is due
                    wait = min(wait, max(0.0, interval - (time.monotonic() - last_flush)))
                    if eager:
                        wait = min(wait, EAGER_POLL_S)
                item = self.channel.get(timeout_s=wait)
                now = now_us()
                self.telemetry.beat()
                if item is None:
                    break
                if item is not TimeoutError:
                    with self.telemetry.processing():
                        out = self.processor.process(item, now)
                    pending.extend(out)
                    pending_trades += len(item.trades)
                if self.reference:
                    pending.reference_prices.extend(self.reference.drain())
                if live and not self.source.catching_up():
                    pending.extend(self.processor.advance_idle(now, int(s.idle_after_s * US), speed))
                since = time.monotonic() - last_flush
                has_data = pending_trades or pending.window_count or pending.reference_prices
                # live: a write at least every second even when quiet (the source's state)
                heartbeat = not self.source.finite and since >= HEARTBEAT_S
                due = since >= interval or (eager and writer.idle())
                if pending_trades >= s.flush_max_trades or (due and has_data) or heartbeat:
                    self._write(writer, pending, now)
                    pending, pending_trades = Output(), 0
                    last_flush = time.monotonic()
                    self._report(t0)
            interrupted = self._stop.is_set()
            if not interrupted:
                pending.extend(self.processor.close(now_us()))
            self.summary.interrupted = interrupted
            self._write(writer, pending, now_us(), final=True)
            writer.close()
        finally:
            self.source.close()
            if self.reference:
                self.reference.stop()
            writer.abort()  # after an error: let a write in flight finish, write nothing more
            if server:
                # readers keep using the endpoint while the store checkpoints; once it is
                # withdrawn they retry the read-only open until the file lock is released
                self.sinks.flush()
                server.stop()
            self.sinks.close()
            if old:
                self._restore_signals(old)
            if self.ml:
                self.ml.close()
        self._report(t0)
        return self.summary

    def _write(self, writer: SinkWriter, out: Output, now: int, final: bool = False) -> None:
        # the counters are upserted at most once a second: per 25 ms flush they would cost
        # more than the trades (~10 ms each, measured in bench_live_latency)
        stats = []
        if final or now - self._stats_written_us >= HEARTBEAT_S * US:
            stats = stats_rows(self.run_id, self._started_us, now, self.source.name,
                               self.processor.counters, self.source.status())
            self._stats_written_us = now
        checkpoints = []
        if stats and self.resume_key:  # the state that goes with everything written so far
            checkpoints = [Checkpoint(RESUME_GROUP, self.resume_key, 0, 0,
                                      snapshot(self.processor))]
        score_windows(self.ml, out, now)
        writer.submit(out, stats, now, checkpoints, self._retention(now, final))
        for table, rows in out.windows.items():
            self.summary.windows[table] = self.summary.windows.get(table, 0) + len(rows)

    def _retention(self, now: int, final: bool) -> dict[str, int] | None:
        """Per symbol, the trade time before which stored trades are pruned — at most once a
        minute (and at the end); None when nothing is due."""
        days = self.s.retain_trades_days
        if days is None or not (final or now - self._pruned_us >= RETAIN_EVERY_S * US):
            return None
        self._pruned_us = now
        keep_us = int(days * 86_400 * US)
        return {sym: c.max_trade_time_us - keep_us for sym, c in self.processor.counters.items()
                if sym and c.max_trade_time_us is not None}

    def _resume(self) -> None:
        """Restore the previous live run's processor state (open windows, dedup, gaps) and
        let the source fetch what it missed meanwhile."""
        if not self.resume_key:
            return
        cp = self.sinks.load_checkpoint(RESUME_GROUP, self.resume_key, 0)
        if cp is None or not cp.state:
            return
        try:
            last_ids = continue_run(self.processor, cp.state)
        except ValueError as exc:  # a snapshot of another version: start afresh, say so
            log.warning("not resuming from the stored state (%s); starting afresh", exc)
            self.processor = Processor(engine_config(self.s))
            return
        for sym in self.s.symbols:
            self.processor.counters.setdefault(sym, SymbolCounters())
        self.resumed_from = last_ids
        resume = getattr(self.source, "resume_after", None)
        if resume is not None:
            resume(last_ids)
        log.info("resumed %s: %d open windows' state, last trade ids %s", self.resume_key,
                 sum(len(st.panes) for st in self.processor.states.values()), last_ids)

    def _report(self, t0: float) -> None:
        sm = self.summary
        cs = self.processor.counters.values()
        sm.received = sum(c.received for c in cs)
        sm.accepted = sum(c.accepted for c in cs)
        sm.rejected = sum(c.rejected_total for c in cs)
        sm.duplicates = sum(c.duplicates for c in cs)
        sm.ignored = sum(c.ignored for c in cs)
        sm.seconds = time.monotonic() - t0
        if self.on_progress:
            self.on_progress(sm, self.source)

    def _install_signals(self):
        return shutdown.install(self.stop, self.s.shutdown_timeout_s)

    @staticmethod
    def _restore_signals(old) -> None:
        shutdown.restore(old)
