"""Wires the Kafka roles: ``ingest`` (sources -> clean -> topics) and ``process``
(``clean_trades`` in a consumer group -> windows -> sinks + window topics). No domain logic.

Delivery (docs/architecture.md, decision 13): the producer is idempotent with
``acks=all``; ``process`` writes each flush — rows, stats, and per ``clean_trades``
partition the processor snapshot with the next offset to read — in one sink transaction,
and commits the offsets to Kafka only after that. A replica that starts, restarts after a
crash or takes a partition over restores the partition's snapshot from the sink and reads
on from its offset, so open windows come out complete and nothing is counted twice; rows
written again after a crash are upserts of the same keys.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from cryptostream.config import Settings
from cryptostream.model import SourceBatch
from cryptostream.observability.hooks import NO_TELEMETRY, Telemetry
from cryptostream.pipeline import build_source, engine_config, ml_stage, now_us, score_windows
from cryptostream.processing.engine import Output, Processor, SymbolCounters
from cryptostream.processing.state import restore, snapshot
from cryptostream.sinks.base import Checkpoint, stats_rows
from cryptostream.sinks.fanout import build_sinks
from cryptostream.sinks.lake import DEFAULT_SETTLE_US, ParquetLake
from cryptostream.sources.base import SourceStatus
from cryptostream.transport.channel import InProcessChannel, feed
from cryptostream.transport.kafka_admin import (
    ANOMALIES,
    CLEAN,
    RAW,
    REJECTS,
    STATS,
    BrokerError,
    Topics,
    consumer_config,
    producer_config,
    topic_specs,
)
from cryptostream.transport.kafka_codec import (
    decode_clean,
    decode_reject,
    decode_stats,
    encode_clean,
    encode_reject,
    encode_stats,
    encode_window,
)

US = 1_000_000
CLEAN_CHUNK = 5000  # trades per clean_trades message
STATS_EVERY_S = 1.0
log = logging.getLogger("cryptostream.kafka")


def ensure_topics(s: Settings, stop: threading.Event | None = None, wait_s: float = 0) -> dict:
    """Create the pipeline's topics (retrying while the broker is not up, up to ``wait_s``)."""
    tables = tuple(w.table for w in s.window_specs())
    specs = topic_specs(tables, s.partitions, int(s.retention_s * 1000))
    end = time.monotonic() + wait_s
    while True:
        try:
            return Topics(s.broker, timeout_s=5).create(specs)
        except BrokerError:
            if time.monotonic() >= end or (stop is not None and stop.is_set()):
                raise
            time.sleep(1.0)


@dataclass
class IngestSummary:
    run_id: str
    received: int = 0
    published: int = 0
    delivered: int = 0
    seconds: float = 0.0


class IngestPipeline:
    """Sources -> validate/dedup/enrich -> ``raw_trades``, ``clean_trades``, ``rejects``."""

    def __init__(self, settings: Settings, on_progress: Callable | None = None,
                 telemetry: Telemetry | None = None):
        self.s = settings
        self.telemetry = telemetry or NO_TELEMETRY  # metrics hooks (observability/hooks.py)
        self.source = build_source(settings)
        self.cleaner = Processor(replace(engine_config(settings), clean_only=True))
        self.channel = InProcessChannel(maxsize=settings.queue_batches)
        self.run_id = f"ingest-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.summary = IngestSummary(self.run_id)
        self.on_progress = on_progress
        self._stop = threading.Event()
        self._errors: list[str] = []
        self._producer = Producer(producer_config(settings.broker, error_cb=self._on_error))

    def stop(self) -> None:
        self._stop.set()
        self.source.close()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._errors.append(str(err))

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._errors.append(f"delivery to {msg.topic()} failed: {err}")
        else:
            self.summary.delivered += 1

    def _produce(self, topic: str, key: str, value: bytes, **kw) -> None:
        """Produce, pushing back on the sources while the bounded queue is full."""
        while True:
            try:
                self._producer.produce(topic, value, key.encode(), on_delivery=self._delivered, **kw)
                self.summary.published += 1
                return
            except BufferError:
                if self._stop.is_set() and self._errors:
                    raise BrokerError("; ".join(self._errors[:3])) from None
                self._producer.poll(0.1)

    def _feed(self) -> None:
        feed(self.source, self.channel, self._stop)

    def run(self) -> IngestSummary:
        started_us, t0 = now_us(), time.monotonic()
        topics = threading.Thread(target=self._topics, daemon=True, name="topics")
        topics.start()
        feeder = threading.Thread(target=self._feed, daemon=True, name="source")
        feeder.start()
        last_stats = 0.0
        try:
            while True:
                item = self.channel.get(timeout_s=0.2)
                self.telemetry.beat()
                if item is None:
                    break
                if item is not TimeoutError:
                    with self.telemetry.processing():
                        out = self.cleaner.process(item, now_us())
                    self._publish(item, out)
                self._producer.poll(0)
                if self._errors:
                    raise BrokerError("Kafka producer: " + "; ".join(self._errors[:3]))
                if time.monotonic() - last_stats >= STATS_EVERY_S:
                    self._publish_stats(started_us)
                    last_stats = time.monotonic()
                    self._report(t0)
            self._publish_stats(started_us)
            while len(self._producer) > 0:  # every message acknowledged before exit 0
                self._producer.flush(1.0)
                self._report(t0)
                if self._errors:
                    raise BrokerError("Kafka producer: " + "; ".join(self._errors[:3]))
        finally:
            self.source.close()
        self._report(t0)
        return self.summary

    def _topics(self) -> None:
        try:
            ensure_topics(self.s, self._stop, wait_s=3600)
        except BrokerError as exc:
            self._errors.append(str(exc))

    def _publish(self, sb: SourceBatch, out: Output) -> None:
        tb = sb.trades
        self.summary.received += len(tb) + len(sb.rejects) + sum(sb.ignored.values())
        if self.s.publish_raw and tb.raw is not None:
            for i in range(len(tb)):
                raw = tb.raw[i]
                if raw[:1].isdigit():  # a recorder's "<ns> " prefix is not part of the message
                    raw = raw.split(b" ", 1)[-1]
                rt = int(tb.recv_time_us[i])
                headers = [("source", tb.source.encode())]
                if rt > 0:
                    headers.append(("recv_time_ns", str(rt * 1000).encode()))
                self._produce(RAW, str(tb.symbol_at(i)), raw, headers=headers)
        for a in out.trades:
            for lo in range(0, len(a), CLEAN_CHUNK):
                sl = slice(lo, lo + CLEAN_CHUNK)
                value = encode_clean(a.trade_id[sl], a.price[sl], a.qty[sl], a.trade_time_us[sl],
                                     a.event_time_us[sl], a.recv_time_us[sl],
                                     a.is_buyer_maker[sl], a.is_price_spike[sl], a.offset[sl])
                self._produce(CLEAN, a.symbol, value,
                              timestamp=int(a.trade_time_us[lo]) // 1000,
                              headers=[("source", a.source.encode()), ("format", b"arrow-v1")])
        for r in out.rejects:
            self._produce(REJECTS, r.symbol, encode_reject(r))

    def _publish_stats(self, started_us: int) -> None:
        rows = stats_rows(self.run_id, started_us, now_us(), self.source.name,
                          self.cleaner.counters, self.source.status())
        for row in rows:
            self._produce(STATS, f"{row['run_id']}/{row['symbol']}", encode_stats(row))

    def _report(self, t0: float) -> None:
        self.summary.seconds = time.monotonic() - t0
        if self.on_progress:
            self.on_progress(self.summary, self.source)


class ProcessPipeline:
    """``clean_trades`` (one consumer group member) -> windows -> sinks and window topics."""

    def __init__(self, settings: Settings, on_progress: Callable | None = None,
                 telemetry: Telemetry | None = None):
        self.s = settings
        self.telemetry = telemetry or NO_TELEMETRY  # metrics hooks (observability/hooks.py)
        self.group = settings.group
        # the clock-skew check was made by ingest (which saw the receive times live); gaps
        # may still be filled by ingest's backfill, so they hold windows as in embedded mode
        self.cfg = replace(engine_config(settings), max_clock_skew_us=0,
                           gap_wait_us=int(settings.backfill_wait_s * US))
        self.sink = self.telemetry.wrap_sink(build_sinks(
            settings.sinks, settings.db, settings.window_specs(), settings.duckdb_threads,
            duckdb_memory_mb=settings.duckdb_memory_mb))
        # upstream silence is invisible here (a dead connection looks like a quiet market):
        # idle watermarks advance only after the embedded default for replays, 10 s
        self.idle_us = (settings.idle_timeout_s if settings.idle_timeout_s is not None else 10.0) * US
        duck = self.sink.duckdb
        self.lake = ParquetLake(settings.lake, settings.window_specs(),
                                settle_us=settings.allowed_lateness_us + DEFAULT_SETTLE_US) \
            if settings.lake and duck is not None else None
        self.tables = tuple(w.table for w in settings.window_specs())
        self.ml = ml_stage(settings)
        self.procs: dict[int, Processor] = {}
        self.offsets: dict[tuple[str, int], int] = {}
        self.pending = Output()
        self.ingest_stats: dict[tuple, dict] = {}
        self.run_id = f"process-{self.group}"
        self.on_progress = on_progress
        self.received = 0
        self._stop = threading.Event()
        self._consumer = Consumer(consumer_config(settings.broker, self.group,
                                                  settings.session_timeout_ms))
        self._producer = Producer(producer_config(settings.broker))
        self._started_us = now_us()
        self._closing = False
        self.commit_failures = 0

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> int:
        from cryptostream.query import QueryServer

        s = self.s
        self.sink.open()
        if self.lake:
            self.lake.open()
        ensure_topics(s, self._stop, wait_s=60)
        duck = self.sink.duckdb
        server = QueryServer(duck, s.db, lake=s.lake) \
            if duck is not None and s.serve_queries else None
        if server:
            server.start()
        self._consumer.subscribe([CLEAN, REJECTS, STATS], on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_revoke)
        last_flush = self._t0 = time.monotonic()
        self._last_msg = None  # idle time counts once partitions are assigned
        dirty = False
        try:
            while not self._stop.is_set():
                msgs = self._consumer.consume(2000, timeout=0.2)
                now = now_us()
                self.telemetry.beat()
                with self.telemetry.processing():
                    for m in msgs:
                        if m.error():
                            if m.error().code() != KafkaError._PARTITION_EOF:
                                raise BrokerError(f"Kafka consumer: {m.error()}")
                            continue
                        self._handle(m, now)
                if msgs:
                    self._last_msg = time.monotonic()
                    dirty = True
                for proc in self.procs.values():
                    self.pending.extend(proc.advance_idle(now, int(self.idle_us)))
                since = time.monotonic() - last_flush
                had_data = dirty or self.pending.window_count
                if had_data and since >= s.flush_every_s or since >= STATS_EVERY_S:
                    self._flush()
                    last_flush = time.monotonic()
                    dirty = False
                    if had_data and self._last_msg is not None:  # a long flush is not idle
                        self._last_msg = max(self._last_msg, last_flush)
                if s.until_idle_s is not None and self._idle_for(s.until_idle_s):
                    for proc in self.procs.values():
                        self.pending.extend(proc.close(now_us()))
                    break
            self._flush()
            if self.lake:
                self.lake.export_dirty(self.sink.duckdb, final=True)
            self._producer.flush(30)
        finally:
            self._closing = True  # everything is flushed: leaving the group commits nothing
            self._consumer.close()
            if server:
                self.sink.flush()
                server.stop()
            self.sink.close()
            if self.ml:
                self.ml.close()
        return self.received

    def _idle_for(self, seconds: float) -> bool:
        """No new record for ``seconds`` while owning partitions — and long enough after the
        start that a crashed predecessor's session has expired and its partitions have been
        handed over (until then records may still come from partitions nobody reads)."""
        if self._last_msg is None:  # not assigned, or a rebalance is in progress
            return False
        settled = time.monotonic() - self._t0 >= 2 * self.s.session_timeout_ms / 1000
        return settled and time.monotonic() - self._last_msg >= seconds

    def _handle(self, m, now: int) -> None:
        topic, part = m.topic(), m.partition()
        self.offsets[(topic, part)] = m.offset() + 1
        self.received += 1
        if topic == CLEAN:
            proc = self.procs.get(part)
            if proc is None:  # assigned without a callback (should not happen): start fresh
                proc = self.procs[part] = Processor(self.cfg)
            source = dict(m.headers() or []).get("source", b"kafka").decode()
            tb = decode_clean(m.value(), m.key().decode(), source)
            self.pending.extend(proc.process(SourceBatch(tb), now))
        elif topic == REJECTS:
            self.pending.rejects.append(decode_reject(m.value()))
        elif topic == STATS:
            row = decode_stats(m.value())
            self.ingest_stats[(row["run_id"], row["symbol"])] = row

    def _flush(self) -> None:
        """Write what is pending with the partitions' snapshots, then commit the offsets."""
        now = now_us()
        counters: dict[str, SymbolCounters] = {}
        for proc in self.procs.values():
            counters.update(proc.counters)
        stats = stats_rows(self.run_id, self._started_us, now, "kafka", counters,
                           SourceStatus("kafka", detail={"partitions": sorted(self.procs)}))
        stats += list(self.ingest_stats.values())
        checkpoints = [Checkpoint(self.group, CLEAN, p, self.offsets[(CLEAN, p)], snapshot(proc))
                       for p, proc in self.procs.items() if (CLEAN, p) in self.offsets]
        out, self.pending = self.pending, Output()
        score_windows(self.ml, out, now)
        self.sink.write(out, _normalise(stats), now, checkpoints=checkpoints)
        self.ingest_stats.clear()
        if self.lake:
            self.lake.mark(out)
            self.lake.export_dirty(self.sink.duckdb, final=False, interval_s=self.s.lake_interval_s)
        for table, rows in out.windows.items():
            for row in rows:
                self._produce_window(table, row)
        for row in out.ml.get("anomalies", []):
            self._produce_window(ANOMALIES, row)
        self._producer.poll(0)
        if self.offsets:
            tps = [TopicPartition(t, p, o) for (t, p), o in self.offsets.items()]
            try:
                self._consumer.commit(offsets=tps, asynchronous=False)
            except KafkaException:
                # a rebalance in flight, or the consumer closing: harmless, the sink holds the
                # offsets that count (Kafka's serve lag monitoring)
                self.commit_failures += 1
        if self.on_progress:
            self.on_progress(self)

    def _produce_window(self, table: str, row: dict) -> None:
        while True:
            try:
                self._producer.produce(table, encode_window(row), row["symbol"].encode())
                return
            except BufferError:
                self._producer.poll(0.1)

    def _on_assign(self, consumer, partitions) -> None:
        for tp in partitions:
            if tp.topic != CLEAN:
                continue
            proc = Processor(self.cfg)
            cp = self.sink.load_checkpoint(self.group, CLEAN, tp.partition)
            if cp is not None:
                if cp.state:
                    restore(proc, cp.state)
                tp.offset = cp.next_offset
            self.procs[tp.partition] = proc
        log.info("rebalance: group %s assigned %d partition(s)", self.group, len(partitions),
                 extra={"event": "rebalance", "group": self.group, "assigned": _tps(partitions)})
        consumer.assign(partitions)
        self._last_msg = time.monotonic()

    def _on_revoke(self, consumer, partitions) -> None:
        log.info("rebalance: group %s gives up %d partition(s)", self.group, len(partitions),
                 extra={"event": "rebalance", "group": self.group, "revoked": _tps(partitions)})
        self._last_msg = None
        if not self._closing and (self.procs or self.pending.window_count or self.pending.rejects):
            self._flush()
        for tp in partitions:
            self.offsets.pop((tp.topic, tp.partition), None)
            if tp.topic == CLEAN:
                self.procs.pop(tp.partition, None)


def _tps(partitions) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]


def _normalise(rows: list[dict]) -> list[dict]:
    """Stats rows from both roles with one column order (the table's), for one Arrow table."""
    if not rows:
        return rows
    cols = list(rows[0])
    return [{k: r.get(k) for k in cols} for r in rows]



def run_both(settings: Settings, on_progress: Callable | None = None,
             telemetry: Telemetry | None = None) -> tuple[IngestSummary, int]:
    """``run --broker``: ingest and one process replica in one command (threads).

    A finite input ends the run once ingest is done and ``process`` has been idle for
    ``until_idle_s`` (5 s unless set); a live one runs until stopped or ``--duration``.
    """
    ingest = IngestPipeline(settings, on_progress=on_progress, telemetry=telemetry)
    if ingest.source.finite and settings.until_idle_s is None:
        settings = settings.model_copy(update={"until_idle_s": 5.0})
    proc = ProcessPipeline(settings, telemetry=telemetry)
    if telemetry is not None:
        telemetry.watch(ingest)
        telemetry.watch(proc)
    result: dict = {}

    def run_ingest() -> None:
        try:
            result["ingest"] = ingest.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            result["error"] = exc
            proc.stop()
        else:
            if not ingest.source.finite:
                proc.stop()  # a live source stopped (--duration): let process finish

    t = threading.Thread(target=run_ingest, name="ingest", daemon=True)
    t.start()
    try:
        n = proc.run()
    finally:
        ingest.stop()
        t.join(60)
    if "error" in result:
        raise result["error"]
    return result.get("ingest", ingest.summary), n
