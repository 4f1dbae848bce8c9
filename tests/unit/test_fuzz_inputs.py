"""Property-based fuzzing of every parser and of validation: bad input at scale.

Formats: WebSocket JSON (raw payloads), combined-stream wrappers, recordings (``<ns> ``
and ``<seconds>: `` prefixed lines, through the replay source and its bounded line reader),
official trade CSV rows, CoinGecko ``/simple/price`` bodies and kline rows. Every message
goes through the real decoders and (for trades) the ``Processor``; asserted, whatever the
input: no exception escapes (a CoinGecko body that is not a JSON object is the one
documented refusal, a retryable ``CoinGeckoError``), every message is received exactly once
and ``received == accepted + rejected + duplicates + ignored`` holds for every symbol
(klines: ``rows == bars + bad_rows + duplicate_rows``; CoinGecko: every requested asset is
a tick, a rejected entry or missing).

Design (volume on one core in well under a minute):

* An example is a *batch* of 500-2 000 messages, not one message. Hypothesis draws its
  recipe: a seed, the batch size, the weights of the message kinds, and pools of exotic
  values (any JSON value, integers of any size, NaN/inf floats, any text, raw bytes); the
  batch is expanded from the recipe by ``random.Random(seed)``. Hypothesis thus explores
  (and shrinks) the mix and the exotic values, and generation stays cheap.
* ``derandomize=True`` and no example database: every run fuzzes the same examples, so a CI
  failure reproduces locally.
* ``FUZZED`` counts the messages of every format; ``test_fuzz_volume`` (the last test of the
  file: pytest runs them in order) asserts at least 100 000 per run when the whole file ran.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from collections import Counter

import pytest
from cs_unit_helpers import NOW_US, T0_US, assert_reconciled, config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptostream.ml.klines import read_klines
from cryptostream.processing.engine import Output, Processor
from cryptostream.sources import replay as replay_mod
from cryptostream.sources.binance_messages import decode_lines
from cryptostream.sources.coingecko import CoinGeckoError, parse_simple_price
from cryptostream.sources.lines import Oversize, read_lines
from cryptostream.sources.replay import ReplayFile, ReplaySource
from cryptostream.sources.trade_csv import read_trade_csv
from cryptostream.sources.ws_columnar import ColumnarDecoder

MIN_VOLUME = 100_000
FUZZED: Counter = Counter()  # messages fuzzed per format in this run

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
T0_MS = T0_US // 1000


def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# -- exotic values drawn by hypothesis ------------------------------------------------------

_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from(["NaN", "inf", "-inf", "1e999", "-1", "0", "-0", "0x10", "1_000", "",
                     " 1 ", "९", "١٢", "1e-400", "9" * 40, "true", "null"]),
)
json_values = st.recursive(
    _leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=4), inner, max_size=3), max_leaves=6)


@st.composite
def recipes(draw, kinds: tuple[str, ...], lo: int = 500, hi: int = 2000):
    """(Random, batch size, kind weights, exotic JSON values, exotic bytes)."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(lo, hi))
    weights = [draw(st.integers(0, 8)) for _ in kinds]
    weights[0] += 4  # always some valid messages
    values = draw(st.lists(json_values, min_size=1, max_size=10))
    blobs = draw(st.lists(st.binary(min_size=1, max_size=30), min_size=1, max_size=5))
    return random.Random(seed), n, weights, values, blobs


def _dumps(value) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, TypeError):
        return "null"


# -- WebSocket messages -----------------------------------------------------------------------

WS_KINDS = ("valid", "duplicate", "out_of_order", "wrong_type", "missing", "bad_number",
            "huge_int", "unicode", "truncated", "nesting", "other_event", "blank", "garbage",
            "exotic", "deep", "extra_fields", "far_time")
OTHER_EVENTS = (
    '{"e":"bookTicker","u":1,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1"}',
    '{"u":400900217,"s":"BNBUSDT","b":"25.35","B":"31.21","a":"25.36","A":"40.66"}',
    '{"e":"depthUpdate","E":1,"s":"ETHUSDT","U":1,"u":2,"b":[["1","2"]],"a":[]}',
    '{"e":"kline","E":1,"s":"BTCUSDT","k":{"t":1,"T":2,"s":"BTCUSDT","i":"1m"}}',
    '{"e":"aggTrade","E":1,"s":"BTCUSDT","a":5,"p":"1","q":"1","f":1,"l":2,"T":1,"m":true}',
    '{"result":null,"id":1}', '{"lastUpdateId":1,"bids":[],"asks":[]}', "[1,2,3]", "{}",
    '{"e":"24hrTicker","s":"💥"}', '{"e":"trade2","s":"BTCUSDT"}', '"just a string"', "42",
    "null", "[]", '{"stream":"btcusdt@depth","data":{"e":"depthUpdate","s":"BTCUSDT"}}',
)
FIELDS = ("e", "E", "s", "t", "p", "q", "T", "m")


class WsGen:
    """Expands a recipe into WebSocket lines; remembers what it sent."""

    def __init__(self, rnd: random.Random, values: list, blobs: list[bytes]):
        self.rnd, self.values, self.blobs = rnd, values, blobs
        self.next_id = {s: rnd.randint(1, 10**6) for s in SYMBOLS}
        self.t_ms = T0_MS + rnd.randint(0, 60_000)
        self.sent: list[bytes] = []

    def payload(self, sym: str | None = None, tid: int | None = None) -> dict:
        r = self.rnd
        sym = sym or r.choice(SYMBOLS)
        if tid is None:
            tid = self.next_id[sym]
            self.next_id[sym] += r.choice((1, 1, 1, 1, 2, 5))
        self.t_ms += r.choice((0, 0, 1, 10, 250, 1500, 4000))
        t = self.t_ms - r.choice((0, 0, 0, 0, 500, 3000, 90_000))
        return {"e": "trade", "E": t + r.randint(0, 5), "s": sym, "t": tid,
                "p": f"{r.uniform(10, 70_000):.2f}", "q": f"{r.uniform(1e-5, 3):.5f}", "T": t,
                "m": r.random() < 0.5, "M": True}

    def text(self, payload) -> str:
        """A payload as a raw line or in a combined-stream wrapper."""
        if isinstance(payload, dict) and self.rnd.random() < 0.5:
            sym = payload.get("s")
            stream = f"{sym.lower()}@trade" if isinstance(sym, str) else "x@trade"
            payload = {"stream": stream, "data": payload}
        return _dumps(payload)

    def line(self, kind: str) -> bytes:
        r = self.rnd
        if kind == "duplicate" and self.sent:
            return r.choice(self.sent[-200:])
        if kind == "out_of_order":
            sym = r.choice(SYMBOLS)
            return self.text(self.payload(sym, self.next_id[sym] - r.randint(1, 60))).encode()
        if kind == "blank":
            return r.choice((b"", b" ", b"\t", b"\r", b"\x0b", b"\x0c", b" \t ",
                             b"wss://stream.binance.com:9443/stream"))
        if kind == "garbage":
            return r.choice(self.blobs).replace(b"\n", b"?") + r.choice((b"", b"\xff\xfe", b"{"))
        if kind == "exotic":
            return _dumps(r.choice(self.values)).replace("\n", " ").encode()
        if kind == "deep":
            d = r.choice((50, 500, 5000))
            return (b"[" * d + b"]" * d) if r.random() < 0.5 else \
                (b'{"a":' * d + b"1" + b"}" * d)
        if kind == "other_event":
            return r.choice(OTHER_EVENTS).encode()
        p = self.payload()
        if kind == "wrong_type":
            p[r.choice(FIELDS)] = r.choice(self.values)
        elif kind == "missing":
            for k in r.sample(FIELDS, r.randint(1, 3)):
                p.pop(k, None)
        elif kind == "bad_number":
            p[r.choice(("p", "q"))] = r.choice(("NaN", "Infinity", "-1", "0", "-0", "1e999",
                                                "-1e-9", "abc", "", "1,5", float("nan"), -3))
        elif kind == "huge_int":
            p[r.choice(("t", "T", "E"))] = r.choice((2**63, -(2**63) - 1, 10**30, 2**63 - 1,
                                                     -(2**63), 10**400, 0, -1))
        elif kind == "unicode":
            p[r.choice(("s", "e", "p"))] = r.choice(("BTCUSDT\u0000", "ＢＴＣＵＳＤＴ", "btcusdt", "BTC😀",
                                                     "\ud7ff", "ΑΒΓ", "B", "A" * 30))
        elif kind == "extra_fields":
            p[r.choice(("x", "data", "stream", "a", "s"))] = r.choice(self.values)
        elif kind == "far_time":
            p["T"] = r.choice((0, 1, 4_102_444_800_000, 1_262_303_999_999, T0_MS + 10**9))
        elif kind == "nesting":
            shape = r.randint(0, 4)
            if shape == 0:
                return _dumps({"stream": "btcusdt@trade", "data": [p]}).encode()
            if shape == 1:
                return _dumps({"stream": "btcusdt@trade", "data": _dumps(p)}).encode()
            if shape == 2:
                return _dumps({"data": {"data": p}}).encode()
            if shape == 3:
                return _dumps([p]).encode()
            return _dumps({"stream": None, "data": None}).encode()
        line = self.text(p).encode()
        if kind == "truncated":
            line = line[: r.randint(0, max(0, len(line) - 1))]
        return line

    def batch(self, n: int, weights: list[int]) -> list[bytes]:
        kinds = self.rnd.choices(WS_KINDS, weights=weights, k=n)
        out = []
        for k in kinds:
            line = self.line(k).replace(b"\n", b" ")
            out.append(line)
            if line.strip():
                self.sent.append(line)
        return out


def counted(line: bytes) -> bool:
    """Is this line a message (not blank, not a recorder's connection header)?"""
    return bool(line.strip()) and not line.startswith((b"wss://", b"ws://"))


def process(batches, skew_s: float = 0.0) -> Processor:
    proc = Processor(config(skew_s=skew_s))
    out = Output()
    for sb in batches:
        out.extend(proc.process(sb, NOW_US))
    out.extend(proc.close(NOW_US))
    return proc


def check_counts(proc: Processor, expected_received: int) -> None:
    assert_reconciled(proc)
    got = sum(c.received for c in proc.counters.values())
    assert got == expected_received, f"received {got} of {expected_received} messages"


def _ws_recipe():
    return recipes(WS_KINDS)


@fuzz_settings(40)
@given(_ws_recipe(), st.integers(1, 300))
def test_websocket_json_with_the_live_decoder(recipe, cut):
    """Raw and combined-stream lines, in chunks, through msgspec's decoder and validation."""
    rnd, n, weights, values, blobs = recipe
    lines = WsGen(rnd, values, blobs).batch(n, weights)
    chunks = [decode_lines(lines[i:i + cut], "fuzz", i) for i in range(0, n, cut)]
    proc = process(chunks)
    check_counts(proc, sum(map(counted, lines)))
    FUZZED["websocket (msgspec)"] += n


@fuzz_settings(25)
@given(_ws_recipe(), st.sampled_from([2048, 1 << 20]))
def test_websocket_json_with_the_columnar_decoder(recipe, max_line):
    """The same lines through the replay decoder (DuckDB JSON), small line limit included."""
    rnd, n, weights, values, blobs = recipe
    lines = WsGen(rnd, values, blobs).batch(n, weights)
    if rnd.random() < 0.5:  # some lines over the limit
        lines[rnd.randrange(n)] = b'{"e":"trade","s":"BTCUSDT","pad":"' + b"z" * 5000 + b'"}'
    dec = ColumnarDecoder(max_line_bytes=max_line)
    try:
        sbs = []
        for i in range(0, n, 400):
            sbs.append(dec.decode_chunk(b"\n".join(lines[i:i + 400]), "fuzz", i))
    finally:
        dec.close()
    proc = process(sbs)
    check_counts(proc, sum(map(counted, lines)))
    FUZZED["websocket (columnar)"] += n


@fuzz_settings(25)
@given(_ws_recipe(), st.sampled_from(["ns", "s", "mixed"]), st.booleans(),
       st.sampled_from([16_384, 1 << 20]))
def test_recordings_through_the_replay_source(tmp_path_factory, recipe, prefix, gz, chunk):
    """Recorder-prefixed lines written to a file (plain or gzip) and replayed: the bounded
    line reader (small chunks, a small line limit, some oversize lines), the columnar
    decoder, the clock-skew check against the recorded receive time."""
    rnd, n, weights, values, blobs = recipe
    gen = WsGen(rnd, values, blobs)
    lines = gen.batch(n, weights)
    out = []
    for i, line in enumerate(lines):
        if rnd.random() < 0.02:
            line = b'{"e":"trade","s":"ETHUSDT","pad":"' + b"q" * rnd.randint(3000, 9000) + b'"}'
            lines[i] = line
        kind = prefix if prefix != "mixed" else rnd.choice(("ns", "s", "none"))
        if counted(line) and kind == "ns":
            line = b"%d %b" % (T0_US * 1000 + i * 10**6 + rnd.randint(0, 10**9), line)
        elif counted(line) and kind == "s":
            line = b"%.6f: %b" % (T0_US / 1e6 + i + rnd.random(), line)
        out.append(line)
    path = tmp_path_factory.mktemp("rec") / ("rec.jsonl.gz" if gz else "rec.jsonl")
    data = b"\n".join(out) + b"\n"
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    src = ReplaySource([ReplayFile(path, None)], max_line_bytes=2048)
    old = replay_mod.WS_CHUNK_BYTES
    replay_mod.WS_CHUNK_BYTES = chunk
    try:
        proc = process(src.batches(), skew_s=5.0)
    finally:
        replay_mod.WS_CHUNK_BYTES = old
    check_counts(proc, sum(map(counted, out)))
    FUZZED["recordings (replay)"] += n


# -- official trade CSV rows --------------------------------------------------------------------

CSV_KINDS = ("valid", "duplicate", "out_of_order", "short", "long", "text_number", "bad_number",
             "huge_int", "bad_bool", "unicode", "blank", "quoted", "crlf", "garbage",
             "oversize", "nul", "invalid_utf8", "exotic", "far_time")


class CsvGen:
    def __init__(self, rnd: random.Random, values: list, blobs: list[bytes]):
        self.rnd, self.values, self.blobs = rnd, values, blobs
        self.next_id = rnd.randint(1, 10**9)
        self.t = T0_MS + rnd.randint(0, 60_000)
        self.us = rnd.random() < 0.3  # 2025+ files are in microseconds
        self.sent: list[bytes] = []

    def row(self, tid: int | None = None) -> list[str]:
        r = self.rnd
        if tid is None:
            tid = self.next_id
            self.next_id += r.choice((1, 1, 1, 2))
        self.t += r.choice((0, 1, 5, 300))
        p, q = round(r.uniform(1, 70_000), 2), round(r.uniform(1e-5, 2), 5)
        t = self.t * 1000 + r.randint(0, 999) if self.us else self.t
        return [str(tid), f"{p:.8f}", f"{q:.8f}", f"{p * q:.8f}", str(t),
                r.choice(("True", "False", "true", "false")), "True"]

    def line(self, kind: str) -> tuple[bytes, bool]:
        """(line, whether it is a record)."""
        r = self.rnd
        if kind == "duplicate" and self.sent:
            return r.choice(self.sent[-100:]), True
        if kind == "blank":
            return r.choice((b"", b" ", b"\t", b"  \t")), False
        if kind == "oversize":
            return b"1," + b"9" * r.randint(2100, 6000) + b",1,1,1,True,True", True
        if kind == "garbage":
            blob = r.choice(self.blobs).replace(b"\n", b"").replace(b"\r", b"")
            return b"x" + blob, True
        if kind == "invalid_utf8":
            return b"1,\xff\xfe,1,1," + str(self.t).encode() + b",True,True", True
        if kind == "exotic":
            text = _dumps(r.choice(self.values)).replace("\n", "").replace("\r", "")
            return ("x" + text).encode(), True
        row = self.row(self.next_id - r.randint(1, 30) if kind == "out_of_order" else None)
        if kind == "short":
            row = row[: r.randint(1, 5)]
        elif kind == "long":
            row += ["extra"] * r.randint(1, 3)
        elif kind == "text_number":
            row[r.choice((0, 1, 2, 4))] = r.choice(("abc", "1.2.3", "", "--1", "1e", "0x1F"))
        elif kind == "bad_number":
            row[r.choice((1, 2))] = r.choice(("nan", "NaN", "inf", "-inf", "-1", "0", "-0",
                                              "1e999", "1e-400"))
        elif kind == "huge_int":
            row[r.choice((0, 4))] = r.choice((str(2**63), str(-(2**63) - 1), "9" * 30,
                                              str(2**62 + 1), "-1", str(2**63 - 1)))
        elif kind == "bad_bool":
            row[5] = r.choice(("maybe", "", "2", "TRUE!", "yes"))
        elif kind == "unicode":
            row[r.choice((1, 5, 6))] = r.choice(("١٢٣", "ＴＲＵＥ", "€", "💥", "\u00a0"))
        elif kind == "far_time":
            row[4] = str(r.choice((0, 1, 10**15, 10**17, 4_102_444_800_000, 10**18)))
        text = ",".join(row)
        if kind == "quoted":
            text = ",".join(f'"{v}"' for v in row) if r.random() < 0.5 else '"' + text
        line = text.encode()
        if kind == "nul":
            line = line.replace(b",", b"\x00,", 1)
        if kind == "crlf":
            line += b"\r"  # the \n is added by the join: a \r\n row end
        return line, True


@fuzz_settings(30)
@given(recipes(CSV_KINDS), st.sampled_from([256, 4096, 1 << 20]), st.booleans(), st.booleans())
def test_official_trade_csv_rows(tmp_path_factory, recipe, block, header, gz):
    """Rows through Arrow's CSV reader (small blocks: a bad row anywhere) and the row-by-row
    reader it falls back to, then validation."""
    rnd, n, weights, values, blobs = recipe
    gen = CsvGen(rnd, values, blobs)
    lines: list[bytes] = [b"id,price,qty,quote_qty,time,is_buyer_maker,is_best_match"] \
        if header else []
    records = 0
    for i, kind in enumerate(rnd.choices(CSV_KINDS, weights=weights, k=n)):
        line, is_record = gen.line("valid" if i == 0 else kind)
        lines.append(line)
        records += is_record
        if is_record:
            gen.sent.append(line)
    path = tmp_path_factory.mktemp("csv") / ("t.csv.gz" if gz else "t.csv")
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    proc = process(read_trade_csv(path, "BTCUSDT", "fuzz", block_size=block,
                                  max_line_bytes=2048))
    check_counts(proc, records)
    FUZZED["trade CSV rows"] += n


# -- CoinGecko /simple/price bodies -------------------------------------------------------------

ASSETS = {"bitcoin": ("BTCUSDT",), "ethereum": ("ETHUSDT",), "solana": ("SOLUSDT",),
          "tether": ()}
CG_KINDS = ("valid", "missing_usd", "wrong_type", "bad_number", "huge", "not_object",
            "absent", "bad_time", "negative_volume", "extra", "exotic")
BODY_KINDS = ("object", "not_json", "truncated", "list", "deep", "bytes", "empty", "exotic")


def cg_entry(r: random.Random, kind: str, values: list):
    e = {"usd": round(r.uniform(0.5, 70_000), 4), "usd_24h_vol": r.uniform(0, 1e10),
         "usd_24h_change": r.uniform(-20, 20), "last_updated_at": 1_723_161_600 + r.randint(0, 10**6)}
    if kind == "missing_usd":
        del e["usd"]
    elif kind == "wrong_type":
        e[r.choice(list(e))] = r.choice(values)
    elif kind == "bad_number":
        e[r.choice(list(e))] = r.choice((float("nan"), float("inf"), -1, 0, -0.0, True, "1"))
    elif kind == "huge":
        e[r.choice(list(e))] = r.choice((10**400, -(10**400), 10**20, 2**63))
    elif kind == "not_object":
        return r.choice(([1, 2], "61234.5", 3, True, r.choice(values)))
    elif kind == "absent":
        return None
    elif kind == "bad_time":
        e["last_updated_at"] = r.choice((1e300, 10**30, -5, 1.5, 4_102_444_800, 99))
    elif kind == "negative_volume":
        e["usd_24h_vol"] = -r.uniform(1, 10)
    elif kind == "extra":
        e[r.choice(("usd_market_cap", "eur", ""))] = r.choice(values)
    elif kind == "exotic":
        return r.choice(values)
    return e


def cg_body(r: random.Random, weights: list[int], values: list, blobs: list[bytes]) -> bytes:
    shape = r.choices(BODY_KINDS, weights=(30, 1, 1, 1, 1, 1, 1, 1))[0]
    if shape == "object":
        body: dict = {}
        for asset in ASSETS:
            entry = cg_entry(r, r.choices(CG_KINDS, weights=weights)[0], values)
            if entry is not None:
                body[asset] = entry
        if r.random() < 0.2:
            body["dogecoin"] = cg_entry(r, "valid", values)
        text = json.dumps(body, allow_nan=True)
        return text.encode() if r.random() < 0.9 else text.encode("utf-16")
    if shape == "not_json":
        return r.choice((b"<html>502 Bad Gateway</html>", b"{'usd': 1}", b"NaN", b"}{"))
    if shape == "truncated":
        text = json.dumps({"bitcoin": cg_entry(r, "valid", values)})
        return text[: r.randint(0, len(text) - 1)].encode()
    if shape == "list":
        return b'[{"bitcoin": {"usd": 1}}]'
    if shape == "deep":
        d = r.choice((100, 2000, 100_000))
        return b'{"bitcoin":' + b"[" * d + b"]" * d + b"}"
    if shape == "bytes":
        return r.choice(blobs) + b"\xff"
    if shape == "empty":
        return b""
    return _dumps(r.choice(values)).encode()


@fuzz_settings(30)
@given(recipes(CG_KINDS, lo=300, hi=800))
def test_coingecko_bodies(recipe):
    rnd, n, weights, values, blobs = recipe
    for _ in range(n):
        body = cg_body(rnd, weights, values, blobs)
        try:
            parsed = parse_simple_price(body, ASSETS, 0)
        except CoinGeckoError as exc:
            assert exc.retryable, exc
            continue
        tick_assets = {t.asset for t in parsed.ticks}
        rejected_assets = {r.split(":", 1)[0] for r in parsed.rejected}
        assert len(parsed.rejected) == len(rejected_assets)
        assert not (tick_assets & rejected_assets) and not (tick_assets & set(parsed.missing))
        assert tick_assets | rejected_assets | set(parsed.missing) == set(ASSETS)
        for t in parsed.ticks:
            assert t.price_usd > 0 and 1_262_304_000 <= t.last_updated_at_s < 4_102_444_800
            assert t.volume_24h is None or t.volume_24h >= 0
    FUZZED["CoinGecko bodies"] += n


# -- kline rows ---------------------------------------------------------------------------------

KLINE_KINDS = ("valid", "duplicate", "short", "text", "nan", "negative", "huge", "blank",
               "garbage", "quote", "oversize", "invalid_utf8", "exotic", "crlf", "far_time")


def kline_row(r: random.Random, start_ms: int, us: bool) -> list[str]:
    o = r.uniform(10, 70_000)
    h, lo_, c = o * 1.01, o * 0.99, o * (1 + r.uniform(-0.01, 0.01))
    v = r.uniform(0, 100)
    t = start_ms * 1000 if us else start_ms
    return [str(t), f"{o:.2f}", f"{h:.2f}", f"{lo_:.2f}", f"{c:.2f}", f"{v:.5f}",
            str(t + 59_999), f"{v * o:.4f}", str(r.randint(0, 900)), f"{v / 2:.5f}",
            f"{v * o / 2:.4f}", "0"]


def kline_line(r: random.Random, kind: str, start: int, us: bool, values, blobs,
               sent: list[bytes]) -> tuple[bytes, bool]:
    """(line, whether read_klines counts it as a row)."""
    if kind == "duplicate" and sent:
        return r.choice(sent), True
    if kind == "blank":
        return b"", False
    if kind == "oversize":
        return b"1," + b"7" * 70_000, True
    if kind == "garbage":
        return b"x" + r.choice(blobs).replace(b"\n", b"").replace(b"\r", b""), True
    if kind == "invalid_utf8":
        return b"\xff\xfe,1,2", True
    if kind == "exotic":
        return ("x" + _dumps(r.choice(values)).replace("\n", "").replace("\r", "")).encode(), True
    row = kline_row(r, start, us)
    if kind == "short":
        row = row[: r.randint(1, 8)]
    elif kind == "text":
        row[r.randint(0, 9)] = r.choice(("abc", "", "1.2.3", "open"))
    elif kind == "nan":
        row[r.randint(1, 9)] = r.choice(("nan", "inf", "-inf", "1e999"))
    elif kind == "negative":
        row[r.randint(1, 9)] = r.choice(("-1", "0", "-0.5"))
    elif kind == "huge":
        row[r.choice((0, 8))] = r.choice(("9" * 400, "1e300", str(2**63)))
    elif kind == "far_time":
        row[0] = r.choice(("0", "1", "-5", "4102444800000", "99999999999999999"))
    text = ",".join(row)
    if kind == "quote":
        text = '"' + text if r.random() < 0.5 else text.replace(",", '","', 2)
    line = text.encode()
    if kind == "crlf":
        line += b"\r"
    return line, True


@fuzz_settings(30)
@given(recipes(KLINE_KINDS), st.booleans(), st.sampled_from(["csv", "gz", "zip"]))
def test_kline_rows(tmp_path_factory, recipe, header, packing):
    """Kline files with garbage rows: counted as bad rows, never raised."""
    rnd, n, weights, values, blobs = recipe
    us = rnd.random() < 0.3
    start = 1_723_161_600_000
    lines = [(b"open_time,open,high,low,close,volume,close_time,quote_volume,count,"
              b"taker_buy_volume,taker_buy_quote_volume,ignore")] if header else []
    rows, sent = 0, []
    for kind in rnd.choices(KLINE_KINDS, weights=weights, k=n):
        start += rnd.choice((60_000, 60_000, 60_000, 120_000, 0, -60_000))
        line, is_row = kline_line(rnd, kind, start, us, values, blobs, sent)
        lines.append(line)
        rows += is_row
        if is_row and len(sent) < 100:
            sent.append(line)
    data = b"\n".join(lines) + b"\n"
    d = tmp_path_factory.mktemp("kl")
    name = "BTCUSDT-1m-2024-08-09.csv"
    if packing == "gz":
        path = d / (name + ".gz")
        path.write_bytes(gzip.compress(data, compresslevel=1))
    elif packing == "zip":
        import zipfile

        path = d / name.replace(".csv", ".zip")
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(name, data)
    else:
        path = d / name
        path.write_bytes(data)
    k = read_klines(str(path))
    assert k.rows == rows, (k.rows, rows)
    assert k.rows == len(k.bars) + k.bad_rows + k.duplicate_rows
    assert k.bars.symbol == "BTCUSDT"
    if len(k.bars):
        assert (k.bars.start_ms >= 1_262_304_000_000).all()
        assert (k.bars.close > 0).all() and (k.bars.volume >= 0).all()
    FUZZED["kline rows"] += n


# -- the bounded line reader itself ----------------------------------------------------------------

@fuzz_settings(40)
@given(st.lists(st.binary(max_size=60), max_size=200), st.integers(1, 64), st.integers(1, 40),
       st.booleans())
def test_bounded_line_reader_matches_splitlines(pieces, chunk, limit, crlf):
    """``read_lines`` gives the lines ``bytes.split`` gives, an ``Oversize`` in place of each
    one over the limit, whatever the chunk size."""
    data = b"".join(pieces)
    got = list(read_lines(io.BytesIO(data), max_line_bytes=limit, chunk_bytes=chunk, crlf=crlf))
    want = data.split(b"\n")
    if want and want[-1] == b"":
        want.pop()
    if crlf:
        want = [x for w in want for x in (w.split(b"\r")[:-1] if w.endswith(b"\r")
                                          else w.split(b"\r"))]
    norm = [("over", len(x)) if len(x) > limit else x for x in want]
    got_n = [("over", x.size) if isinstance(x, Oversize) else x for x in got]
    # a \r\n split across two chunks may add an empty line (callers skip blank lines)
    assert [x for x in got_n if x != b""] == [x for x in norm if x != b""]
    FUZZED["line reader lines"] += len(want)


# -- volume -------------------------------------------------------------------------------------

FORMATS = {"websocket (msgspec)", "websocket (columnar)", "recordings (replay)",
           "trade CSV rows", "CoinGecko bodies", "kline rows"}


def test_fuzz_volume():
    """At least 100 000 generated messages per run across the formats (when every fuzz
    test of this file ran; a ``-k`` selection skips the check)."""
    if not FORMATS <= set(FUZZED):
        pytest.skip(f"only {sorted(set(FUZZED) & FORMATS)} ran; the volume is checked on "
                    "full runs of this file")
    messages = sum(FUZZED[k] for k in FORMATS)
    print("fuzzed messages per format:", dict(FUZZED), "total", messages)
    assert messages >= MIN_VOLUME, dict(FUZZED)
