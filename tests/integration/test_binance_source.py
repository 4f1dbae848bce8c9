"""The live Binance source on its own, against real sockets on loopback.

Reconnect pacing against a port that refuses connections, the connection-attempt limit,
and a consumer far slower than the stream: memory stays bounded (frames beyond the
buffer are not kept), pongs keep flowing, and what was not kept comes back over REST.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cryptostream.sources.binance import BinanceSource
from cryptostream.sources.binance_stream import StreamOptions

pytestmark = pytest.mark.integration

REAL = Path(__file__).parents[1] / "fixtures" / "real"
RECORDINGS = [REAL / "btcusdt-trade-stream.jsonl", REAL / "ethusdt-trade-stream.jsonl"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _drain(src: BinanceSource, seconds: float, pause_s: float = 0.0) -> dict[str, list[int]]:
    """Iterate the source like the pipeline does (optionally slowly); ids per symbol."""
    ids: dict[str, list[int]] = {}
    end = time.monotonic() + seconds
    for sb in src.batches():
        tb = sb.trades
        ok = tb.status == 0
        for i in np.flatnonzero(ok).tolist():
            ids.setdefault(tb.symbol_at(i), []).append(int(tb.trade_id[i]))
        if pause_s:
            time.sleep(pause_s)
        if time.monotonic() > end:
            break
    src.close()
    return ids


def test_reconnects_back_off_exponentially_with_jitter_and_say_why():
    port = _closed_port()
    src = BinanceSource(["BTCUSDT"], ws_url=f"ws://127.0.0.1:{port}",
                        rest_url=f"http://127.0.0.1:{port}",
                        options=StreamOptions(reconnect_base_s=0.2, reconnect_max_s=1.0, seed=1))
    consumer = threading.Thread(target=lambda: list(src.batches()), daemon=True)
    consumer.start()
    t0 = time.monotonic()
    seen_states = set()
    while time.monotonic() - t0 < 3.0:
        seen_states.add(src.status().state)
        time.sleep(0.05)
    st = src.status()
    src.close()
    consumer.join(10)
    assert not consumer.is_alive()
    fails = [t for t, event, _ in src._conn.state.log if event == "connect_failed"]
    gaps = np.diff(fails)
    # delays of 0.1-0.2, 0.2-0.4, 0.4-0.8, then capped at 0.5-1.0 s: never a tight loop
    assert 4 <= len(fails) <= 8, fails
    assert np.all(gaps >= 0.09), gaps
    assert gaps[-1] >= 0.45, gaps
    assert "reconnecting" in seen_states and st.attempt >= 4
    assert "Connect" in st.detail["last_error"] or "refused" in st.detail["last_error"].lower()
    assert src.catching_up()  # not connected: idle watermarks must wait


def test_connection_attempts_never_exceed_the_limit(fake_binance):
    # every connection is dropped after its first message: the client would reconnect at once
    fake = fake_binance(RECORDINGS, speed=20.0, drop_every=1)
    src = BinanceSource(["BTCUSDT", "ETHUSDT"], ws_url=fake.ws_url, rest_url=fake.rest_url,
                        duration_s=3.0,
                        options=StreamOptions(reconnect_base_s=0.01, max_connects_per_5min=4))
    _drain(src, 5.0)
    assert fake.stats.connections_opened == 4
    assert src.status().reconnects == 3


def test_a_slow_consumer_keeps_memory_bounded_answers_pings_and_loses_nothing(fake_binance):
    # pings 2/s (pongs count against the 5 incoming messages/s), a pong missing 1.5 s drops
    fake = fake_binance(RECORDINGS, speed=30.0, ping_interval_s=0.5, pong_timeout_s=1.5)
    src = BinanceSource(["BTCUSDT", "ETHUSDT"], ws_url=fake.ws_url, rest_url=fake.rest_url,
                        duration_s=16.0, buffer_messages=200)
    ids = _drain(src, 60.0, pause_s=0.25)  # ~4 batches/s, far slower than the stream
    st = src.status()
    assert fake.finished
    assert st.detail["overflow_dropped"] > 1000  # the buffer stayed at 200 frames
    assert fake.stats.connections_opened == 1  # pongs never waited for the consumer
    assert fake.stats.connections_closed.get("pong_timeout", 0) == 0
    for sym in ("BTCUSDT", "ETHUSDT"):
        want = [t.id for t in fake.trades(sym)]
        got = sorted(set(ids[sym]))
        assert got == want, f"{sym}: {len(set(want) - set(got))} trades missing"
    assert st.backfilled_trades >= st.detail["overflow_dropped"] * 0.9
