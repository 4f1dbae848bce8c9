"""The Kafka roles against a real broker (tansu on loopback, a fresh one per test).

One scenario — the real recordings plus simulated symbols — run embedded and through
``ingest`` -> broker -> ``process`` must store identical rows, also when ``process`` is
killed with SIGKILL several times and restarted, and when the broker is not up yet when
``ingest`` starts.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer

pytestmark = pytest.mark.integration

PROCESS_OPTS = ("--until-idle", "4", "--session-timeout-ms", "6000", "--lake", "off")


def _process_args(broker: str, ws, group: str = "g1") -> list:
    return ["process", "--broker", broker, "--group", group, "--db", ws.db, *PROCESS_OPTS]


def test_kafka_with_one_replica_stores_what_the_embedded_pipeline_stores(cs, workspace, broker,
                                                                         kafka_reference):
    proc = cs.run_cli("topics", "create", "--broker", broker.address, cwd=workspace.root)
    assert "clean_trades: created" in proc.stdout
    cs.ingest_scenario(broker.address, workspace)
    cs.run_cli(*_process_args(broker.address, workspace), cwd=workspace.root, timeout=300)
    assert cs.assert_same_store(workspace.db, kafka_reference.db) > 200_000
    lag = cs.run_cli("topics", "lag", "--broker", broker.address, "--group", "g1",
                     "--format", "json", cwd=workspace.root)
    assert "total lag" in lag.stderr
    with cs.connect_ro(workspace.db) as con:
        stats = con.execute("SELECT run_id, symbol, received, accepted FROM pipeline_stats "
                            "WHERE run_id LIKE 'ingest-%' ORDER BY symbol").fetchall()
    # the ingest role's counters reach the store through the pipeline_stats topic
    assert {r[1] for r in stats} == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"}
    assert all(r[2] == r[3] for r in stats)
    # the ML stage of `process` scores the same windows as the embedded pipeline, with the
    # same results, and publishes every scored window on the anomalies topic
    anomalies = "SELECT symbol, epoch_ms(window_start), detector, score, is_anomaly " \
                "FROM anomalies ORDER BY 1, 2, 3"
    with cs.connect_ro(workspace.db) as con:
        got = con.execute(anomalies).fetchall()
    with cs.connect_ro(kafka_reference.db) as con:
        want = con.execute(anomalies).fetchall()
    assert len(got) > 100 and got == want
    published = _read_topic(broker.address, "anomalies")
    assert {(m["symbol"], m["window_start"], m["detector"]) for m in published} == \
        {(s, _iso(t), d) for s, t, d, _, _ in got}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _read_topic(broker: str, topic: str, quiet_s: float = 3.0) -> list[dict]:
    """Every message of ``topic`` from the start (read until nothing comes for ``quiet_s``:
    the test broker's high watermark cannot be trusted)."""
    c = Consumer({"bootstrap.servers": broker, "group.id": f"t-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 100})
    c.subscribe([topic])
    out, last = [], time.monotonic()
    try:
        while time.monotonic() - last < quiet_s or not out and time.monotonic() - last < 30:
            for m in c.consume(500, timeout=0.5):
                if not m.error():
                    out.append(json.loads(m.value()))
                    last = time.monotonic()
    finally:
        c.close()
    return out


def test_a_process_replica_killed_again_and_again_stores_the_uninterrupted_result(
        cs, workspace, broker, kafka_reference):
    cs.ingest_scenario(broker.address, workspace)
    kills = 0
    for delay_s in (4.5, 5.5, 6.5, 5.0):
        p = cs.start_cli(*_process_args(broker.address, workspace), cwd=workspace.root)
        time.sleep(delay_s)  # the group join takes ~3 s, then it consumes and writes
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(30)
    assert kills >= 3
    cs.run_cli(*_process_args(broker.address, workspace), cwd=workspace.root, timeout=300)
    cs.assert_same_store(workspace.db, kafka_reference.db)


def test_ingest_waits_for_a_broker_that_is_not_up_yet(cs, workspace):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    ingest = cs.start_cli("ingest", "--broker", address, "--source", "replay", "--speed", "max",
                          "--replay", cs.real.btc_jsonl, cwd=workspace.root)
    time.sleep(4)
    assert ingest.poll() is None, "ingest must wait for the broker, not fail"
    b = cs.start_broker(port)
    try:
        _out, err = ingest.communicate(timeout=120)
        assert ingest.returncode == 0, err[-2000:]
        assert "9,757 acknowledged" in err or "acknowledged" in err
        cs.run_cli(*_process_args(address, workspace), cwd=workspace.root, timeout=120)
        with cs.connect_ro(workspace.db) as con:
            n = con.execute("SELECT count(*) FROM trades").fetchone()[0]
        assert n == 9_757
    finally:
        b.stop()


def test_ingest_rides_out_a_frozen_broker_and_keeps_answering_pings(cs, workspace, broker,
                                                                    fake_binance):
    # live trades from the stand-in; the broker freezes (SIGSTOP) for 6 s mid-run: the
    # producer buffers, then pushes back on the source, whose reader keeps answering pings
    fake = fake_binance([cs.real.btc_jsonl, cs.real.eth_jsonl], speed=20.0, ping_interval_s=1.0,
                        pong_timeout_s=2.5)
    ingest = cs.start_cli("ingest", "--broker", broker.address, "--source", "binance",
                          "--binance-url", fake.ws_url, "--symbols", "BTCUSDT,ETHUSDT",
                          "--max-clock-skew", "0", "--duration", "30", cwd=workspace.root)
    try:
        time.sleep(8)
        broker.proc.send_signal(signal.SIGSTOP)
        time.sleep(6)
        broker.proc.send_signal(signal.SIGCONT)
        _out, err = ingest.communicate(timeout=120)
    finally:
        if broker.proc.poll() is None:
            broker.proc.send_signal(signal.SIGCONT)
        if ingest.poll() is None:
            ingest.kill()
    assert ingest.returncode == 0, err[-2000:]
    assert fake.finished
    assert fake.stats.connections_closed.get("pong_timeout", 0) == 0, fake.stats
    cs.run_cli(*_process_args(broker.address, workspace), cwd=workspace.root, timeout=120)
    with cs.connect_ro(workspace.db) as con:
        got = dict(con.execute("SELECT symbol, count(*) FROM trades GROUP BY 1").fetchall())
    assert got == {s: len(fake.trades(s)) for s in ("BTCUSDT", "ETHUSDT")}
