"""CoinGecko reference prices without any network: symbol mapping, body validation, dedup of
unchanged ``last_updated_at``, backoff and Retry-After, HTTP error mapping, the ``run`` loop
(``httpx.MockTransport`` and a fake clock) and the stand-in's ``respond`` (no sockets)."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time

import httpx
import pytest

from cryptostream.errors import ConfigError, SourceError
from cryptostream.sources.coingecko import (
    API_KEY_HEADER,
    DEFAULT_ASSETS,
    CoinGeckoError,
    CoinGeckoPoller,
    CoinGeckoRateLimited,
    ReferenceTick,
    assets_for,
    backoff_delay_s,
    parse_retry_after,
    parse_simple_price,
)
from cryptostream.standins.coingecko import FakeCoinGecko

T0_S = 1_723_161_600
KEY = "CG-sekrit-Key-123"
BTC_ETH = {"BTCUSDT": "bitcoin", "ETHUSDT": "ethereum"}


def entry(price=61234.5, ts=T0_S, vol=1.2e10, change=-1.23) -> dict:
    return {"usd": price, "usd_24h_vol": vol, "usd_24h_change": change, "last_updated_at": ts}


def ok(ts=T0_S, **assets) -> httpx.Response:
    body = assets or {"bitcoin": entry(ts=ts), "ethereum": entry(2700.0, ts=ts, vol=5e9)}
    return httpx.Response(200, json=body)


class FakeTime:
    """Monotonic and wall clocks that only move when ``sleep`` is called."""

    def __init__(self):
        self.mono = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return T0_S + self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.mono += seconds


def make_poller(responses, *, stop: threading.Event | None = None, clock: FakeTime | None = None,
                assets=BTC_ETH, **kw):
    """A poller over a MockTransport answering ``responses`` in order (an exception class is
    raised instead); ``calls`` records (fake monotonic time, request). Sets ``stop`` when the
    last response is used."""
    queue, calls = list(responses), []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((clock.mono if clock else None, request))
        item = queue.pop(0)
        if not queue and stop is not None:
            stop.set()
        if isinstance(item, type):
            raise item("simulated failure", request=request)
        return item

    if clock is not None:
        kw.update(clock=clock.wall, monotonic=clock.monotonic, sleep=clock.sleep)
    poller = CoinGeckoPoller(assets, base_url="http://cg.test",
                             client=httpx.Client(transport=httpx.MockTransport(handler)), **kw)
    return poller, calls


# -- mapping ------------------------------------------------------------------------------

def test_default_assets_cover_the_common_binance_symbols():
    assert len(DEFAULT_ASSETS) >= 15
    expected = {"BTCUSDT": "bitcoin", "ETHUSDT": "ethereum", "BNBUSDT": "binancecoin",
                "SOLUSDT": "solana", "XRPUSDT": "ripple", "ADAUSDT": "cardano",
                "DOGEUSDT": "dogecoin"}
    assert expected.items() <= DEFAULT_ASSETS.items()
    assert all(s.endswith("USDT") and s.isupper() for s in DEFAULT_ASSETS)


def test_assets_for_ignores_case_skips_unknown_and_takes_extra():
    got = assets_for([" btcusdt", "SOLUSDT", "FOOUSDT", "XYZBTC"],
                     extra={"xyzbtc": "xyz-coin", "SOLUSDT": "solana-override"})
    assert got == {"BTCUSDT": "bitcoin", "SOLUSDT": "solana-override", "XYZBTC": "xyz-coin"}
    assert assets_for([]) == {}
    assert assets_for(["FOOUSDT"], extra={"FOOUSDT": ""}) == {}  # empty id = unmapped


# -- parsing ------------------------------------------------------------------------------

def test_parse_maps_every_field():
    body = json.dumps({"bitcoin": entry(), "ethereum": entry(2700.0, vol=5e9, change=0.5)})
    p = parse_simple_price(body, {"bitcoin": ("BTCUSDT",), "ethereum": ("ETHUSDT",)}, 42)
    assert p.ticks == (
        ReferenceTick("bitcoin", "BTCUSDT", 61234.5, 1.2e10, -1.23, T0_S, 42),
        ReferenceTick("ethereum", "ETHUSDT", 2700.0, 5e9, 0.5, T0_S, 42),
    )
    assert p.rejected == () and p.missing == ()


def test_parse_one_tick_per_symbol_and_empty_symbol_for_unmapped_ids():
    body = json.dumps({"bitcoin": entry(), "tether": entry(1.0)})
    p = parse_simple_price(body.encode(), {"bitcoin": ("BTCUSDT", "BTCUSDC"), "tether": ()}, 1)
    assert [(t.asset, t.symbol) for t in p.ticks] == [
        ("bitcoin", "BTCUSDT"), ("bitcoin", "BTCUSDC"), ("tether", "")]


def test_parse_null_or_absent_optional_fields_become_none():
    body = {"bitcoin": {"usd": 1.5, "usd_24h_vol": None, "last_updated_at": T0_S},
            "ethereum": {"usd": 7, "last_updated_at": T0_S + 0.0}}
    p = parse_simple_price(json.dumps(body), {"bitcoin": ("B",), "ethereum": ("E",)}, 0)
    assert [(t.price_usd, t.volume_24h, t.change_24h, t.last_updated_at_s) for t in p.ticks] == [
        (1.5, None, None, T0_S), (7.0, None, None, T0_S)]
    assert isinstance(p.ticks[1].last_updated_at_s, int)


@pytest.mark.parametrize(("bad_entry", "reason"), [
    ({"usd_24h_vol": 1.0, "last_updated_at": T0_S}, "no 'usd'"),
    ({"usd": "61234.5", "last_updated_at": T0_S}, "'usd' is not a number"),
    ({"usd": True, "last_updated_at": T0_S}, "'usd' is not a number"),
    ({"usd": float("nan"), "last_updated_at": T0_S}, "'usd' is not finite"),
    ({"usd": 0, "last_updated_at": T0_S}, "'usd' is not positive"),
    ({"usd": -3.0, "last_updated_at": T0_S}, "'usd' is not positive"),
    ({"usd": 1.0}, "no 'last_updated_at'"),
    ({"usd": 1.0, "last_updated_at": "yesterday"}, "'last_updated_at' is not a number"),
    ({"usd": 1.0, "last_updated_at": 0}, "'last_updated_at' is not positive"),
    ({"usd": 1.0, "usd_24h_vol": -5.0, "last_updated_at": T0_S}, "'usd_24h_vol' is negative"),
    ({"usd": 1.0, "usd_24h_change": float("inf"), "last_updated_at": T0_S}, "is not finite"),
    ([1.0, 2.0], "entry is not an object"),
    ("61234.5", "entry is not an object"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_parse_drops_a_malformed_entry_and_keeps_the_others(bad_entry, reason):
    body = json.dumps({"bitcoin": bad_entry, "ethereum": entry(2700.0)})  # NaN/inf as JSON literals
    p = parse_simple_price(body, {"bitcoin": ("BTCUSDT",), "ethereum": ("ETHUSDT",)}, 0)
    assert [t.asset for t in p.ticks] == ["ethereum"]
    assert len(p.rejected) == 1 and p.rejected[0].startswith("bitcoin: ")
    assert reason in p.rejected[0]


def test_parse_lists_requested_ids_absent_from_the_answer_and_ignores_unrequested_ones():
    body = json.dumps({"bitcoin": entry(), "dogecoin": entry(0.1), "solana": None})
    p = parse_simple_price(body, {"bitcoin": ("BTCUSDT",), "notacoin": ("NOPE",), "solana": ()}, 0)
    assert [t.asset for t in p.ticks] == ["bitcoin"]
    assert p.missing == ("notacoin", "solana") and p.rejected == ()


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"", b"[1, 2]", b'"x"',
                                  b"\xff\xfe garbage"])
def test_parse_a_body_that_is_not_a_json_object_is_a_retryable_error(body):
    with pytest.raises(CoinGeckoError, match="will be retried") as info:
        parse_simple_price(body, {"bitcoin": ("BTCUSDT",)}, 0)
    assert info.value.retryable and isinstance(info.value, SourceError)


# -- backoff and Retry-After --------------------------------------------------------------

def test_backoff_is_seeded_bounded_exponential_and_capped():
    first = [backoff_delay_s(n, random.Random(7), 1.0, 30.0) for n in range(1, 12)]
    again = [backoff_delay_s(n, random.Random(7), 1.0, 30.0) for n in range(1, 12)]
    assert first == again
    rng = random.Random(3)
    for n in range(1, 40):
        ceiling = min(30.0, 2.0 ** (n - 1))
        for _ in range(20):
            assert ceiling / 2 <= backoff_delay_s(n, rng, 1.0, 30.0) <= ceiling
    assert backoff_delay_s(0, rng) == 0.0
    assert backoff_delay_s(10_000, rng, 1.0, 300.0) <= 300.0


@pytest.mark.parametrize(("value", "expected"), [
    ("5", 5.0), (" 12 ", 12.0), ("0.5", 0.5), ("0", 0.0), ("-3", 0.0),
    ("Thu, 01 Jan 1970 00:01:00 GMT", 30.0),  # 60 s after the epoch, asked at 30 s
    ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),  # already past
    ("soon", None), ("", None), ("nan", None), ("inf", None), (None, None),
])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, 30.0) == expected


# -- poll_once ----------------------------------------------------------------------------

def test_poll_once_sends_the_documented_request_and_stamps_receive_time():
    clock = FakeTime()
    poller, calls = make_poller([ok()], clock=clock, api_key=KEY)
    ticks = poller.poll_once()
    request = calls[0][1]
    assert request.url.path == "/api/v3/simple/price"
    assert dict(request.url.params) == {
        "ids": "bitcoin,ethereum", "vs_currencies": "usd", "include_24hr_vol": "true",
        "include_24hr_change": "true", "include_last_updated_at": "true"}
    assert request.headers[API_KEY_HEADER] == KEY
    assert [t.symbol for t in ticks] == ["BTCUSDT", "ETHUSDT"]
    assert {t.received_at_us for t in ticks} == {T0_S * 1_000_000}
    assert poller.status.last_success_at_us == T0_S * 1_000_000


def test_poll_once_without_key_sends_no_key_header():
    poller, calls = make_poller([ok()])
    poller.poll_once()
    assert API_KEY_HEADER not in calls[0][1].headers


def test_poll_once_returns_each_last_updated_at_once():
    poller, _ = make_poller([ok(T0_S), ok(T0_S), ok(T0_S - 60), ok(T0_S + 60),
                             ok(bitcoin=entry(ts=T0_S + 120), ethereum=entry(ts=T0_S + 60))])
    assert len(poller.poll_once()) == 2
    assert poller.poll_once() == []  # CoinGecko's cache: same last_updated_at
    assert poller.poll_once() == []  # an older answer from a stale edge
    assert [t.last_updated_at_s for t in poller.poll_once()] == [T0_S + 60] * 2
    assert [(t.asset, t.last_updated_at_s) for t in poller.poll_once()] == [
        ("bitcoin", T0_S + 120)]
    st = poller.status
    assert (st.polls, st.ticks, st.duplicates_skipped, st.stale_skipped) == (5, 5, 3, 2)


def test_poll_once_counts_rejected_entries_and_missing_assets():
    assets = {**BTC_ETH, "NOPEUSDT": "notacoin"}
    poller, _ = make_poller([ok(bitcoin=entry(), ethereum={"usd": "n/a", "last_updated_at": 1})],
                            assets=assets)
    assert [t.asset for t in poller.poll_once()] == ["bitcoin"]
    assert poller.status.rejected_entries == 1
    assert poller.status.missing_assets == ("notacoin",)


@pytest.mark.parametrize(("response", "kind", "retryable", "words"), [
    (httpx.Response(429, headers={"Retry-After": "3"}), CoinGeckoRateLimited, True,
     ["429", "wait 3 s", "interval_s", "COINGECKO_API_KEY"]),
    (httpx.Response(429), CoinGeckoRateLimited, True, ["429", "unspecified"]),
    (httpx.Response(503, text="upstream down"), CoinGeckoError, True,
     ["503", "upstream down", "retried"]),
    (httpx.Response(401, json={"status": {"error_message": "API Key Missing"}}), CoinGeckoError,
     False, ["401", "API Key Missing", "set COINGECKO_API_KEY"]),
    (httpx.Response(404, text="Not Found"), CoinGeckoError, False, ["404", "base_url"]),
    (httpx.Response(200, text="<html>maintenance</html>"), CoinGeckoError, True,
     ["not JSON", "maintenance"]),
    (httpx.ConnectError, CoinGeckoError, True, ["could not reach", "cg.test", "network"]),
    (httpx.ReadTimeout, CoinGeckoError, True, ["did not answer within 10 s", "timeout_s"]),
], ids=["429", "429-no-header", "503", "401", "404", "html", "connect", "timeout"])
def test_poll_once_failures_say_what_happened_and_what_to_do(response, kind, retryable, words):
    poller, _ = make_poller([response])
    with pytest.raises(kind) as info:
        poller.poll_once()
    assert type(info.value) is kind and info.value.retryable is retryable
    for word in words:
        assert word in str(info.value)
    st = poller.status
    assert st.consecutive_failures == 1 and st.last_error == str(info.value)
    assert (st.rate_limited, st.errors) == ((1, 0) if kind is CoinGeckoRateLimited else (0, 1))
    if kind is CoinGeckoRateLimited:
        assert info.value.retry_after_s == (3.0 if "Retry-After" in response.headers else None)


def test_the_api_key_never_shows_in_repr_status_or_errors():
    echo = httpx.Response(401, text=f"invalid key {KEY}")
    poller, _ = make_poller([echo, httpx.Response(500, text=f"boom {KEY}"), ok()], api_key=KEY)
    texts = [repr(poller)]
    for _ in range(2):
        with pytest.raises(CoinGeckoError) as info:
            poller.poll_once()
        texts += [str(info.value), poller.status.last_error]
    poller.poll_once()
    texts.append(repr(poller.status))
    assert "<redacted>" in texts[0] and "check that COINGECKO_API_KEY" in texts[1]
    assert not [t for t in texts if KEY in t]


def test_closed_poller_refuses_to_poll():
    poller, _ = make_poller([ok()])
    poller.close()
    poller.close()
    with pytest.raises(CoinGeckoError, match="closed"):
        poller.poll_once()


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"assets": {}}, "no assets"),
    ({"assets": {"BTCUSDT": " "}}, "empty"),
    ({"interval_s": 0}, "interval_s must be a positive"),
    ({"timeout_s": float("nan")}, "timeout_s"),
    ({"min_backoff_s": 10, "max_backoff_s": 5}, "exceeds max_backoff_s"),
    ({"base_url": "api.coingecko.com"}, "base_url must look like"),
    ({"api_key": "CG-abc def"}, "cannot go in an HTTP header"),
])
def test_bad_settings_raise_config_errors(kwargs, words):
    kwargs = {"assets": BTC_ETH, **kwargs}
    with pytest.raises(ConfigError, match=words) as info:
        CoinGeckoPoller(**kwargs)
    assert "abc def" not in str(info.value)


# -- run ----------------------------------------------------------------------------------

def request_gaps(calls) -> list[float]:
    times = [t for t, _ in calls]
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


def test_run_backs_off_honours_retry_after_and_resets_after_success():
    stop, clock = threading.Event(), FakeTime()
    responses = [httpx.Response(500), httpx.ConnectError, httpx.Response(429, headers={
        "Retry-After": "7"}), ok(T0_S), ok(T0_S), httpx.Response(502), ok(T0_S + 60)]
    poller, calls = make_poller(responses, stop=stop, clock=clock, interval_s=60.0,
                                min_backoff_s=2.0, max_backoff_s=100.0, seed=5)
    batches = list(poller.run(stop))
    assert [[t.last_updated_at_s for t in b] for b in batches] == [[T0_S] * 2, [T0_S + 60] * 2]
    rng = random.Random(5)
    expected = [backoff_delay_s(1, rng, 2.0, 100.0), backoff_delay_s(2, rng, 2.0, 100.0), 7.0,
                60.0, 60.0, backoff_delay_s(1, rng, 2.0, 100.0)]
    assert request_gaps(calls) == pytest.approx(expected)
    assert 1.0 <= expected[0] <= 2.0 and 2.0 <= expected[1] <= 4.0
    assert max(clock.sleeps) <= 0.2 + 1e-9  # stop is looked at at least every 0.2 s
    st = poller.status
    assert (st.polls, st.errors, st.rate_limited, st.consecutive_failures) == (7, 3, 1, 0)
    assert (st.duplicates_skipped, st.ticks, st.next_poll_in_s) == (2, 4, 0.0)
    assert "502" in st.last_error  # kept after recovery, for diagnosis


def test_run_caps_retry_after_and_backoff_at_max_backoff_s():
    stop, clock = threading.Event(), FakeTime()
    far = "Fri, 01 Jan 2100 00:00:00 GMT"
    responses = [httpx.Response(429, headers={"Retry-After": "86400"}),
                 httpx.Response(429, headers={"Retry-After": far})] + [httpx.Response(500)] * 8
    poller, calls = make_poller(responses, stop=stop, clock=clock, max_backoff_s=20.0)
    assert list(poller.run(stop)) == []
    gaps = request_gaps(calls)
    assert gaps[:2] == [20.0, 20.0] and all(g <= 20.0 for g in gaps)
    assert gaps[-1] >= 10.0  # ceiling reached: at least half of max_backoff_s


def test_run_backs_off_when_retry_after_is_zero():
    stop, clock = threading.Event(), FakeTime()
    responses = [httpx.Response(429, headers={"Retry-After": "0"}), ok()]
    poller, calls = make_poller(responses, stop=stop, clock=clock, min_backoff_s=4.0)
    assert len(list(poller.run(stop))) == 1
    assert 2.0 <= request_gaps(calls)[0] <= 4.0


def test_run_raises_what_waiting_cannot_fix():
    stop = threading.Event()
    poller, calls = make_poller([httpx.Response(500), httpx.Response(401), ok()],
                                clock=FakeTime())
    with pytest.raises(CoinGeckoError, match="401") as info:
        list(poller.run(stop))
    assert not info.value.retryable and len(calls) == 2


def test_run_stops_promptly_while_waiting_for_the_next_poll():
    stop = threading.Event()
    poller, _ = make_poller([ok(), ok()], interval_s=60.0)
    gen = poller.run(stop)
    assert len(next(gen)) == 2
    assert poller.status.next_poll_in_s > 59
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    assert list(gen) == []
    assert time.monotonic() - started < 0.6


# -- the stand-in, without sockets -------------------------------------------------------

PRICE = "/api/v3/simple/price?ids={ids}&vs_currencies={cur}"


def answer(fake, target, headers=None):
    status, extra, body = fake.respond(target, headers or {})
    return status, extra, json.loads(body)


def test_standin_sends_only_the_included_fields_and_omits_unknown_ids():
    fake = FakeCoinGecko(prices={"bitcoin": 60_000.0, "ethereum": 2_700.0})
    _, _, plain = answer(fake, PRICE.format(ids="Bitcoin,notacoin", cur="usd"))
    assert plain == {"bitcoin": {"usd": 60_000.0}}
    _, _, full = answer(fake, PRICE.format(ids="bitcoin,ethereum", cur="usd,eur,xyz")
                        + "&include_24hr_vol=true&include_24hr_change=true"
                        "&include_last_updated_at=true&include_market_cap=false")
    assert set(full["ethereum"]) == {"usd", "usd_24h_vol", "usd_24h_change", "eur", "eur_24h_vol",
                                     "eur_24h_change", "last_updated_at"}
    assert full["ethereum"]["usd_24h_change"] == 0.0
    assert abs(full["bitcoin"]["last_updated_at"] - time.time()) < 5


@pytest.mark.parametrize("query", ["vs_currencies=usd", "ids=bitcoin", "ids=,&vs_currencies=usd"])
def test_standin_missing_parameters_are_a_400_with_a_json_error(query):
    fake = FakeCoinGecko()
    status, _, body = answer(fake, "/api/v3/simple/price?" + query)
    assert status == 400 and "Missing parameter" in body["error"]
    assert fake.stats.bad_requests == 1


def test_standin_walk_is_seeded_stepwise_and_stamps_growing_seconds():
    fakes = [FakeCoinGecko(seed=3), FakeCoinGecko(seed=3), FakeCoinGecko(seed=4)]
    for fake in fakes:
        fake.update_now()
        fake.update_now()
    paths = [{a: p for a, (p, _) in f.current_prices().items()} for f in fakes]
    assert paths[0] == paths[1] != paths[2]
    fake = fakes[0]
    target = PRICE.format(ids="bitcoin", cur="usd") + "&include_last_updated_at=true"
    first, again = answer(fake, target)[2], answer(fake, target)[2]
    assert first == again  # between steps the cached values come back
    fake.update_now()
    after = answer(fake, target)[2]["bitcoin"]
    assert after["last_updated_at"] > first["bitcoin"]["last_updated_at"]
    assert after["usd"] != first["bitcoin"]["usd"]
    assert fake.stats.updates == 3


def test_standin_faults_key_and_rate_limit_in_that_order():
    fake = FakeCoinGecko(rate_limit_per_min=2, require_api_key=KEY)
    fake.fail_next(1, status=503, retry_after_s=0.5)
    fake.fail_next(1, status=200, retry_after_s=None, body=b"<html>")
    status, extra, _ = fake.respond("/api/v3/ping", {})
    assert (status, extra["Retry-After"]) == (503, "0.5")
    assert fake.respond("/api/v3/ping", {})[::2] == (200, b"<html>")
    assert answer(fake, "/api/v3/ping", {})[2]["status"]["error_message"] == "API Key Missing"
    assert answer(fake, "/api/v3/ping", {API_KEY_HEADER: "nope"})[0] == 401
    good = {API_KEY_HEADER: KEY}
    for _ in range(2):  # the two requests the minute allows
        assert answer(fake, "/api/v3/ping", good)[::2] == (200, {"gecko_says": "(V3) To the Moon!"})
    status, extra, body = answer(fake, "/api/v3/ping", good)
    assert status == 429 and 1 <= int(extra["Retry-After"]) <= 60
    assert body["status"]["error_code"] == 429
    st = fake.stats
    assert (st.requests, st.injected, st.unauthorized, st.rate_limited) == (7, 2, 2, 1)
    assert st.last_headers == good and st.last_path == "/api/v3/ping"
    assert KEY not in repr(fake)
