"""Two ``process`` replicas writing PostgreSQL, against a real broker and a real PostgreSQL.

The scenario of test_kafka.py (real recordings + simulated symbols) must store exactly what
the embedded pipeline stores in DuckDB, with two replicas splitting the partitions, with a
replica joining and leaving mid-run (rebalances), and with the sink's connection killed
mid-run.
"""

from __future__ import annotations

import math
import signal
import threading
import time

import psycopg
import pytest

pytestmark = pytest.mark.integration

TRADES = "symbol, trade_id, price, qty, trade_time, is_buyer_maker, is_price_spike"
AGG = ("symbol, window_start, trade_count, first_trade_id, last_trade_id, missing_trades, "
       "spike_count, open, high, low, close, volume, quote_volume, vwap, price_stddev, buy_volume")
EXACT = 7  # leading columns compared exactly


def _process(cs, broker: str, dsn: str, ws, idle: str = "6"):
    return cs.start_cli("process", "--broker", broker, "--group", "pg", "--sink", dsn,
                        "--until-idle", idle, "--session-timeout-ms", "6000", cwd=ws.root)


def _wait_ok(*procs, timeout: float = 300) -> None:
    for p in procs:
        _out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]


def _assert_same_as_embedded(cs, dsn: str, reference) -> None:
    with psycopg.connect(dsn) as pg:
        pg.execute("SET TimeZone = 'UTC'")
        got = pg.execute(f"SELECT {TRADES} FROM trades ORDER BY symbol, trade_id").fetchall()
        want = cs.store_rows(reference.db, "trades", TRADES, "symbol, trade_id")
        assert len(got) == len(want) > 200_000
        assert got == want
        for table in ("agg_1m", "agg_5m_1m"):
            g = pg.execute(f"SELECT {AGG} FROM {table} ORDER BY symbol, window_start").fetchall()
            w = cs.store_rows(reference.db, table, AGG, "symbol, window_start")
            assert [r[:EXACT] for r in g] == [r[:EXACT] for r in w], table
            for a, b in zip(g, w, strict=True):
                assert all((x is None and y is None) or math.isclose(x, y, rel_tol=1e-9)
                           for x, y in zip(a[EXACT:], b[EXACT:], strict=True)), (table, a[:2])


def test_two_replicas_with_one_joining_and_leaving_store_the_embedded_result(
        cs, workspace, broker, pg_dsn, kafka_reference):
    cs.ingest_scenario(broker.address, workspace)
    a = _process(cs, broker.address, pg_dsn, workspace)
    time.sleep(5)  # a owns every partition and is consuming
    b = _process(cs, broker.address, pg_dsn, workspace)
    time.sleep(7)  # rebalance: b takes half the partitions over, from a's checkpoints
    b.send_signal(signal.SIGTERM)  # b leaves: its partitions go back to a
    _wait_ok(b, a)
    _assert_same_as_embedded(cs, pg_dsn, kafka_reference)
    with psycopg.connect(pg_dsn) as pg:
        parts = pg.execute("SELECT count(*) FROM consumer_checkpoints WHERE topic = 'clean_trades'"
                           ).fetchone()[0]
    assert parts >= 2


def test_two_replicas_survive_their_database_connections_being_killed(
        cs, workspace, broker, pg_dsn, kafka_reference):
    cs.ingest_scenario(broker.address, workspace)
    procs = [_process(cs, broker.address, pg_dsn, workspace) for _ in range(2)]
    db = pg_dsn.rsplit("/", 1)[1]
    killed = []

    def kill_connections() -> None:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as adm:
            for _ in range(3):
                time.sleep(3)
                killed.append(adm.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = 'cryptostream'", [db]).fetchone()[0])

    t = threading.Thread(target=kill_connections)
    t.start()
    t.join()
    _wait_ok(*procs)
    assert sum(killed) >= 2
    _assert_same_as_embedded(cs, pg_dsn, kafka_reference)
