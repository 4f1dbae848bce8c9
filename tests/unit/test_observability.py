"""Metrics read at scrape time, the numpy histogram, log formats, redaction, the --rate setting."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from cs_unit_helpers import NOW_US, T, at, config, source_batch
from prometheus_client import Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cryptostream.config import Settings
from cryptostream.observability import logs
from cryptostream.observability.metrics import BucketHistogram, PipelineTelemetry
from cryptostream.processing.engine import Processor
from cryptostream.sources.base import SourceStatus
from cryptostream.transport.channel import InProcessChannel


def scrape(registry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(m: dict, name: str, **labels) -> float:
    return m[(name, frozenset(labels.items()))]


class FakeSource:
    name = "simulate"

    def status(self) -> SourceStatus:
        return SourceStatus("simulated")


class FakeSink:
    fail = False

    def open(self) -> None:
        pass

    def write(self, out, stats, now_us=0, **kw) -> None:
        if self.fail:
            raise RuntimeError("server gone: postgresql://bob:pw-123456@db/cs")

    def close(self) -> None:
        pass


TRADES = [
    T(1, 100.0, 1.0, at(0)), T(2, 101.0, 1.0, at(1)), T(2, 101.0, 1.0, at(1)),  # a duplicate
    T(5, 102.0, 1.0, at(2)),  # ids 3..4 missing: a gap
    T(6, -1.0, 1.0, at(3)),  # rejected: non-positive price
    T(10, 50.0, 1.0, at(5), symbol="ETHUSDT"),
    T(1, 5.0, 1.0, at(5), symbol="SOLUSDT"),  # not configured: labelled "other"
]


def test_collector_counts_reconcile_and_symbols_are_bounded(caplog):
    tel = PipelineTelemetry("run", ["BTCUSDT", "ETHUSDT"], extra_symbols=0)
    proc = Processor(config())
    sink = tel.wrap_sink(FakeSink())
    sink.open()
    tel.watch(SimpleNamespace(processor=proc, source=FakeSource(), channel=InProcessChannel(),
                              writer=None, s=None))
    with tel.processing():
        out = proc.process(source_batch(TRADES), NOW_US)
    tel.beat()
    m = scrape(tel.registry)
    assert value(m, "cryptostream_open_windows", symbol="BTCUSDT", table="agg_1m") == 1
    assert value(m, "cryptostream_open_windows", symbol="BTCUSDT", table="agg_5m_1m") == 5
    out.extend(proc.close(NOW_US))
    with caplog.at_level(logging.INFO, logger="cryptostream"):
        sink.write(out, [])
        sink.write(out, [])  # the same gap again: logged once
    assert [r.getMessage() for r in caplog.records].count(
        "gap in BTCUSDT: trade ids 3..4 missing (2)") == 1

    m = scrape(tel.registry)
    for label, received, accepted in (("BTCUSDT", 5, 3), ("ETHUSDT", 1, 1), ("other", 1, 1)):
        assert value(m, "cryptostream_messages_received_total", symbol=label) == received
        assert value(m, "cryptostream_trades_accepted_total", symbol=label) == accepted
        rejected = sum(v for (n, lab), v in m.items() if n == "cryptostream_trades_rejected_total"
                       and ("symbol", label) in lab)
        assert received == accepted + rejected + value(
            m, "cryptostream_trades_duplicate_total", symbol=label) + value(
            m, "cryptostream_messages_ignored_total", symbol=label)
    assert value(m, "cryptostream_trades_rejected_total", symbol="BTCUSDT",
                 reason="non_positive_price") == 1
    assert value(m, "cryptostream_trades_rejected_total", symbol="BTCUSDT", reason="late") == 0
    assert value(m, "cryptostream_trades_duplicate_total", symbol="BTCUSDT") == 1
    assert value(m, "cryptostream_gaps_total", symbol="BTCUSDT") == 1
    assert value(m, "cryptostream_trades_late_total", symbol="BTCUSDT") == 0
    assert value(m, "cryptostream_windows_emitted_total", table="agg_1m", symbol="BTCUSDT") == 2
    assert value(m, "cryptostream_open_windows", symbol="BTCUSDT", table="agg_1m") == 0
    # every accepted trade is in the latency histogram (twice: written twice)
    assert value(m, "cryptostream_end_to_end_latency_seconds_count", symbol="BTCUSDT") == 6
    assert value(m, "cryptostream_batch_processing_seconds_count") == 1
    assert value(m, "cryptostream_sink_flush_seconds_count") == 2
    assert value(m, "cryptostream_source_state", source="simulate", state="simulated") == 1
    assert value(m, "cryptostream_queue_depth", queue="source") == 0
    assert not any(("symbol", "SOLUSDT") in lab for _, lab in m)
    assert tel.health.ready()[0] and value(m, "cryptostream_ready") == 1


def test_a_failed_write_is_logged_once_redacted_and_makes_the_process_unready(caplog):
    tel = PipelineTelemetry("run", ["BTCUSDT"])
    bad = FakeSink()
    sink = tel.wrap_sink(bad)
    sink.open()
    tel.watch(SimpleNamespace(processor=Processor(config()), source=FakeSource(),
                              channel=InProcessChannel(), writer=None, s=None))
    tel.beat()
    bad.fail = True
    with caplog.at_level(logging.ERROR, logger="cryptostream"), pytest.raises(RuntimeError):
        sink.write(Processor(config()).process(source_batch(TRADES[:1]), NOW_US), [])
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].event == "flush_error"
    assert "pw-123456" not in errors[0].getMessage()
    ready, body = tel.health.ready()
    assert not ready and not body["checks"]["sinks"]["ok"]


def test_bucket_histogram_matches_prometheus_histogram():
    values = np.array([0.0, 0.005, 0.0051, 0.3, 1.0, 2.5, 400.0, -1.0])
    ours = BucketHistogram("h_seconds", "h", (0.005, 0.1, 1.0, 2.5), ("symbol",))
    ours.observe_many(values, ("X",))
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    ref = Histogram("h_seconds", "h", ["symbol"], buckets=(0.005, 0.1, 1.0, 2.5), registry=reg)
    for v in values:
        ref.labels("X").observe(float(v))
    want = {s.labels["le"]: s.value for s in reg.collect().__next__().samples
            if s.name.endswith("_bucket")}
    got = {s.labels["le"]: s.value for s in ours.family().samples if s.name.endswith("_bucket")}
    assert {float(k): v for k, v in got.items()} == {float(k): v for k, v in want.items()}


def test_json_lines_carry_context_and_never_secrets():
    logs.add_secret("CG-abcdef123456")
    rec = logging.LogRecord("cryptostream.x", logging.WARNING, "f.py", 1,
                            "poll failed with key %s at %s", ("CG-abcdef123456",
                                                              "postgresql://u:hunter22@h/db"), None)
    rec.symbol = "BTCUSDT"
    rec.attempt = 3
    doc = json.loads(logs.JsonFormatter().format(rec))
    assert doc["level"] == "WARNING" and doc["logger"] == "cryptostream.x" and doc["ts"].endswith("Z")
    assert doc["symbol"] == "BTCUSDT" and doc["attempt"] == 3
    assert "CG-abcdef123456" not in doc["message"] and "hunter22" not in doc["message"]
    human = logs.HumanFormatter().format(rec)
    assert "symbol=BTCUSDT" in human and "hunter22" not in human
    assert logs.redact("host=db password='a b' user=x") == "host=db password=*** user=x"
    assert logs.secrets_of(Settings(sinks=["duckdb", "postgresql://u:pw999@h/db"]))[-1] == "pw999"


def test_console_lines_become_log_records_with_levels(caplog):
    stream = logs.LogLines(logging.getLogger("cryptostream.cli"))
    with caplog.at_level(logging.INFO, logger="cryptostream"):
        stream.write("run 1: simulate -> x.duckdb\nerror: it broke\n  \npartial")
        stream.flush()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "run 1: simulate -> x.duckdb"), ("ERROR", "error: it broke"), ("INFO", "partial")]


def test_rate_is_combined_and_paces_the_simulation_in_real_time():
    s = Settings(source="simulate", symbols="BTCUSDT,ETHUSDT,SOLUSDT", sim_rate=300, duration_s=8)
    assert s.sim_trades_per_symbol == 100 and s.pace == 1.0
    assert Settings(source="simulate", duration_s=8).pace is None  # unchanged without --rate
    assert Settings(source="simulate", sim_rate=300, duration_s=8, speed="max").pace is None
    assert Settings(source="simulate", sim_trades_per_s=7).sim_trades_per_symbol == 7
    assert Settings(metrics_port=0, log_format="json").metrics_port == 0
