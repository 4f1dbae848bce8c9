"""The CoinGecko poller against the real stand-in over loopback HTTP.

Each test starts its own ``FakeCoinGecko`` on a free port with small intervals, so that what
the real service does over minutes (cache refresh, rate limiting, Retry-After) happens in
about a second: fresh ticks, no repeats within one cache period, new ticks after an update,
waiting out a 429, the API key header, and the key staying out of reprs and messages.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from cryptostream.sources.coingecko import (
    API_KEY_HEADER,
    CoinGeckoError,
    CoinGeckoPoller,
    CoinGeckoRateLimited,
    assets_for,
)
from cryptostream.standins.coingecko import FakeCoinGecko

pytestmark = pytest.mark.integration

KEY = "CG-integration-Key-42"
ASSETS = assets_for(["BTCUSDT", "ETHUSDT", "SOLUSDT"])


@pytest.fixture
def fake():
    with FakeCoinGecko(update_interval_s=60.0, rate_limit_per_min=None, seed=11) as server:
        yield server


def poller_for(server: FakeCoinGecko, **kw) -> CoinGeckoPoller:
    kw.setdefault("timeout_s", 2.0)
    return CoinGeckoPoller(ASSETS, base_url=server.url, **kw)


def run_until_first_batch(poller: CoinGeckoPoller, timeout_s: float = 5.0):
    """Run the poller in this thread until it yields once; (batch, seconds it took)."""
    stop = threading.Event()
    guard = threading.Timer(timeout_s, stop.set)  # never hang the suite
    guard.start()
    started = time.monotonic()
    try:
        for batch in poller.run(stop):
            return batch, time.monotonic() - started
        pytest.fail(f"run() yielded nothing within {timeout_s} s; status: {poller.status}")
    finally:
        guard.cancel()
        stop.set()


def test_ping_and_bad_requests_over_http(fake):
    with httpx.Client(base_url=fake.url) as client:
        assert client.get("/api/v3/ping").json() == {"gecko_says": "(V3) To the Moon!"}
        missing = client.get("/api/v3/simple/price", params={"ids": "bitcoin"})
        assert missing.status_code == 400 and "vs_currencies" in missing.json()["error"]
        assert client.get("/api/v3/nothing").status_code == 404


def test_poll_returns_ticks_matching_the_served_prices(fake):
    poller = poller_for(fake)
    try:
        before_us = time.time_ns() // 1000
        ticks = poller.poll_once()
        served = fake.current_prices()
    finally:
        poller.close()
    assert sorted((t.asset, t.symbol) for t in ticks) == [
        ("bitcoin", "BTCUSDT"), ("ethereum", "ETHUSDT"), ("solana", "SOLUSDT")]
    for t in ticks:
        assert (t.price_usd, t.last_updated_at_s) == served[t.asset]
        assert t.volume_24h > 0 and t.change_24h == 0.0
        assert before_us <= t.received_at_us <= time.time_ns() // 1000
    assert fake.stats.last_path.startswith("/api/v3/simple/price?ids=bitcoin%2Cethereum%2Csolana")


def test_a_second_poll_in_the_same_cache_period_returns_nothing_new(fake):
    poller = poller_for(fake)
    try:
        assert len(poller.poll_once()) == 3
        assert poller.poll_once() == []
        st = poller.status
    finally:
        poller.close()
    assert (st.polls, st.ticks, st.duplicates_skipped, st.errors) == (2, 3, 3, 0)
    assert fake.stats.requests == 2


def test_new_ticks_come_after_the_standin_updates():
    with FakeCoinGecko(update_interval_s=0.3, rate_limit_per_min=None, seed=2) as server:
        poller = poller_for(server)
        try:
            first = {t.asset: t for t in poller.poll_once()}
            time.sleep(0.35)
            second = {t.asset: t for t in poller.poll_once()}
        finally:
            poller.close()
    assert second.keys() == first.keys() == set(ASSETS.values())
    for asset, tick in second.items():
        assert tick.last_updated_at_s > first[asset].last_updated_at_s
        assert tick.price_usd != first[asset].price_usd


def test_run_waits_out_retry_after_then_succeeds(fake):
    fake.fail_next(1, status=429, retry_after_s=1.0)
    poller = poller_for(fake, interval_s=0.2)
    try:
        batch, waited_s = run_until_first_batch(poller)
        st = poller.status
    finally:
        poller.close()
    assert len(batch) == 3
    assert 1.0 <= waited_s < 2.5
    assert fake.stats.requests == 2 and fake.stats.rate_limited == 1
    assert (st.rate_limited, st.consecutive_failures, st.errors) == (1, 0, 0)
    assert "429" in st.last_error


def test_run_recovers_from_server_errors_with_backoff(fake):
    fake.fail_next(2, status=503, retry_after_s=None)
    poller = poller_for(fake, min_backoff_s=0.1, max_backoff_s=0.5)
    try:
        batch, waited_s = run_until_first_batch(poller)
        st = poller.status
    finally:
        poller.close()
    assert len(batch) == 3 and 0.1 <= waited_s < 2.0  # backoffs: [0.05, 0.1] + [0.1, 0.2]
    assert (st.errors, st.consecutive_failures, fake.stats.requests) == (2, 0, 3)


def test_the_standins_own_rate_limit_gives_retry_after():
    with FakeCoinGecko(rate_limit_per_min=2) as server:
        poller = poller_for(server)
        try:
            poller.poll_once()
            poller.poll_once()
            with pytest.raises(CoinGeckoRateLimited) as info:
                poller.poll_once()
        finally:
            poller.close()
    assert 1 <= info.value.retry_after_s <= 60
    assert "30 calls/min" in str(info.value)


def test_bad_json_and_unreachable_server_are_retryable_errors(fake):
    fake.fail_next(1, status=200, retry_after_s=None, body=b"<html>Cloudflare</html>")
    poller = poller_for(fake)
    try:
        with pytest.raises(CoinGeckoError, match="not JSON") as info:
            poller.poll_once()
        assert info.value.retryable
        port = fake.port
        fake.stop()
        with pytest.raises(CoinGeckoError, match=f"could not reach CoinGecko at .*:{port}"):
            poller.poll_once()
    finally:
        poller.close()
    assert poller.status.errors == 2


def test_api_key_is_sent_and_required_key_works():
    with FakeCoinGecko(require_api_key=KEY, rate_limit_per_min=None) as server:
        poller = poller_for(server, api_key=KEY)
        try:
            assert len(poller.poll_once()) == 3
        finally:
            poller.close()
        assert server.stats.last_headers[API_KEY_HEADER] == KEY
        assert server.stats.unauthorized == 0


@pytest.mark.parametrize("api_key", [None, "CG-wrong-Key-99"])
def test_missing_or_wrong_key_gives_a_clear_error_without_the_key(api_key):
    with FakeCoinGecko(require_api_key=KEY, rate_limit_per_min=None) as server:
        poller = poller_for(server, api_key=api_key)
        try:
            with pytest.raises(CoinGeckoError, match="HTTP 401") as info:
                poller.poll_once()
            with pytest.raises(CoinGeckoError):  # run() raises too: waiting cannot fix a key
                next(poller.run(threading.Event()))
            texts = [str(info.value), repr(poller), repr(poller.status)]
        finally:
            poller.close()
        assert server.stats.unauthorized == 2
    assert not info.value.retryable
    assert ("set COINGECKO_API_KEY" if api_key is None else "check that COINGECKO_API_KEY") \
        in texts[0]
    for secret in filter(None, [KEY, api_key]):
        assert not [t for t in texts if secret in t]
