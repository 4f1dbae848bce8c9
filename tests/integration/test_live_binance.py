"""Live runs against the local Binance stand-in (real sockets on loopback).

The stand-in replays the real recordings on its own clock, like the exchange: what a
client misses while disconnected is gone from the stream and only comes back over REST.
With every fault switched on (connections dropped every ~1000 messages, a stall longer
than the watchdog, withheld id ranges, connection rotations, a serverShutdown, malformed
frames), a live run must store exactly what a clean replay of the same recordings stores:
nothing lost, nothing doubled, every gap recorded and closed.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.integration

SYMBOLS = "BTCUSDT,ETHUSDT"


def _live_args(fake, ws, duration_s: float, *extra: str) -> list[str]:
    return ["run", "--source", "binance", "--binance-url", fake.ws_url,
            "--binance-rest-url", fake.rest_url, "--symbols", SYMBOLS, "--max-clock-skew", "0",
            "--duration", str(duration_s), "--db", str(ws.db), "--lake", str(ws.lake), *extra]


@pytest.fixture(scope="module")
def clean_replay(cs, tmp_path_factory):
    """The reference: a clean replay of the same recordings."""
    ws = cs.Workspace(tmp_path_factory.mktemp("clean"))
    ws.replay(cs.real.btc_jsonl, cs.real.eth_jsonl)
    return ws


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_live_run_with_every_fault_stores_what_a_clean_replay_stores(cs, workspace, fake_binance,
                                                                    clean_replay):
    fake = fake_binance(
        [cs.real.btc_jsonl, cs.real.eth_jsonl], speed=12.0, drop_every=1000, gap_every=700,
        malformed_every=300, ping_interval_s=1.0, pong_timeout_s=3.0,
    )
    client = cs.start_cli(*_live_args(fake, workspace, 45, "--stale-after", "1.5s",
                                      "--max-connection-age", "2.5s"), cwd=workspace.root)
    try:
        st = fake.stats
        _wait_for(lambda: st.trade_messages_sent > 3000, 30, "the first 3000 messages")
        fake.shutdown_now(grace_s=1.0)  # serverShutdown: the client must move at once
        _wait_for(lambda: st.trade_messages_sent > 8000, 30, "8000 messages")
        # longer than the client's 1.5 s watchdog; a stall needs an open connection, and
        # with drops every 1000 messages the client may be between two at this instant
        _wait_for(lambda: (fake.stall_now(3.0), time.sleep(0.2), st.stalls >= 1)[-1], 20,
                  "a stall on an open connection")
        fake.fail_rest(2, 429, retry_after_s=1.0)  # backfills must wait as told, then go on
        fake.fail_rest(1, 418, retry_after_s=1.0)
        _wait_for(lambda: fake.finished, 60, "the end of the recording")
        _out, err = client.communicate(timeout=90)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, err[-3000:]
    # the faults really happened
    assert st.connections_closed["drop"] >= 5, st
    assert st.malformed_sent >= 10 and st.withheld and st.stalls >= 1, st
    assert st.rest_429 == 2 and st.rest_418 == 1, st

    assert cs.assert_same_store(workspace.db, clean_replay.db) > 15_000

    with cs.connect_ro(workspace.db) as con:
        gaps = con.execute("SELECT symbol, from_id, to_id, count, filled FROM gaps").fetchall()
        reasons = dict(con.execute("SELECT reason, count(*) FROM rejects GROUP BY ALL").fetchall())
        stats = con.execute(
            "SELECT symbol, received, accepted, rejected, duplicates, ignored, reconnects, "
            "backfilled_trades, gaps_open, source_detail FROM pipeline_stats").fetchall()
    assert gaps, "the withheld ids and the drops must show up as gaps"
    assert all(filled == count for *_, count, filled in gaps), gaps
    assert set(reasons) <= {"decode_error", "bad_type", "missing_field"}, reasons
    assert sum(reasons.values()) >= st.malformed_sent // 2
    for sym, received, accepted, rejected, dups, ignored, reconnects, backfilled, open_, detail in stats:
        assert received == accepted + rejected + dups + ignored, sym
        assert reconnects >= 5 and backfilled > 0 and open_ == 0, (sym, reconnects, backfilled)
        d = json.loads(detail)
        assert d["rotations"] >= 1 and d["stale_replacements"] >= 1, d
        assert d["server_shutdowns"] >= 1, d
    assert "windows written" in err


def test_a_quiet_client_link_answers_pings_and_never_floods_the_server(cs, workspace, fake_binance):
    fake = fake_binance([cs.real.btc_jsonl, cs.real.eth_jsonl], speed=5.0, ping_interval_s=0.3,
                        pong_timeout_s=1.0)
    cs.run_cli(*_live_args(fake, workspace, 5), cwd=workspace.root, timeout=60)
    st = fake.stats
    assert st.connections_opened == 1, st  # never dropped for a missing pong
    assert st.connections_closed.get("pong_timeout", 0) == 0
    assert st.rate_violations == 0
    assert st.pongs_received >= 10, st


def test_a_run_stopped_mid_minute_and_restarted_stores_what_a_clean_replay_stores(
        cs, workspace, fake_binance, clean_replay):
    """SIGTERM in the middle of a minute, a few seconds down, then the same command again:
    the second run restores the open windows, fetches the trades it missed over REST and
    stores what an uninterrupted replay stores — no window written partial, none lost."""
    import signal

    fake = fake_binance([cs.real.btc_jsonl, cs.real.eth_jsonl], speed=12.0)
    st = fake.stats
    first = cs.start_cli(*_live_args(fake, workspace, 60), cwd=workspace.root)
    try:
        _wait_for(lambda: st.trade_messages_sent > 6000, 40, "6000 messages")
        t0 = time.monotonic()
        first.send_signal(signal.SIGTERM)
        _out, err = first.communicate(timeout=15)
        stopped_in = time.monotonic() - t0
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    assert stopped_in < 10, f"SIGTERM took {stopped_in:.1f} s"
    with cs.connect_ro(workspace.db) as con:
        stored_before = con.execute("SELECT count(*) FROM trades").fetchone()[0]
        partial = con.execute("SELECT max(window_end) FROM agg_1m").fetchone()[0]
    time.sleep(3.0)  # down: the stand-in's clock runs on, what it would send is gone
    second = cs.start_cli(*_live_args(fake, workspace, 40), cwd=workspace.root)
    try:
        _wait_for(lambda: fake.finished, 60, "the end of the recording")
        _out, err = second.communicate(timeout=90)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err[-3000:]
    assert 0 < stored_before < 15_000 and partial is not None
    assert cs.assert_same_store(workspace.db, clean_replay.db) > 15_000
    with cs.connect_ro(workspace.db) as con:
        incomplete = con.execute("SELECT count(*) FROM agg_1m WHERE NOT complete").fetchone()[0]
        runs = con.execute("SELECT run_id, sum(backfilled_trades), sum(duplicates) "
                           "FROM pipeline_stats GROUP BY run_id ORDER BY min(started_at)"
                           ).fetchall()
    assert incomplete == 0
    assert len(runs) == 2 and runs[1][1] > 300, runs  # the downtime came back over REST
