"""The Binance stand-in (``cryptostream.standins.binance``) over real loopback sockets.

Every test starts its own server (the ``fake_binance`` fixture) on a free port and talks to
it with the websockets client, httpx or a raw socket, replaying the real recordings in
``tests/fixtures/real`` at a high ``speed`` so that each test takes a few seconds at most.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.protocol import State

from cryptostream.errors import SourceError
from cryptostream.standins.binance import FakeBinance
from cryptostream.standins.binance_data import AGG_ID_BASE

pytestmark = pytest.mark.integration

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "real"
BTC_JSONL = REAL / "btcusdt-trade-stream.jsonl"
ETH_JSONL = REAL / "ethusdt-trade-stream.jsonl"
BTC_RAW_GZ = REAL / "btcusdt-ws-raw-20240808.hftbacktest.gz"
BTC_CSV = REAL / "BTCUSDT-trades-2024-08-08.csv"
ETH_CSV = REAL / "ETHUSDT-trades-2024-08-08.csv"
BTC_2025_US_CSV = REAL / "BTCUSDT-trades-2025-01-01-first210.csv"
CRYPTOFEED = REAL / "cryptofeed-capture-2021-10-12.txt"
BTC_FIRST_ID = 3735683259
BTC_FIRST_T = 1723161255342
FAST = 500.0  # the 6-minute recordings in under a second


def lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def data_of(line: str) -> str:
    """The recorded ``data`` payload of a combined-stream line, as text."""
    return line[line.index('"data":') + 7:-1]


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def collect(url: str, n: int, timeout: float = 10, send: list[dict] | None = None
                  ) -> list[str]:
    """The first ``n`` text frames a client of ``url`` gets (after sending ``send``)."""
    out: list[str] = []
    async with connect(url, max_queue=None) as ws:
        for request in send or ():
            await ws.send(json.dumps(request))
        async with asyncio.timeout(timeout):
            while len(out) < n:
                out.append(await ws.recv())
    return out


async def start_clock(server: FakeBinance) -> None:
    """Subscribe once (which starts the replay clock) and leave."""
    await collect(f"{server.ws_url}/ws", 1, send=[{"method": "SUBSCRIBE",
                                                   "params": ["nothing@trade"], "id": 1}])


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# -- loading --------------------------------------------------------------------------------
def test_loads_every_recording_format(tmp_path):
    jsonl = FakeBinance([BTC_JSONL])
    trades = jsonl.trades("BTCUSDT")
    assert jsonl.symbols == ["BTCUSDT"] and len(trades) == 9757
    assert [t.raw for t in trades] == [data_of(ln) for ln in lines(BTC_JSONL)]
    assert trades[0].id == BTC_FIRST_ID and trades[0].price == "61837.63000000"

    hft = FakeBinance([BTC_RAW_GZ]).trades("BTCUSDT")  # gzip, "<ns> {json}", mixed events
    assert hft == trades

    csv = FakeBinance([BTC_CSV]).trades("BTCUSDT")
    assert [(t.id, t.price, t.qty, t.time, t.buyer_maker) for t in csv] == [
        (t.id, t.price, t.qty, t.time, t.buyer_maker) for t in trades]
    assert all(t.event_time == t.time and t.raw is None for t in csv)

    us = FakeBinance([BTC_2025_US_CSV]).trades("BTCUSDT")  # µs times -> ms, floored
    first_row = BTC_2025_US_CSV.read_text().splitlines()[0].split(",")
    assert len(us) == 210 and us[0].time == int(first_row[4]) // 1000

    # SYMBOL=PATH for a CSV with another name, gzip and zip; raw payload lines with a prefix
    plain = tmp_path / "eth.csv"
    plain.write_bytes(ETH_CSV.read_bytes())
    gz = tmp_path / "eth.csv.gz"
    gz.write_bytes(gzip.compress(ETH_CSV.read_bytes()))
    zipped = tmp_path / "ETHUSDT-trades-2024-08-08.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(ETH_CSV, "ETHUSDT-trades-2024-08-08.csv")
    raw = tmp_path / "eth-raw.txt"
    raw.write_text("".join(f"{1_000 + i}: {data_of(ln)}\n" for i, ln in enumerate(lines(ETH_JSONL))))
    eth = FakeBinance([ETH_JSONL]).trades("ETHUSDT")
    key = [(t.id, t.price, t.qty, t.time) for t in eth]
    for spec in (f"ETHUSDT={plain}", f"ETHUSDT={gz}", str(zipped), str(raw)):
        got = FakeBinance([spec]).trades("ETHUSDT")
        assert [(t.id, t.price, t.qty, t.time) for t in got] == key, spec
    assert FakeBinance([raw]).trades("ETHUSDT") == eth  # same payloads, verbatim

    both = FakeBinance([BTC_JSONL, ETH_CSV, BTC_CSV])  # BTC twice: first one loaded wins
    assert both.symbols == ["BTCUSDT", "ETHUSDT"] and both.trade_count == 9757 + 6106
    assert both.trades("BTCUSDT") == trades
    assert FakeBinance([f"ETHUSDT={BTC_JSONL}", ETH_JSONL]).symbols == ["ETHUSDT"]


def test_unusable_recordings_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        FakeBinance([tmp_path / "missing.jsonl"])
    with pytest.raises(SourceError, match="no trades"):
        FakeBinance([CRYPTOFEED])  # aggTrade, kline, depth: no trade events
    anonymous = tmp_path / "trades.csv"
    anonymous.write_bytes(BTC_CSV.read_bytes())
    with pytest.raises(SourceError, match="SYMBOL="):
        FakeBinance([anonymous])


def test_loading_100k_trades_is_fast(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as fh:
        fh.writelines(f'{{"stream":"btcusdt@trade","data":{{"e":"trade","E":{BTC_FIRST_T + i},'
                      f'"s":"BTCUSDT","t":{i},"p":"6{i % 10}000.01000000","q":"0.00100000",'
                      f'"T":{BTC_FIRST_T + i},"m":true,"M":true}}}}\n' for i in range(100_000))
    started = time.perf_counter()
    server = FakeBinance([path])
    assert server.trade_count == 100_000
    assert time.perf_counter() - started < 3.0


# -- streams --------------------------------------------------------------------------------
def test_combined_stream_sends_every_trade_verbatim_in_order(fake_binance):
    server = fake_binance([BTC_JSONL, ETH_JSONL], speed=FAST)
    assert server.clock_ms() is None  # the clock waits for the first subscription
    url = f"{server.ws_url}/stream?streams=btcusdt@trade/ethusdt@trade"
    got = run(collect(url, 9757 + 6106))
    assert [m for m in got if m.startswith('{"stream":"btcusdt@trade"')] == lines(BTC_JSONL)
    assert [m for m in got if m.startswith('{"stream":"ethusdt@trade"')] == lines(ETH_JSONL)
    times = [json.loads(m)["data"]["T"] for m in got]
    assert times == sorted(times)  # both symbols merged on the one replay clock
    wait_for(lambda: server.finished)
    assert server.stats.trade_messages_sent == len(got)


def test_raw_stream_and_csv_payloads(fake_binance):
    server = fake_binance([ETH_JSONL], speed=FAST)
    got = run(collect(f"{server.ws_url}/ws/ethusdt@trade", 6106))
    assert got == [data_of(ln) for ln in lines(ETH_JSONL)]
    # a CSV has no payload: the event is built from the row (E = T), numbers as recorded
    csv = fake_binance([BTC_CSV], speed=FAST)
    first = run(collect(f"{csv.ws_url}/ws/btcusdt@trade", 1))[0]
    assert first == ('{"e":"trade","E":1723161255342,"s":"BTCUSDT","t":3735683259,'
                     '"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}')


def test_subscribe_list_unsubscribe_and_bad_requests(fake_binance):
    server = fake_binance([BTC_JSONL], speed=1.0, max_incoming_per_s=100)

    async def scenario():
        async with connect(f"{server.ws_url}/ws", max_queue=None) as ws:
            async def ask(request) -> dict:
                await ws.send(request if isinstance(request, str) else json.dumps(request))
                while True:  # skip trades until the reply
                    msg = json.loads(await ws.recv())
                    if "result" in msg or "error" in msg:
                        return msg

            assert await ask({"method": "LIST_SUBSCRIPTIONS", "id": 3}) == {"result": [], "id": 3}
            assert server.clock_ms() is None
            assert await ask({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "xyzusdt@trade"],
                              "id": 1}) == {"result": None, "id": 1}
            first = json.loads(await ws.recv())  # raw payload, the first trade of the file
            assert first["t"] == BTC_FIRST_ID and "stream" not in first
            assert server.clock_ms() is not None
            assert await ask({"method": "LIST_SUBSCRIPTIONS", "id": "a-1"}) == {
                "result": ["btcusdt@trade", "xyzusdt@trade"], "id": "a-1"}
            assert await ask({"method": "GET_PROPERTY", "params": ["combined"], "id": 4}) == {
                "result": False, "id": 4}
            assert await ask({"method": "SET_PROPERTY", "params": ["combined", True],
                              "id": 5}) == {"result": None, "id": 5}
            wrapped = json.loads(await ws.recv())
            assert wrapped["stream"] == "btcusdt@trade" and wrapped["data"]["e"] == "trade"
            assert await ask({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 6}) == {
                "result": None, "id": 6}
            assert await ask({"method": "LIST_SUBSCRIPTIONS", "id": 7}) == {
                "result": ["xyzusdt@trade"], "id": 7}
            errors = [
                ("{not json", 3, None),
                ({"method": "PUBLISH", "params": [], "id": 8}, 2, 8),
                ({"params": [], "id": 9}, 2, 9),
                ({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1.5}, 2, None),
                ({"method": "SUBSCRIBE", "params": "btcusdt@trade", "id": 10}, 2, 10),
                ({"method": "SUBSCRIBE", "params": ["bad stream"], "id": 11}, 2, 11),
                ({"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 12}, 1, 12),
                ({"method": "GET_PROPERTY", "params": ["colour"], "id": 13}, 0, 13),
            ]
            for request, code, rid in errors:
                reply = await ask(request)
                assert reply["error"]["code"] == code and reply["id"] == rid, (request, reply)
                assert reply["error"]["msg"]
            # at most 1024 streams per connection
            many = [f"s{i}usdt@trade" for i in range(1023)]
            assert (await ask({"method": "SUBSCRIBE", "params": many, "id": 14}))["result"] is None
            reply = await ask({"method": "SUBSCRIBE", "params": ["one@trade", "two@trade"],
                               "id": 15})
            assert reply["error"]["code"] == 2 and "1024" in reply["error"]["msg"]

    run(scenario())
    assert server.stats.control_messages == 17


def test_agg_trade_stream_and_rest_aggregate_exactly(fake_binance):
    server = fake_binance([ETH_CSV], speed=FAST)
    trades = server.trades("ETHUSDT")
    expected = len(server.agg_trades("ETHUSDT"))
    assert 0 < expected < len(trades)
    got = [json.loads(m) for m in run(collect(f"{server.ws_url}/ws/ethusdt@aggTrade", expected))]
    assert [a["a"] for a in got] == list(range(AGG_ID_BASE, AGG_ID_BASE + expected))
    assert got[0]["f"] == trades[0].id and got[-1]["l"] == trades[-1].id
    by_id = {t.id: t for t in trades}
    for prev, agg in zip([None, *got], got):
        group = [by_id[i] for i in range(agg["f"], agg["l"] + 1)]
        assert agg["e"] == "aggTrade" and agg["s"] == "ETHUSDT"
        assert {(t.time, t.price, t.buyer_maker) for t in group} == {(agg["T"], agg["p"], agg["m"])}
        total = sum(Decimal(t.qty) for t in group)
        assert Decimal(agg["q"]) == total and agg["q"] == f"{total:.8f}"
        if prev is not None:  # groups are maximal and cover every trade
            assert agg["f"] == prev["l"] + 1
            assert (prev["T"], prev["p"], prev["m"]) != (agg["T"], agg["p"], agg["m"])
    rest = httpx.get(f"{server.rest_url}/api/v3/aggTrades",
                     params={"symbol": "ETHUSDT", "fromId": AGG_ID_BASE + 10, "limit": 3}).json()
    assert [(r["a"], r["p"], r["q"], r["f"], r["l"], r["T"], r["m"]) for r in rest] == [
        (a["a"], a["p"], a["q"], a["f"], a["l"], a["T"], a["m"]) for a in got[10:13]]
    window = httpx.get(f"{server.rest_url}/api/v3/aggTrades",
                       params={"symbol": "ETHUSDT", "startTime": got[20]["T"],
                               "endTime": got[30]["T"]}).json()
    assert {r["a"] for r in window} >= {a["a"] for a in got[21:30]}
    assert all(got[20]["T"] <= r["T"] <= got[30]["T"] for r in window)


# -- REST -----------------------------------------------------------------------------------
def test_rest_serves_only_what_has_happened(fake_binance):
    server = fake_binance([BTC_JSONL], speed=20.0)
    rest = server.rest_url
    params = {"symbol": "BTCUSDT", "fromId": BTC_FIRST_ID, "limit": 1000}
    assert httpx.get(f"{rest}/api/v3/historicalTrades", params=params).json() == []
    assert httpx.get(f"{rest}/api/v3/time").json() == {"serverTime": BTC_FIRST_T}
    assert httpx.get(f"{rest}/api/v3/ping").json() == {}
    run(start_clock(server))
    time.sleep(1.0)
    trades = server.trades("BTCUSDT")
    before = httpx.get(f"{rest}/api/v3/time").json()["serverTime"]
    got = httpx.get(f"{rest}/api/v3/historicalTrades", params=params).json()
    after = httpx.get(f"{rest}/api/v3/time").json()["serverTime"]
    assert BTC_FIRST_T + 15_000 < before <= after
    low = sum(t.time <= before for t in trades)
    high = sum(t.time <= after for t in trades)
    assert low <= len(got) <= high and 0 < len(got) < 1000
    assert [r["id"] for r in got] == [t.id for t in trades[:len(got)]]
    assert got[0] == {"id": BTC_FIRST_ID, "price": "61837.63000000", "qty": "0.02000000",
                      "quoteQty": "1236.75260000", "time": BTC_FIRST_T, "isBuyerMaker": True,
                      "isBestMatch": True}
    recent = httpx.get(f"{rest}/api/v3/trades", params={"symbol": "BTCUSDT", "limit": 5}).json()
    assert len(recent) == 5 and all(r["time"] <= httpx.get(f"{rest}/api/v3/time").json()[
        "serverTime"] for r in recent)


def test_rest_pagination_limits_weights_and_errors(fake_binance):
    server = fake_binance([BTC_JSONL], speed=1e6)
    run(start_clock(server))
    wait_for(lambda: server.finished)
    rest = server.rest_url
    csv_rows = [ln.split(",") for ln in BTC_CSV.read_text().splitlines()]
    pages, from_id, requests = [], BTC_FIRST_ID, 0
    with httpx.Client(base_url=rest) as client:
        while True:
            requests += 1
            page = client.get("/api/v3/historicalTrades",
                              params={"symbol": "BTCUSDT", "fromId": from_id, "limit": 1000}).json()
            if not page:
                break
            pages += page
            from_id = page[-1]["id"] + 1
        assert [(r["id"], r["price"], r["qty"], r["quoteQty"], r["time"]) for r in pages] == [
            (int(c[0]), c[1], c[2], c[3], int(c[4])) for c in csv_rows]
        r = client.get("/api/v3/historicalTrades", params={"symbol": "BTCUSDT"})
        assert len(r.json()) == 500 and r.json()[-1]["id"] == int(csv_rows[-1][0])
        assert len(client.get("/api/v3/trades", params={"symbol": "BTCUSDT",
                                                        "limit": 5000}).json()) == 1000

        for params, code in [({}, -1102), ({"symbol": "btcusdt"}, -1100),
                             ({"symbol": "XYZUSDT"}, -1121),
                             ({"symbol": "BTCUSDT", "limit": "ten"}, -1100),
                             ({"symbol": "BTCUSDT", "limit": 0}, -1130),
                             ([("symbol", "BTCUSDT"), ("symbol", "ETHUSDT")], -1101)]:
            r = client.get("/api/v3/trades", params=params)
            assert r.status_code == 400 and r.json()["code"] == code, (params, r.text)
        r = client.get("/api/v3/aggTrades", params={"symbol": "BTCUSDT", "fromId": AGG_ID_BASE,
                                                    "startTime": BTC_FIRST_T})
        assert r.status_code == 400 and r.json()["code"] == -1128
        assert client.get("/api/v3/exchangeInfo").status_code == 404
        assert client.post("/api/v3/time").status_code == 405

        def used(path: str, **params) -> int:
            return int(client.get(path, params=params).headers["X-MBX-USED-WEIGHT-1M"])

        base = used("/api/v3/ping")
        assert used("/api/v3/time") == base + 1
        assert used("/api/v3/historicalTrades", symbol="BTCUSDT", limit=1) == base + 26
        assert used("/api/v3/trades", symbol="BTCUSDT", limit=1) == base + 51
        assert used("/api/v3/aggTrades", symbol="BTCUSDT", limit=1) == base + 55
    counts = server.stats.rest_requests
    assert requests == 11 and counts["/api/v3/historicalTrades"] == requests + 2


def test_rest_weight_limit_and_injected_failures(fake_binance):
    server = fake_binance([BTC_JSONL], weight_limit_per_min=100, rest_fail=((1, 418),))
    with httpx.Client(base_url=server.rest_url) as client:
        def trades():
            return client.get("/api/v3/trades", params={"symbol": "BTCUSDT", "limit": 1})

        banned = trades()  # rest_fail option: the first data request
        assert banned.status_code == 418 and banned.headers["Retry-After"] == "1"
        assert banned.json()["code"] == -1003
        for _ in range(3):  # 25 each: the refused request did not count
            assert trades().status_code == 200
        r = trades()
        assert r.status_code == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "100"
        refused = trades()
        assert refused.status_code == 429 and refused.json()["code"] == -1003
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["X-MBX-USED-WEIGHT-1M"] == "100"

    server2 = FakeBinance([BTC_JSONL])
    with server2.running(), httpx.Client(base_url=server2.rest_url) as client:
        server2.fail_rest(2, 429, retry_after_s=3)
        assert client.get("/api/v3/time").status_code == 200  # not a data request
        params = {"symbol": "BTCUSDT", "fromId": BTC_FIRST_ID}
        for _ in range(2):
            r = client.get("/api/v3/historicalTrades", params=params)
            assert r.status_code == 429 and r.headers["Retry-After"] == "3"
        assert client.get("/api/v3/historicalTrades", params=params).status_code == 200
        server2.fail_rest(1, 418, retry_after_s=2.5)
        r = client.get("/api/v3/aggTrades", params={"symbol": "BTCUSDT"})
        assert r.status_code == 418 and r.headers["Retry-After"] == "3"
        assert client.get("/api/v3/aggTrades", params={"symbol": "BTCUSDT"}).status_code == 200
    assert (server.stats.rest_429, server.stats.rest_418) == (1, 1)
    assert (server2.stats.rest_429, server2.stats.rest_418) == (2, 1)


def test_rebase_time_makes_the_replay_look_live(fake_binance):
    server = fake_binance([BTC_JSONL], speed=1.0, rebase_time=True)
    now = time.time() * 1000
    first = json.loads(run(collect(f"{server.ws_url}/ws/btcusdt@trade", 1))[0])
    trade = server.trades("BTCUSDT")[0]
    assert abs(first["T"] - now) < 5_000 and first["E"] - first["T"] == trade.event_time - trade.time
    assert (first["t"], first["p"], first["q"]) == (trade.id, trade.price, trade.qty)
    server_time = httpx.get(f"{server.rest_url}/api/v3/time").json()["serverTime"]
    assert abs(server_time - time.time() * 1000) < 5_000
    rest = httpx.get(f"{server.rest_url}/api/v3/historicalTrades",
                     params={"symbol": "BTCUSDT", "fromId": trade.id, "limit": 1}).json()
    assert rest[0]["time"] == first["T"]


# -- faults ---------------------------------------------------------------------------------
def test_drop_every_aborts_the_connection_without_close_frame(fake_binance):
    server = fake_binance([BTC_JSONL], speed=50.0, drop_every=25)

    async def until_closed(url: str) -> tuple[list[str], ConnectionClosed]:
        got: list[str] = []
        async with connect(url, max_queue=None) as ws:
            try:
                async with asyncio.timeout(10):
                    while True:
                        got.append(await ws.recv())
            except ConnectionClosed as exc:
                return got, exc
        raise AssertionError("unreachable")

    got, exc = run(until_closed(f"{server.ws_url}/ws/btcusdt@trade"))
    assert len(got) == 25 and isinstance(exc, ConnectionClosedError) and exc.rcvd is None
    again, _ = run(until_closed(f"{server.ws_url}/ws/btcusdt@trade"))
    assert len(again) == 25 and json.loads(again[0])["t"] > json.loads(got[-1])["t"]
    wait_for(lambda: server.stats.connections_closed["drop"] == 2)


def test_gap_every_withholds_exactly_gap_size_ids_that_rest_still_serves(fake_binance):
    server = fake_binance([BTC_JSONL], speed=FAST, gap_every=100, gap_size=5)
    trades = server.trades("BTCUSDT")
    n = 1000
    got = [json.loads(m)["data"]["t"] for m in run(collect(
        f"{server.ws_url}/stream?streams=btcusdt@trade", n))]
    expected = [t.id for i, t in enumerate(trades) if i % 105 < 100][:n]
    assert got == expected
    assert set(server.stats.withheld_ids("BTCUSDT")) >= set(range(got[0], got[-1])) - set(got)
    ranges = server.stats.withheld["BTCUSDT"]
    assert all(hi - lo + 1 == 5 for lo, hi in ranges[:9])
    lo, hi = ranges[0]
    assert (lo, hi) == (trades[100].id, trades[104].id)
    rest = httpx.get(f"{server.rest_url}/api/v3/historicalTrades",
                     params={"symbol": "BTCUSDT", "fromId": lo, "limit": 5}).json()
    assert [r["id"] for r in rest] == list(range(lo, hi + 1))


def test_stall_sends_nothing_for_a_while_and_skips_what_happened(fake_binance):
    server = fake_binance([BTC_JSONL], speed=50.0, stall_after=30, stall_s=1.0)

    async def scenario():
        stamps = []
        async with connect(f"{server.ws_url}/ws/btcusdt@trade", max_queue=None) as ws:
            for _ in range(40):
                trade_id = json.loads(await ws.recv())["t"]
                stamps.append((time.monotonic(), trade_id))
        return stamps

    stamps = run(scenario())
    pause = stamps[30][0] - stamps[29][0]
    assert pause >= 0.9
    assert max(b[0] - a[0] for a, b in itertools.pairwise(stamps[:30])) < 0.5
    assert stamps[30][1] - stamps[29][1] > 10  # trades of the stall were skipped, not queued
    assert server.stats.stalls == 1 and server.stats.stall_skipped > 10


def test_malformed_every_adds_broken_frames_between_good_ones(fake_binance):
    server = fake_binance([BTC_JSONL], speed=FAST, malformed_every=10, seed=0)
    got = run(collect(f"{server.ws_url}/stream?streams=btcusdt@trade", 88))
    good, bad = [], []
    for i, text in enumerate(got):
        (bad if (i + 1) % 11 == 0 else good).append(text)
    assert good == lines(BTC_JSONL)[:80]
    kinds = []
    for text in bad:
        try:
            data = json.loads(text)["data"]
        except (ValueError, KeyError):
            kinds.append("unparsable")
            continue
        assert not (isinstance(data.get("t"), int) and isinstance(data.get("p"), str)), text
        kinds.append("invalid")
    assert kinds.count("unparsable") == 4 and kinds.count("invalid") == 4  # four kinds rotate
    assert server.stats.malformed_sent >= 8  # the server may have sent more meanwhile


def test_server_shutdown_notice_then_close(fake_binance):
    server = fake_binance([BTC_JSONL], speed=1.0, shutdown_after_s=0.5, shutdown_grace_s=0.3)

    async def scenario():
        async with connect(f"{server.ws_url}/stream?streams=xyzusdt@trade") as ws:
            started = time.monotonic()
            notice = json.loads(await ws.recv())
            at = time.monotonic() - started
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return notice, at, time.monotonic() - started, ws.close_code

    notice, at, closed_at, code = run(scenario())
    assert notice["e"] == "serverShutdown" and notice["E"] >= BTC_FIRST_T and set(notice) == {"e", "E"}
    assert 0.4 <= at < 1.5 and 0.7 <= closed_at < 2.5 and code == 1001
    wait_for(lambda: server.stats.connections_closed["shutdown"] == 1)


def test_connection_age_limit(fake_binance):
    server = fake_binance([BTC_JSONL], max_connection_age_s=0.5)

    async def scenario():
        async with connect(f"{server.ws_url}/ws") as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code

    assert run(scenario()) == 1001
    wait_for(lambda: server.stats.connections_closed["age"] == 1)


def test_too_many_incoming_messages_close_the_connection(fake_binance):
    server = fake_binance([BTC_JSONL])

    async def scenario():
        replies = []
        async with connect(f"{server.ws_url}/ws") as ws:
            for i in range(10):
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5):
                    while True:
                        replies.append(json.loads(await ws.recv()))
            return replies, ws.close_code

    replies, code = run(scenario())
    assert [r["id"] for r in replies] == [0, 1, 2, 3, 4] and code == 1008
    wait_for(lambda: server.stats.connections_closed["rate"] == 1)
    assert server.stats.rate_violations == 1


def test_connection_attempts_are_limited(fake_binance):
    server = fake_binance([BTC_JSONL], max_connections_per_5min=3)

    async def attempt():
        async with connect(f"{server.ws_url}/ws"):
            pass

    for _ in range(3):
        run(attempt())
    with pytest.raises(InvalidStatus) as refused:
        run(attempt())
    assert refused.value.response.status_code == 429
    assert "Retry-After" in refused.value.response.headers
    assert server.stats.connections_refused == 1


def raw_handshake(port: int, path: str = "/ws") -> tuple[socket.socket, bytes]:
    """A WebSocket client made by hand, which never answers pings."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(4096)
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


def read_frame(sock: socket.socket, buf: bytes) -> tuple[int, bytes, bytes]:
    """``(opcode, payload, rest)`` of the next (unmasked, server) frame."""
    def need(n: int) -> None:
        nonlocal buf
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk

    need(2)
    size, offset = buf[1] & 0x7F, 2
    if size == 126:
        need(4)
        size, offset = int.from_bytes(buf[2:4], "big"), 4
    elif size == 127:
        need(10)
        size, offset = int.from_bytes(buf[2:10], "big"), 10
    need(offset + size)
    return buf[0] & 0x0F, buf[offset:offset + size], buf[offset + size:]


def test_keepalive_closes_clients_that_do_not_answer_pings(fake_binance):
    server = fake_binance([BTC_JSONL], ping_interval_s=0.5, pong_timeout_s=1.0)

    async def polite():
        async with connect(f"{server.ws_url}/ws") as ws:
            await asyncio.sleep(3.0)
            return ws.state

    assert run(polite()) is State.OPEN
    assert server.stats.pongs_received >= 4 and server.stats.pings_sent >= 4

    sock, buf = raw_handshake(server.port)
    started = time.monotonic()
    pings = 0
    with sock:
        while True:
            opcode, payload, buf = read_frame(sock, buf)
            if opcode == 0x9:
                pings += 1
                assert payload  # Binance-style pings carry a payload
            elif opcode == 0x8:
                assert int.from_bytes(payload[:2], "big") == 1011
                break
    assert pings == 1 and 1.2 <= time.monotonic() - started < 3.0
    wait_for(lambda: server.stats.connections_closed["pong_timeout"] == 1)
    assert server.stats.connections_closed["client"] == 1


# -- command line ---------------------------------------------------------------------------
CLI = """
import sys, typer
from cryptostream.errors import CryptoStreamError
from cryptostream.standins.commands import register
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
register(app)
@app.command()
def version():
    pass
try:
    app()
except CryptoStreamError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def test_cli_serves_until_sigterm(tmp_path):
    cmd = [sys.executable, "-c", CLI, "fake-binance", "--recording", str(BTC_JSONL),
           "--recording", str(ETH_CSV), "--port", "0", "--speed", "50", "--gap-every", "100"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        assert "listening on ws://127.0.0.1:" in line and "2 symbols" in line, line
        ws_url = line.split("listening on ")[1].split()[0]
        rest_url = ws_url.replace("ws://", "http://")
        assert f"(REST {rest_url})" in line and "15,863 trades" in line
        assert httpx.get(f"{rest_url}/api/v3/ping").json() == {}
        first = json.loads(run(collect(f"{ws_url}/ws/btcusdt@trade", 1))[0])
        assert first["t"] == BTC_FIRST_ID
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    missing = subprocess.run([sys.executable, "-c", CLI, "fake-binance", "--recording",
                              str(tmp_path / "nope.jsonl"), "--port", "0"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr
