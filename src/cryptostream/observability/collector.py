"""The collector that reads the pipelines' state (counters, windows, sources, queues) when
Prometheus scrapes; ``metrics.PipelineTelemetry`` registers one.

Counters and open windows are read under the telemetry's ``counters_lock`` (held around
each processed batch), so one scrape never sees a batch half counted.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cryptostream import __version__
from cryptostream.model import RejectReason

if TYPE_CHECKING:
    from cryptostream.observability.metrics import PipelineTelemetry

SOURCE_STATES = ("connecting", "connected", "reconnecting", "stopped", "replay", "simulated",
                 "polling", "kafka")
REASONS = tuple(r.value for r in RejectReason)


def _retry(fn, attempts: int = 5):
    """Call ``fn`` again when another thread resized a dict it iterated."""
    for i in range(attempts):
        try:
            return fn()
        except RuntimeError:
            if i == attempts - 1:
                raise
    return None


def _counter_rows(counter_dicts: list[dict]) -> list[tuple]:
    rows = []
    for d in counter_dicts:
        for sym, c in list(d.items()):
            rows.append((sym, c.received, c.accepted, c.duplicates, c.ignored, c.gaps,
                         dict(c.rejected)))
    return rows


def open_windows(processor) -> Counter:
    """(symbol, table) -> windows holding at least one trade that are not final yet."""
    out: Counter = Counter()
    if processor.config.clean_only:
        return out
    for sym, st in list(processor.states.items()):
        panes = list(st.panes)
        for w in processor.config.windows:
            done = st.emitted_until.get(w.table)
            starts = set()
            for ps in panes:
                s = (ps // w.slide_us) * w.slide_us
                while s > ps - w.size_us:
                    if done is None or s + w.size_us > done:
                        starts.add(s)
                    s -= w.slide_us
            out[(sym, w.table)] += len(starts)
    return out


class StateCollector:
    """Every metric that is read from the pipelines' state at scrape time."""

    def __init__(self, t: PipelineTelemetry):
        self.t = t

    def collect(self):
        t = self.t
        info = GaugeMetricFamily("cryptostream_info", "Role and version of this process",
                                 labels=["role", "version"])
        info.add_metric([t.role, __version__], 1)
        yield info
        ready, _ = t.health.ready()
        yield GaugeMetricFamily("cryptostream_ready", "1 when /readyz answers 200", value=int(ready))
        embedded = [p for p in t.pipelines if hasattr(p, "processor")]
        ingest = [p for p in t.pipelines if hasattr(p, "cleaner")]
        process = [p for p in t.pipelines if hasattr(p, "procs")]
        procs = [p.processor for p in embedded] + [p.cleaner for p in ingest]
        late_procs = [p.processor for p in embedded]
        for p in process:
            kafka = _retry(lambda p=p: list(p.procs.values()))
            late_procs += kafka
            if not ingest:  # alone, process counts what it consumed; with ingest, ingest counts
                procs += kafka
        with t.counters_lock:  # a consistent snapshot: no batch is half counted
            families = [*self._counters(procs, late_procs), *self._windows(late_procs),
                        *self._ages(procs)]
        yield from families
        yield from self._sources([p.source for p in embedded + ingest])
        yield from self._queues(embedded, ingest, process)
        yield t.latency.family()
        yield t.batch_time.family()
        yield t.flush_time.family()

    def _counters(self, procs, late_procs):
        lab = self.t.labels
        rows = _retry(lambda: _counter_rows([p.counters for p in procs]))
        late_rows = _retry(lambda: _counter_rows([p.counters for p in late_procs]))
        names = ("messages_received", "trades_accepted", "trades_duplicate", "messages_ignored",
                 "gaps")
        docs = ("Records received (trades, rejects and ignored messages)",
                "Trades accepted (valid, not duplicate, not late)",
                "Trades dropped as duplicates (same symbol and trade id)",
                "Messages that are not trades (subscription replies, other events)",
                "Trade-id gaps detected")
        sums = {n: Counter() for n in names}
        rejected: Counter = Counter()
        for sym, rec, acc, dup, ign, gaps, rej in rows:
            label = lab(sym)
            for n, v in zip(names, (rec, acc, dup, ign, gaps)):
                sums[n][label] += v
            for reason in REASONS:
                rejected[(label, reason)] += 0
            for reason, v in rej.items():
                rejected[(label, str(getattr(reason, "value", reason)))] += v
        for n, doc in zip(names, docs):
            fam = CounterMetricFamily(f"cryptostream_{n}", doc, labels=["symbol"])
            for label, v in sorted(sums[n].items()):
                fam.add_metric([label], v)
            yield fam
        fam = CounterMetricFamily("cryptostream_trades_rejected", "Records rejected, by reason",
                                  labels=["symbol", "reason"])
        for (label, reason), v in sorted(rejected.items()):
            fam.add_metric([label, reason], v)
        yield fam
        late: Counter = Counter({label: 0 for label in sums["messages_received"]})
        for sym, *_, rej in late_rows:
            late[lab(sym)] += rej.get(RejectReason.LATE, 0)
        fam = CounterMetricFamily("cryptostream_trades_late",
                                  "Trades rejected because their window was already final",
                                  labels=["symbol"])
        for label, v in sorted(late.items()):
            fam.add_metric([label], v)
        yield fam
        windows: Counter = Counter({(table, label): 0 for table in self.t.tables
                                    for label in sums["messages_received"]})
        windows.update(self.t.windows_emitted())
        fam = CounterMetricFamily("cryptostream_windows_emitted", "Window rows stored",
                                  labels=["table", "symbol"])
        for (table, label), v in sorted(windows.items()):
            fam.add_metric([table, label], v)
        yield fam

    def _windows(self, procs):
        lab = self.t.labels
        total: Counter = Counter()
        for p in procs:
            for (sym, table), n in _retry(lambda p=p: open_windows(p)).items():
                total[(lab(sym), table)] += n
        fam = GaugeMetricFamily("cryptostream_open_windows", "Windows with trades, not final yet",
                                labels=["symbol", "table"])
        for (label, table), n in sorted(total.items()):
            fam.add_metric([label, table], n)
        yield fam

    def _ages(self, procs):
        lab = self.t.labels
        now_us = time.time_ns() // 1000
        last: dict[str, int] = {}
        for p in procs:
            for sym, st in _retry(lambda p=p: list(p.states.items())):
                if st.last_arrival_us is not None:
                    label = lab(sym)
                    last[label] = max(last.get(label, 0), st.last_arrival_us)
        fam = GaugeMetricFamily("cryptostream_last_trade_age_seconds",
                                "Wall time since the last trade of the symbol was processed",
                                labels=["symbol"])
        for label, us in sorted(last.items()):
            fam.add_metric([label], max(0.0, (now_us - us) / 1e6))
        yield fam

    def _sources(self, sources):
        state = GaugeMetricFamily("cryptostream_source_state", "1 for the source's current state",
                                  labels=["source", "state"])
        conn = GaugeMetricFamily("cryptostream_source_connected",
                                 "1 while the live (WebSocket) connection is up",
                                 labels=["source"])
        recon = CounterMetricFamily("cryptostream_source_reconnects",
                                    "Reconnections of the live source", labels=["source"])
        age = GaugeMetricFamily("cryptostream_source_last_message_age_seconds",
                                "Wall time since the live source's last message",
                                labels=["source"])
        backfill = GaugeMetricFamily("cryptostream_backfill_pending",
                                     "Gap backfills in progress", labels=["source"])
        now = time.time()
        for src in sources:
            st = src.status()
            name = src.name
            for s in SOURCE_STATES:
                state.add_metric([name, s], int(st.state == s))
            conn.add_metric([name], int(st.state == "connected"))
            recon.add_metric([name], st.reconnects)
            if st.last_message_at is not None:
                age.add_metric([name], max(0.0, now - st.last_message_at))
            backfill.add_metric([name], st.backfill_pending)
        yield from (state, conn, recon, age, backfill)

    def _queues(self, embedded, ingest, process):
        q = GaugeMetricFamily("cryptostream_queue_depth",
                              "Items waiting: source batches, sink flushes, producer messages",
                              labels=["queue"])
        for p in embedded + ingest:
            q.add_metric(["source"], p.channel.depth())
        for p in embedded:
            writer = getattr(p, "writer", None)
            q.add_metric(["sink"], writer.depth() if writer is not None else 0)
        for p in ingest:
            producer = getattr(p, "_producer", None)
            q.add_metric(["producer"], len(producer) if producer is not None else 0)
        yield q
        if process:
            lag = GaugeMetricFamily("cryptostream_consumer_lag",
                                    "Records behind the end of the partition (Kafka process)",
                                    labels=["topic", "partition"])
            for (topic, part), n in sorted(self.t.lag.items()):
                lag.add_metric([topic, str(part)], n)
            yield lag
            parts = GaugeMetricFamily("cryptostream_assigned_partitions",
                                      "clean_trades partitions this replica owns")
            parts.add_metric([], sum(len(p.procs) for p in process))
            yield parts
