"""End-to-end latency of the live Binance pipeline: stand-in send -> queryable in the store.

For each rate (trades/s, all symbols together) a recording of ``--seconds`` of simulated
trades of ``--symbols`` symbols is generated (cached in ``--workdir``) and served live by
the Binance stand-in (``FakeBinance``, speed 1, ``rebase_time``: trade time ~ send time,
``record_send_times``: every trade event stamped with ``time.time_ns()`` just before its
first WebSocket send). The stand-in runs in a child process of its own (as a remote
exchange would; its event loop does not share a GIL with the poller). Two pipeline runs per
rate, each a ``cryptostream run --source binance`` subprocess with a fresh DuckDB file and no
lake:

* ``live``     the default live flush (group commit: the pending output is written as soon as
  the writer is idle; 25 ms at most);
* ``baseline`` ``--flush-interval 1s`` (the older, batchy behaviour).

Meanwhile this process polls the store every ``--poll-ms`` through the writer's read-only
query endpoint (``cryptostream.query``), one query per poll for trades past the last row
seen and for the ``agg_1m`` windows, and stamps what is new with the wall time the answer
arrived. By default it keeps one HTTP connection open (``--poller keepalive``), since
``run_query`` builds a new ``httpx`` client, SSL context included, on every call (~30 ms
here, which would swamp a 5 ms poll); ``--poller run_query`` uses ``run_query`` as is.
Per run:

* trade latency = first seen - send stamp, for every trade sent;
* window latency = first seen - (window_end + offset), for every ``agg_1m`` window closed
  by the watermark during the run, where offset = median(send stamp - trade time) is how
  far the stand-in's (rebased) clock runs behind the wall clock; and, to tell the pipeline
  from the market, first seen - send stamp of the trade that moved the watermark past the
  window (the first with trade time >= window_end + allowed lateness).

Every run waits (idle) until a wall-clock minute boundary will fall about a third into its
data, so that each symbol has one window closed by the watermark (``--no-align`` skips the
wait: windows are then measured only when a boundary happens to fall in).

Progress goes to stderr, results to stdout; ``--record`` appends them to docs/benchmarks.md.

    python benchmarks/bench_live_latency.py                          # 100, 1 000, 10 000 /s
    python benchmarks/bench_live_latency.py --rates 1000 --seconds 10 --no-align   # a quick look
    python benchmarks/bench_live_latency.py --record                 # what docs/benchmarks.md shows
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_machine import log, machine_info

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT",
           "LTCUSDT", "TRXUSDT", "DOTUSDT")
VARIANTS = {"live": [], "baseline": ["--flush-interval", "1s"]}
VARIANT_LABEL = {"live": "live (default: write when idle)", "baseline": "baseline (1 s flush)"}
TRADE_P99_TARGET_MS = 50.0
WINDOW_SLACK_MS = 200.0
MINUTE_MS = 60_000
# One query per poll: trades past the last row seen, and every agg_1m window (a few rows).
POLL_SQL = (
    "SELECT 0 AS kind, rowid AS rid, symbol, trade_id AS a, epoch_ms(trade_time) AS b, "
    "epoch_us(recv_time) AS c, epoch_us(processed_at) AS d FROM trades WHERE rowid > ? "
    "UNION ALL "
    "SELECT 1, NULL, symbol, epoch_ms(window_start), epoch_ms(window_end), "
    "epoch_us(emitted_at), trade_count FROM agg_1m"
)


def lateness_ms() -> int:
    from cryptostream.config import Settings

    return round(Settings.model_fields["allowed_lateness_s"].default * 1000)


# -- input ---------------------------------------------------------------------------------
@dataclass
class Recording:
    path: Path
    symbols: list[str]
    seconds: float
    ids: dict[str, np.ndarray]  # per symbol, id order
    times_ms: dict[str, np.ndarray]  # trade time (ms, before rebasing), per symbol

    @property
    def trades(self) -> int:
        return sum(len(v) for v in self.ids.values())

    @property
    def first_ms(self) -> int:
        return int(min(t[0] for t in self.times_ms.values() if len(t)))


def make_recording(workdir: Path, rate: float, seconds: float, symbols: list[str],
                   seed: int) -> Recording:
    """``seconds`` of simulated trades at ``rate`` trades/s in all (``rate / len(symbols)``
    per symbol, bursty as the simulator makes it), as combined-stream JSON lines."""
    from cryptostream.sources.simulator import simulate_arrays, write_ws_jsonl

    per_symbol = rate / len(symbols)
    ids, times = {}, {}
    for s in symbols:
        a = simulate_arrays(s, duration_s=seconds, seed=seed, trades_per_s=per_symbol)
        ids[s], times[s] = a["trade_id"], a["trade_time_us"] // 1000
    n = sum(len(v) for v in ids.values())
    path = workdir / f"live-{rate:g}ps-{seconds:g}s-{len(symbols)}sym-seed{seed}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        written = write_ws_jsonl(tmp, symbols, n, seed, trades_per_s=per_symbol)
        if written != n:
            raise RuntimeError(f"wrote {written} trades, expected {n}")
        tmp.replace(path)
    return Recording(path, symbols, seconds, ids, times)


# -- the stand-in, in a child process ----------------------------------------------------------
def _fake_main(recording: str, conn) -> None:
    """Serve ``recording`` and answer ``status`` / ``sends`` / ``stop`` over ``conn``."""
    from cryptostream.standins.binance import FakeBinance, FakeOptions

    fake = FakeBinance([recording], FakeOptions(speed=1.0, rebase_time=True,
                                                record_send_times=True))
    with fake.running():
        conn.send({"ws_url": fake.ws_url, "rest_url": fake.rest_url, "trades": fake.trade_count})
        while True:
            cmd = conn.recv()
            st = fake.stats
            if cmd == "status":
                conn.send({"started": fake.clock_ms() is not None, "finished": fake.finished,
                           "sent": st.trade_messages_sent, "open": fake.connection_count,
                           "opened": st.connections_opened,
                           "closed": dict(st.connections_closed)})
            elif cmd == "sends":
                sends = fake.send_times.copy()  # atomic under the GIL
                syms = sorted({s for s, _ in sends})
                code = {s: i for i, s in enumerate(syms)}
                conn.send({
                    "symbols": syms,
                    "code": np.fromiter((code[s] for s, _ in sends), np.int16, len(sends)),
                    "id": np.fromiter((i for _, i in sends), np.int64, len(sends)),
                    "ns": np.fromiter(sends.values(), np.int64, len(sends)),
                })
            else:
                break


class FakeProcess:
    def __init__(self, recording: Path):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_fake_main, args=(str(recording), child),
                                name="fake-binance", daemon=True)
        self.proc.start()
        deadline = time.monotonic() + 60
        while not self.conn.poll(0.1):
            if not self.proc.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the Binance stand-in did not start")
        self.info = self.conn.recv()

    def ask(self, cmd: str) -> dict:
        self.conn.send(cmd)
        return self.conn.recv()

    def stop(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:
            pass
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# -- one run -----------------------------------------------------------------------------------
@dataclass
class Run:
    rate: float
    variant: str
    rec: Recording
    error: str | None = None
    sent: int = 0
    send_span_s: float = 0.0
    seen: int = 0
    missing: int = 0
    extra: int = 0
    #: trades sent before the poller's first query went out (not timed: nobody was looking)
    before_poller: int = 0
    trade_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    wire_ms: np.ndarray = field(default_factory=lambda: np.empty(0))  # recv - send
    proc_ms: np.ndarray = field(default_factory=lambda: np.empty(0))  # processed - recv
    store_ms: np.ndarray = field(default_factory=lambda: np.empty(0))  # seen - processed
    lag_ms: np.ndarray = field(default_factory=lambda: np.empty(0))  # send - trade time
    offset_ms: float = 0.0
    window_ms: np.ndarray = field(default_factory=lambda: np.empty(0))  # seen - end - offset
    window_trigger_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    window_wait_ms: np.ndarray = field(default_factory=lambda: np.empty(0))  # trigger sent - end
    windows_expected: int = 0
    windows_missing: int = 0
    query_ms: np.ndarray = field(default_factory=lambda: np.empty(0))
    polls: int = 0
    cpu: dict[str, float | None] = field(default_factory=dict)
    wall_s: float = 0.0
    load: float = 0.0
    closed: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dump: Path | None = None  # --dump: per-trade arrays go here (.npz)

    @property
    def label(self) -> str:
        return VARIANT_LABEL[self.variant]

    @property
    def fake_rate(self) -> float:
        return self.sent / self.send_span_s if self.send_span_s > 0 else 0.0


class EndpointClient:
    """``run_query`` over one kept-alive HTTP connection: the same endpoint, token, request
    and Arrow IPC answer (``cryptostream.query``), without building a new ``httpx`` client
    (and its SSL context: ~27 ms here) for every call."""

    def __init__(self, db: Path):
        import json

        import httpx

        from cryptostream.query import endpoint_file

        info = json.loads(endpoint_file(db).read_text())
        self.url = f"http://{info['host']}:{info['port']}/query"
        self.client = httpx.Client(headers={"Authorization": f"Bearer {info['token']}"},
                                   timeout=60.0)

    def __call__(self, db: Path, sql: str, params: list | None = None):
        import pyarrow as pa

        resp = self.client.post(self.url, json={"sql": sql, "params": params})
        if resp.status_code != 200:
            raise RuntimeError(f"query failed ({resp.status_code}): {resp.text}")
        return pa.ipc.open_stream(resp.content).read_all()

    def close(self) -> None:
        self.client.close()


class Poller:
    """Polls the store and keeps when each trade / window first showed."""

    def __init__(self, db: Path, how: str):
        from cryptostream.query import run_query

        self.client = EndpointClient(db) if how == "keepalive" else None
        self.run_query, self.db = (self.client or run_query), db
        self.last_rid = -1
        self.parts: list[tuple] = []  # (symbol, id, t_ms, recv_us, proc_us, seen_ns) arrays
        self.windows: dict[tuple[str, int], tuple[int, int]] = {}  # (sym, end) -> seen, emitted
        self.query_ns: list[int] = []
        self.first_poll_ns: int | None = None
        self.seen = 0

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def poll(self) -> None:
        t0 = time.time_ns()
        if self.first_poll_ns is None:
            self.first_poll_ns = t0
        tab = self.run_query(self.db, POLL_SQL, [self.last_rid])
        t1 = time.time_ns()
        self.query_ns.append(t1 - t0)
        if tab.num_rows == 0:
            return
        kind = tab.column("kind").to_numpy()
        trades = kind == 0
        if trades.any():
            t = tab.filter(trades)
            rid = t.column("rid").to_numpy()
            self.last_rid = max(self.last_rid, int(rid.max()))
            col = {n: t.column(n).to_numpy(zero_copy_only=False) for n in ("a", "b")}
            c = t.column("c").fill_null(-1).to_numpy()
            d = t.column("d").fill_null(-1).to_numpy()
            self.parts.append((np.asarray(t.column("symbol").to_pylist(), dtype=object),
                               col["a"], col["b"], c, d, t1))
            self.seen += len(rid)
        if not trades.all():
            for row in tab.filter(~trades).select(["symbol", "b", "c"]).to_pylist():
                self.windows.setdefault((row["symbol"], row["b"]), (t1, row["c"]))


def warm_up_poller() -> None:
    """Import and initialise what a poll uses before the pipeline starts: pyarrow's first
    ``Table.filter`` alone takes ~0.5 s here, and the stand-in starts sending as soon as the
    pipeline connects, so a cold poller would add its start-up to the first trades."""
    import httpx  # noqa: F401
    import pyarrow as pa

    pa.table({"x": [1]}).filter(pa.array([True])).column("x").to_numpy()


def catch_up_s(seconds: float) -> float:
    """How long after the data ends the pipeline may take to show every trade."""
    return max(30.0, 2 * seconds)


def wait_for_minute_boundary(lead_s: float, startup_s: float) -> float:
    """Sleep until launching now puts a wall-clock minute boundary ``lead_s`` into the data
    (the data starts ~``startup_s`` after the launch); returns the seconds slept."""
    now = time.time()
    wait = (-(now + startup_s + lead_s)) % 60.0
    if wait > 0.2:
        log(f"  waiting {wait:.0f} s so that a minute boundary falls {lead_s:.0f} s into the data")
        time.sleep(wait)
    return wait


def run_once(rate: float, variant: str, rec: Recording, workdir: Path, poll_s: float,
             align: bool, startup_est: list[float], lateness: int, keep: bool,
             how: str, dump: Path | None = None) -> Run:
    run = Run(rate, variant, rec, dump=dump)
    tag = f"{rate:g}/s {variant}"
    db = workdir / f"live-{rate:g}-{variant}.duckdb"
    for p in (db, db.with_name(db.name + ".wal"), db.with_name(db.name + ".query.json")):
        p.unlink(missing_ok=True)
    fake = FakeProcess(rec.path)
    proc = logfile = None
    try:
        lead = min(max(1.0, rec.seconds * 0.3), max(1.0, rec.seconds - lateness / 1000 - 3))
        if align:
            wait_for_minute_boundary(lead, startup_est[0])
        exe = Path(sys.executable).with_name("cryptostream")
        cmd = [str(exe), "run", "--source", "binance", "--binance-url", fake.info["ws_url"],
               "--binance-rest-url", fake.info["rest_url"], "--symbols", ",".join(rec.symbols),
               "--duration", f"{rec.seconds + catch_up_s(rec.seconds) + 15:g}s", "--db", str(db), "--lake", "off",
               "--no-progress", *VARIANTS[variant]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSTREAM_")}
        logfile = open(workdir / f"live-{rate:g}-{variant}.log", "w")  # noqa: SIM115
        warm_up_poller()
        run.load = os.getloadavg()[0]
        launched = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=logfile, stderr=subprocess.STDOUT)
        from cryptostream.query import endpoint_file

        while not endpoint_file(db).exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the pipeline exited with {proc.returncode} before serving "
                                   f"queries (see {logfile.name})")
            if time.monotonic() - launched > 60:
                raise RuntimeError("the pipeline did not serve queries within 60 s")
            time.sleep(0.01)
        poller = Poller(db, how)
        cpu0 = time.process_time()
        started = None
        status = fake.ask("status")
        last_status = last_log = time.monotonic()
        sent_stable_since = None
        give_up = None
        while True:
            tick = time.monotonic()
            poller.poll()
            now = time.monotonic()
            if now - last_status >= 0.2:
                prev_sent = status["sent"]
                status, last_status = fake.ask("status"), now
                if started is None and status["started"]:
                    started = now
                    startup_est[0] = started - launched
                    give_up = started + rec.seconds + catch_up_s(rec.seconds)
                if status["finished"] and status["sent"] == prev_sent:
                    sent_stable_since = sent_stable_since or now
                else:
                    sent_stable_since = None
            if now - last_log >= 2.0:
                last_log = now
                el = now - started if started else 0.0
                q = np.median(poller.query_ns[-200:]) / 1e6
                log(f"  {tag}: {el:5.1f} s of {rec.seconds:g} s data, sent {status['sent']:,}/"
                    f"{rec.trades:,}, seen {poller.seen:,}, windows {len(poller.windows)}, "
                    f"query p50 {q:.1f} ms")
            if proc.poll() is not None:
                run.notes.append(f"the pipeline exited early ({proc.returncode})")
                break
            if sent_stable_since and now - sent_stable_since > 0.3 and poller.seen >= status["sent"]:
                expected = expected_windows(rec, poller_shift(poller, rec), lateness)
                if expected is not None and expected <= set(poller.windows):
                    break
            if give_up is not None and now > give_up:
                run.notes.append("gave up waiting for every trade / window to show")
                break
            time.sleep(max(0.0005, poll_s - (time.monotonic() - tick)))
        run.cpu["poller"] = time.process_time() - cpu0
        poller.close()
        run.wall_s = time.monotonic() - (started or launched)
        run.cpu["pipeline"] = cpu_seconds(proc.pid)
        run.cpu["fake"] = cpu_seconds(fake.proc.pid)
        sends = fake.ask("sends")
        status = fake.ask("status")
        run.closed = status["closed"]
        if status["opened"] != 1:
            run.notes.append(f"{status['opened']} connections were opened (reconnects)")
        analyse(run, poller, sends, lateness)
    except Exception as exc:  # noqa: BLE001 - reported in the table, the other runs go on
        run.error = f"{type(exc).__name__}: {exc}"
        log(f"  {tag}: FAILED: {run.error}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if logfile is not None:
            logfile.close()
        fake.stop()
        if not keep:
            for p in (db, db.with_name(db.name + ".wal")):
                p.unlink(missing_ok=True)
    return run


def poller_shift(poller: Poller, rec: Recording) -> int | None:
    """The rebase shift (ms), from the first trade seen: stored trade time - recorded one."""
    if not poller.parts:
        return None
    sym, ids, t_ms = poller.parts[0][0][0], poller.parts[0][1][0], poller.parts[0][2][0]
    i = int(np.searchsorted(rec.ids[sym], ids))
    return int(t_ms) - int(rec.times_ms[sym][i])


def expected_windows(rec: Recording, shift: int | None, lateness: int) -> set | None:
    """The agg_1m windows (symbol, window_end ms) the watermark closes during the run: those
    with trades and ``window_end <= last trade time - lateness``."""
    if shift is None:
        return None
    out = set()
    for s, t in rec.times_ms.items():
        if not len(t):
            continue
        t = t + shift
        first_end = (int(t[0]) // MINUTE_MS + 1) * MINUTE_MS
        for end in range(first_end, int(t[-1]) - lateness + 1, MINUTE_MS):
            lo, hi = np.searchsorted(t, [end - MINUTE_MS, end])
            if hi > lo:
                out.add((s, end))
    return out


def analyse(run: Run, poller: Poller, sends: dict, lateness: int) -> None:
    rec = run.rec
    run.polls = len(poller.query_ns)
    run.query_ms = np.asarray(poller.query_ns) / 1e6
    send_sym = np.asarray(sends["symbols"], dtype=object)[sends["code"]]
    send_key = {(s, int(i)): int(ns) for s, i, ns in zip(send_sym.tolist(), sends["id"].tolist(),
                                                          sends["ns"].tolist())}
    run.sent = len(send_key)
    if run.sent:
        run.send_span_s = (sends["ns"].max() - sends["ns"].min()) / 1e9
    if run.sent < rec.trades:
        run.notes.append(f"the stand-in sent {run.sent:,} of {rec.trades:,} trades")
    if not poller.parts:
        run.missing = run.sent
        return
    sym = np.concatenate([p[0] for p in poller.parts])
    ids = np.concatenate([p[1] for p in poller.parts]).astype(np.int64)
    t_ms = np.concatenate([p[2] for p in poller.parts]).astype(np.int64)
    recv_us = np.concatenate([p[3] for p in poller.parts]).astype(np.int64)
    proc_us = np.concatenate([p[4] for p in poller.parts]).astype(np.int64)
    seen_ns = np.concatenate([np.full(len(p[1]), p[5], np.int64) for p in poller.parts])
    send_ns = np.array([send_key.get((s, i), -1) for s, i in zip(sym.tolist(), ids.tolist())],
                       np.int64)
    seen_keys = set(zip(sym.tolist(), ids.tolist()))
    run.seen = len(seen_keys)
    if run.seen != len(ids):
        run.notes.append(f"{len(ids) - run.seen} trades were stored twice")
    run.missing = sum(1 for k in send_key if k not in seen_keys)
    ok = send_ns >= 0
    run.extra = int((~ok).sum())  # stored, never sent on the stream (REST backfill)
    # a trade sent before the first poll went out is seen by that poll whenever it was
    # stored: its time says when the poller started, not how fast the pipeline is
    early = ok & (send_ns < (poller.first_poll_ns or 0))
    run.before_poller = int(early.sum())
    ok &= ~early
    run.trade_ms = (seen_ns[ok] - send_ns[ok]) / 1e6
    has_recv = ok & (recv_us >= 0)
    run.wire_ms = (recv_us[has_recv] * 1000 - send_ns[has_recv]) / 1e6
    run.proc_ms = (proc_us[has_recv] - recv_us[has_recv]) / 1000
    run.store_ms = (seen_ns[ok] - proc_us[ok] * 1000) / 1e6
    run.lag_ms = send_ns[ok] / 1e6 - t_ms[ok]
    if run.dump is not None:
        np.savez(run.dump, symbol=sym.astype(str), trade_id=ids, trade_time_ms=t_ms,
                 send_ns=send_ns, recv_us=recv_us, processed_us=proc_us, seen_ns=seen_ns,
                 query_ns=np.asarray(poller.query_ns))
    run.offset_ms = float(np.median(run.lag_ms)) if len(run.lag_ms) else 0.0

    # windows
    shift = poller_shift(poller, rec)
    expected = expected_windows(rec, shift, lateness) or set()
    run.windows_expected = len(expected)
    run.windows_missing = len(expected - set(poller.windows))
    lat, trig, wait = [], [], []
    for s, end in sorted(expected & set(poller.windows)):
        seen, _ = poller.windows[(s, end)]
        lat.append(seen / 1e6 - end - run.offset_ms)
        t = rec.times_ms[s] + shift
        i = int(np.searchsorted(t, end + lateness))  # first trade that moves the watermark past end
        if i < len(t):
            ns = send_key.get((s, int(rec.ids[s][i])))
            if ns is not None:
                trig.append((seen - ns) / 1e6)
                wait.append(ns / 1e6 - end - run.offset_ms)
    run.window_ms, run.window_trigger_ms = np.asarray(lat), np.asarray(trig)
    run.window_wait_ms = np.asarray(wait)


# -- report ------------------------------------------------------------------------------------
def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if len(a) else float("nan")


def trio(a: np.ndarray, fmt: str = "{:.1f}") -> str:
    if not len(a):
        return "-"
    return " / ".join(fmt.format(v) for v in (pct(a, 50), pct(a, 99), float(np.max(a))))


def fmt_cpu(run: Run) -> str:
    c = run.cpu
    return "/".join("-" if c.get(k) is None else f"{c[k]:.1f}" for k in ("pipeline", "fake", "poller"))


HEADERS = ["rate /s", "variant", "trades sent", "fake sent /s", "seen", "missing",
           "trade ms p50 / p99 / max", "windows", "window ms after end p50 / p99 / max",
           "window ms after closing trade p50 / max", "query ms p50", "polls", "CPU s pipe/fake/poll",
           "wall s", "load"]


def table_rows(runs: list[Run]) -> list[list[str]]:
    rows = []
    for r in runs:
        if r.error:
            rows.append([f"{r.rate:,.0f}", r.label, "ERROR: " + r.error, *[""] * (len(HEADERS) - 3)])
            continue
        win = f"{len(r.window_ms)}/{r.windows_expected}"
        trig = ("-" if not len(r.window_trigger_ms) else
                f"{pct(r.window_trigger_ms, 50):.0f} / {np.max(r.window_trigger_ms):.0f}")
        rows.append([
            f"{r.rate:,.0f}", r.label, f"{r.sent:,}", f"{r.fake_rate:,.0f}", f"{r.seen:,}",
            f"{r.missing:,}", trio(r.trade_ms), win, trio(r.window_ms, "{:.0f}"), trig,
            f"{pct(r.query_ms, 50):.1f}", f"{r.polls:,}", fmt_cpu(r), f"{r.wall_s:.1f}",
            f"{r.load:.2f}",
        ])
    return rows


def breakdown_lines(runs: list[Run]) -> list[str]:
    out = []
    for r in runs:
        if r.error or not len(r.trade_ms):
            continue
        out.append(
            f"{r.rate:,.0f}/s {r.label}: stand-in lag behind its clock (send - trade time) "
            f"p50/p99/max {trio(r.lag_ms)} ms; send -> pipeline receive {trio(r.wire_ms)}; "
            f"receive -> processed {trio(r.proc_ms)}; processed -> seen by the poller "
            f"{trio(r.store_ms)}; windows: closing trade sent after window end + offset "
            f"{trio(r.window_wait_ms, '{:.0f}')} ms"
        )
    return out


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]

    def line(cells):
        return "  ".join(c.rjust(w) if i not in (1,) else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(HEADERS), line(["-" * w for w in widths]), *map(line, rows)])


def md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |",
           "|" + "|".join("---" if i == 1 else "---:" for i in range(len(HEADERS))) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def target_lines(runs: list[Run], lateness: int) -> list[str]:
    lines = []
    limit = lateness + WINDOW_SLACK_MS
    for r in runs:
        if r.error or r.variant != "live":
            continue
        p99 = pct(r.trade_ms, 99)
        ok = len(r.trade_ms) > 0 and p99 <= TRADE_P99_TARGET_MS and r.missing == 0
        lines.append(f"{r.rate:,.0f}/s: trade visible p99 <= {TRADE_P99_TARGET_MS:g} ms: "
                     f"{p99:.1f} ms -> {'PASS' if ok else 'FAIL'}"
                     + (f" ({r.missing:,} trades missing)" if r.missing else ""))
        if len(r.window_ms):
            worst = float(np.max(r.window_ms))
            ok = worst <= limit and r.windows_missing == 0
            lines.append(f"{r.rate:,.0f}/s: window stored <= lateness + {WINDOW_SLACK_MS:g} ms "
                         f"= {limit:g} ms after its end (every window, i.e. the max): "
                         f"{worst:.0f} ms over {len(r.window_ms)} windows -> "
                         f"{'PASS' if ok else 'FAIL'}")
        else:
            lines.append(f"{r.rate:,.0f}/s: window target: no window closed by the watermark "
                         "during the run (not judged)")
    return lines


def check_lines(runs: list[Run]) -> tuple[list[str], bool]:
    lines, bad = [], False
    for r in runs:
        if r.error:
            lines.append(f"{r.rate:,.0f}/s {r.label}: ERROR {r.error}")
            bad = True
            continue
        ok = r.missing == 0 and r.sent == r.rec.trades and r.windows_missing == 0
        bad |= not ok
        closed = ", ".join(f"{k} {v}" for k, v in r.closed.items()) or "none"
        lines.append(
            f"{r.rate:,.0f}/s {r.label}: {r.rec.trades:,} trades in the recording, {r.sent:,} sent "
            f"on the stream, {r.seen:,} seen in the store, {r.missing:,} sent but never seen, "
            f"{r.extra:,} stored without a stream send (REST backfill), {r.before_poller:,} sent "
            f"before the first poll (not timed); windows closed by the "
            f"watermark {len(r.window_ms)}/{r.windows_expected} seen; connections closed: "
            f"{closed} -> {'OK' if ok else 'INCOMPLETE'}"
            + "".join(f"; {n}" for n in r.notes))
    return lines, bad


def caveat_lines(runs: list[Run], poll_ms: float, lateness: int, how: str) -> list[str]:
    ok = [r for r in runs if not r.error]
    offsets = ", ".join(f"{r.rate:,.0f}/s {r.variant} {r.offset_ms:.1f}" for r in ok)
    qs = np.concatenate([r.query_ms for r in ok]) if ok else np.empty(0)
    client = ("one kept-alive HTTP connection to the pipeline's query endpoint" if how == "keepalive"
              else "`cryptostream.query.run_query` (a new HTTP client per call)")
    return [
        (f"'seen' is when the answer to the poll that first returned the row arrived: the "
         f"polling resolution (a poll starts every {poll_ms:g} ms, or right after the previous "
         f"one when it took longer) plus the query time is included. Query time over all runs "
         f"p50/p99/max {trio(qs)} ms, through {client}; the endpoint runs in the pipeline's "
         "process and competes with it for the GIL."),
        ("Latencies compare `time.time_ns()` of two processes on one machine (same clock). "
         "The stand-in runs in its own process; its stamp is taken just before the trade's "
         "message is handed to `websocket.send`."),
        ("Window latency = seen - (window_end + offset); offset = median(send stamp - rebased "
         f"trade time), the stand-in's clock lag behind the wall clock, ms: {offsets}. "
         f"A window can only close when a trade with time >= window_end + {lateness} ms "
         "(allowed lateness) arrives, so a quiet symbol adds the wait for its next trade: the "
         "column 'after closing trade' is the pipeline's own part (that trade's send -> "
         "window seen)."),
        ("Few windows per run (one minute boundary per run, one window per symbol): the window "
         "p99 is in effect the max."),
        ("Rates are means: the simulator's order flow is bursty (volatility-coupled intensity, "
         "occasional sweeps of hundreds of trades in one millisecond)."),
        ("CPU s = process CPU time over the run (pipeline process incl. its query endpoint / "
         "stand-in process / this poller); the machine has 2 vCPUs, shared with other work "
         "('load' = 1-min load average at the start of the run)."),
    ]


def recording_desc(recs: dict[float, Recording]) -> str:
    return "; ".join(
        f"{rate:,.0f}/s: {r.trades:,} trades over {r.seconds:g} s" for rate, r in recs.items())


def append_markdown(path: Path, cmd: str, info: dict, setup: str, rows: list[list[str]],
                    breakdown: list[str], targets: list[str], checks: list[str],
                    caveats: list[str]) -> None:
    md = [
        f"\n## {info['date']} — commit {info['commit']} — live latency (`bench_live_latency.py`)\n",
        f"- Command: `{cmd.strip()}`",
        f"- Machine: {info['cpu']}, {info['cores']}, {info['memory']} RAM, {info['os']}",
        f"- Software: Python {info['python']}; {info['versions']}",
        f"- Setup: {setup}\n",
        md_table(rows), "",
        "Where the time goes (ms, p50 / p99 / max):\n",
        *[f"- {b}" for b in breakdown], "",
        "**Targets** (the live variant; the baseline is for comparison)\n",
        *[f"- {t}" for t in targets], "",
        "**Checks**\n", *[f"- {c}" for c in checks], "",
        "**Caveats**\n", *[f"- {c}" for c in caveats], "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n".join(md) + "\n")


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--rates", default="100,1000,10000",
                    help="trades/s, all symbols together, comma-separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of trades per rate")
    ap.add_argument("--symbols", type=int, default=5, help=f"1-{len(SYMBOLS)} symbols")
    ap.add_argument("--variants", default="live,baseline",
                    help="live (default: write when the writer is idle) and/or baseline (--flush-interval 1s)")
    ap.add_argument("--poll-ms", type=float, default=5.0, help="store polling interval")
    ap.add_argument("--poller", choices=("keepalive", "run_query"), default="keepalive",
                    help="keepalive: the query endpoint over one kept-alive connection; "
                         "run_query: cryptostream.query.run_query as is (a new HTTP client, "
                         "~30 ms, per poll)")
    ap.add_argument("--no-align", action="store_true",
                    help="do not wait for a minute boundary to fall into each run")
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "cryptostream-bench",
                    help="recordings, stores and pipeline logs go here")
    ap.add_argument("--keep", action="store_true", help="keep the DuckDB files")
    ap.add_argument("--dump", action="store_true",
                    help="save per-trade times of each run to WORKDIR/live-RATE-VARIANT.npz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", nargs="?", const=str(ROOT / "docs" / "benchmarks.md"),
                    metavar="MD", help="append the results to docs/benchmarks.md (or MD)")
    args = ap.parse_args(argv)
    args.rate_list = [float(x) for x in args.rates.split(",") if x.strip()]
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.rate_list or any(r <= 0 for r in args.rate_list):
        ap.error("--rates: positive numbers")
    if not args.variant_list or set(args.variant_list) - set(VARIANTS):
        ap.error(f"--variants: some of {', '.join(VARIANTS)}")
    if not 1 <= args.symbols <= len(SYMBOLS):
        ap.error(f"--symbols: 1-{len(SYMBOLS)}")
    if args.seconds <= 0:
        ap.error("--seconds: > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    lateness = lateness_ms()
    symbols = list(SYMBOLS[: args.symbols])
    if args.seconds < lateness / 1000 + 5:
        log(f"note: --seconds {args.seconds:g} is too short for a window to close by the "
            "watermark within the run; only trade latency is measured")
    info = machine_info()
    log(f"live latency: rates {args.rates}/s, {args.seconds:g} s each, {len(symbols)} symbols, "
        f"variants {', '.join(args.variant_list)}, poll every {args.poll_ms:g} ms")
    t_all = time.monotonic()
    recs: dict[float, Recording] = {}
    runs: list[Run] = []
    startup_est = [2.0]  # seconds from launching the pipeline to its subscription
    for rate in args.rate_list:
        log(f"{rate:g}/s: generating {args.seconds:g} s of trades")
        recs[rate] = rec = make_recording(args.workdir, rate, args.seconds, symbols, args.seed)
        log(f"{rate:g}/s: {rec.trades:,} trades ({rec.trades / args.seconds:,.0f}/s) in {rec.path}")
        for variant in args.variant_list:
            log(f"{rate:g}/s {VARIANT_LABEL[variant]}: run (total elapsed "
                f"{time.monotonic() - t_all:.0f} s)")
            run = run_once(rate, variant, rec, args.workdir, args.poll_ms / 1000,
                           not args.no_align, startup_est, lateness, args.keep, args.poller,
                           args.workdir / f"live-{rate:g}-{variant}.npz" if args.dump else None)
            runs.append(run)
            if not run.error:
                log(f"{rate:g}/s {variant}: trade ms p50/p99/max {trio(run.trade_ms)}, windows "
                    f"{len(run.window_ms)} {trio(run.window_ms, '{:.0f}')} ms, missing {run.missing}")
    rows = table_rows(runs)
    breakdown = breakdown_lines(runs)
    targets = target_lines(runs, lateness)
    checks, bad = check_lines(runs)
    caveats = caveat_lines(runs, args.poll_ms, lateness, args.poller)
    setup = (f"{len(symbols)} symbols ({', '.join(symbols)}), simulated (seed {args.seed}), "
             f"served by the Binance stand-in at speed 1 with rebased times; "
             f"{recording_desc(recs)}; store polled every {args.poll_ms:g} ms ({args.poller}); allowed "
             f"lateness {lateness} ms; `cryptostream run --source binance --lake off` with "
             "default settings (live) or `--flush-interval 1s` (baseline)")
    print()
    print("CryptoStream live latency benchmark")
    for k, v in info.items():
        print(f"  {k:9s} {v}")
    print(f"  setup     {setup}")
    print()
    print(text_table(rows))
    print()
    sections = {"Where the time goes (ms, p50 / p99 / max)": breakdown, "Targets": targets,
                "Checks": checks, "Caveats": caveats}
    for title, lines in sections.items():
        print(title)
        for line in lines:
            print("  " + line)
        print()
    if args.record:
        cmd = "python benchmarks/bench_live_latency.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]))
        append_markdown(Path(args.record), cmd, info, setup, rows, breakdown, targets, checks,
                        caveats)
        log(f"appended to {args.record}")
    log(f"done in {time.monotonic() - t_all:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
