"""End-to-end throughput of CryptoStream against a per-record Python baseline, in one process.

Replays N simulated trades of S symbols (default 5 M, 5) from (a) JSON lines of Binance
combined-stream messages, symbols interleaved, and (b) official-layout trade CSVs, one per
symbol, through clean + both window specs (tumbling 1 m, sliding 5 m / 1 m) + DuckDB:

* ``cryptostream``            the in-process ``EmbeddedPipeline`` as configured by default
                              (DuckDB uses every core; the source decodes in a thread of its
                              own, and the sink may write in another);
* ``cryptostream threads=1``  the same with the DuckDB connection set to ``threads = 1``;
* ``cryptostream 1 CPU``      the same, and the whole process pinned to one CPU
                              (``sched_setaffinity``): the "one core" figure the targets are
                              judged on;
* ``baseline per-record``     ``baseline_per_record.py`` on the same input, also pinned.

Prints wall seconds, trades/s, the ratio to the baseline, CPU seconds per thread (main /
source / sink writer / other = DuckDB and Arrow workers) and per stage, peak RSS, the
targets with pass/fail, and checks that pipeline and baseline stored the same windows.
Inputs are generated with the simulator's file writers and cached in ``--workdir``. Progress goes to stderr, results to stdout;
``--record`` appends them to docs/benchmarks.md, ``--profile`` adds a cProfile breakdown of
one "1 CPU" pipeline run per format (thread CPU time, every pipeline thread).

    python benchmarks/bench_pipeline.py                       # 5 M trades, a few minutes
    python benchmarks/bench_pipeline.py --trades 500000 --formats csv
    python benchmarks/bench_pipeline.py --profile --record    # what docs/benchmarks.md shows
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import gc
import json
import os
import platform
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Self

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import baseline_per_record

from cryptostream.config import load_settings
from cryptostream.pipeline import EmbeddedPipeline
from cryptostream.sources.simulator import write_trade_csv, write_ws_jsonl

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT",
           "TRXUSDT", "LTCUSDT", "LINKUSDT")
TARGETS = {"json": 1_000_000, "csv": 3_000_000}  # trades/s on one core
TARGET_RATIO = 5.0
TABLES = ("agg_1m", "agg_5m_1m")
EXACT_COLS = ("trade_count", "first_trade_id", "last_trade_id", "spike_count", "missing_trades",
              "window_end")
FLOAT_COLS = ("open", "high", "low", "close", "volume", "quote_volume", "vwap", "avg_price",
              "price_stddev", "buy_volume", "sell_volume", "buy_sell_ratio", "trade_intensity",
              "range_pct", "return_pct")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- machine ---------------------------------------------------------------------------------
def commit_id() -> str:
    """``git rev-parse --short HEAD``, read from .git directly (no git process needed)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:7]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:7]
        packed = git / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line[:7]
        return f"(no commit on {ref.rsplit('/', 1)[-1]} yet)"
    except OSError:
        pass
    try:  # not a plain .git directory (worktree, submodule): ask git
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=10, check=False)
        return out.stdout.strip() or f"(unknown: {out.stderr.strip()[:80]})"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"(unknown: {exc})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gb() -> float | None:
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        return int(m.group(1)) / 2**20 if m else None
    except OSError:
        return None


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def machine_info() -> dict:
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = mem_total_gb()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit_id(),
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} logical ({allowed} usable)",
        "memory": f"{mem:.1f} GiB" if mem else "?",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": ", ".join(f"{d} {version(d)}" for d in
                              ("cryptostream", "numpy", "duckdb", "msgspec", "pyarrow", "orjson")),
    }


# -- measuring -------------------------------------------------------------------------------
def _status_kb(field_name: str) -> int | None:
    try:
        m = re.search(rf"{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so each run gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def pinned(enabled: bool):
    """Pin the calling thread, and every thread it starts from now on, to one CPU."""
    if not enabled:
        yield None
        return
    before = os.sched_getaffinity(0)
    cpu = max(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def _on_main() -> bool:
    return threading.current_thread() is threading.main_thread()


def _clock(obj, name: str, res: Result, key: str) -> None:
    """Wrap ``obj.name`` (an instance attribute from now on) to add its thread CPU time to
    ``res.stages[key]`` and note whether it ran off the main thread (a writer thread):
    a handful of calls per batch, so no measurable overhead."""
    fn = getattr(obj, name, None)
    if fn is None:
        return

    def timed(*args, **kwargs):
        t = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            res.stages[key] = res.stages.get(key, 0.0) + time.thread_time() - t
            if not _on_main():
                res.off_main.add(key)

    setattr(obj, name, timed)


def _profile_off_main(obj, name: str, profs: dict) -> None:
    """Profile ``obj.name`` when a thread other than the main one calls it (one cProfile per
    thread name; the main thread has its own profile for the whole run)."""
    fn = getattr(obj, name, None)
    if fn is None:
        return

    def profiled(*args, **kwargs):
        if _on_main():
            return fn(*args, **kwargs)
        label = threading.current_thread().name
        prof = profs.get(label) or profs.setdefault(label, cProfile.Profile(time.thread_time))
        prof.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            prof.disable()

    setattr(obj, name, profiled)


@dataclass
class Result:
    fmt: str
    impl: str
    trades: int = 0
    seconds: float = 0.0
    cpu_main: float | None = None
    cpu_source: float | None = None
    cpu_total: float = 0.0
    rss_start_mb: float | None = None
    rss_peak_mb: float | None = None
    peak_is_lifetime: bool = False
    load1: float = 0.0
    db: Path | None = None
    one_core: bool = False
    baseline: bool = False
    stages: dict = field(default_factory=dict)  # stage -> thread CPU s
    off_main: set = field(default_factory=set)  # stages that ran off the main thread
    counts: dict = field(default_factory=dict)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.trades / self.seconds if self.seconds > 0 else 0.0


class Measure:
    """Wall clock, process CPU, main-thread CPU, peak RSS and load around one run."""

    def __init__(self, res: Result):
        self.res = res

    def __enter__(self) -> Self:
        gc.collect()
        self.res.load1 = os.getloadavg()[0]
        self.fresh_peak = _reset_peak_rss()
        rss = _status_kb("VmRSS")
        self.res.rss_start_mb = rss / 1024 if rss else None
        self.t0 = time.perf_counter()
        self.cpu0 = os.times()
        self.main0 = time.thread_time()
        return self

    def __exit__(self, *exc) -> None:
        res = self.res
        res.seconds = time.perf_counter() - self.t0
        res.cpu_main = time.thread_time() - self.main0
        c = os.times()
        res.cpu_total = (c.user - self.cpu0.user) + (c.system - self.cpu0.system)
        hwm = _status_kb("VmHWM")
        res.rss_peak_mb = hwm / 1024 if hwm else None
        res.peak_is_lifetime = not self.fresh_peak


# -- inputs ----------------------------------------------------------------------------------
@dataclass
class Inputs:
    json_path: Path
    csv: list[tuple[str, Path]]
    per_symbol: dict[str, int]
    trades: int


def prepare_inputs(workdir: Path, n: int, n_symbols: int, seed: int, formats: list[str],
                   regenerate: bool) -> Inputs:
    symbols = list(SYMBOLS[:n_symbols]) + [f"SIM{i}USDT" for i in range(len(SYMBOLS), n_symbols)]
    d = workdir / f"inputs-n{n}-s{n_symbols}-seed{seed}"
    manifest = d / "manifest.json"
    if regenerate and d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    info = json.loads(manifest.read_text()) if manifest.exists() else {}
    json_path = d / "trades-combined.jsonl"

    def progress(what: str, total: int):
        last = [0.0]

        def cb(done: int) -> None:
            if time.monotonic() - last[0] > 5 or done == total:
                last[0] = time.monotonic()
                log(f"  {what}: {done:,}/{total:,}")
        return cb

    if "per_symbol" not in info or not json_path.exists():
        log(f"generating {n:,} trades of {len(symbols)} symbols as JSON lines -> {json_path}")
        tmp = json_path.with_suffix(".tmp")
        write_ws_jsonl(tmp, symbols, n, seed=seed, combined=True,
                       progress=progress("json", n))
        tmp.replace(json_path)
        counts: Counter = Counter()
        with open(json_path, "rb") as fh:  # {"stream":"btcusdt@trade",...
            for line in fh:
                counts[line[11:line.index(b"@", 11)]] += 1
        info = {"trades": n, "symbols": symbols, "seed": seed,
                "per_symbol": {s: counts[s.lower().encode()] for s in symbols}, "csv": {}}
        manifest.write_text(json.dumps(info, indent=1))
    per_symbol = info["per_symbol"]
    csvs = []
    for s in symbols:
        path = d / f"{s}-trades-2024-08-08.csv"
        csvs.append((s, path))
        if "csv" in formats and (info["csv"].get(s) != per_symbol[s] or not path.exists()):
            log(f"generating {per_symbol[s]:,} {s} trades as an official trade CSV -> {path}")
            tmp = path.with_suffix(".tmp")
            write_trade_csv(tmp, s, per_symbol[s], seed=seed, progress=progress(s, per_symbol[s]))
            tmp.replace(path)
            info["csv"][s] = per_symbol[s]
            manifest.write_text(json.dumps(info, indent=1))
    return Inputs(json_path, csvs, per_symbol, n)


def warm_page_cache(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(64 << 20):
                pass


# -- runs ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _isolated(workdir: Path):
    """No stray ``cryptostream.toml`` (the working directory) or ``$CRYPTOSTREAM_CONFIG``."""
    cwd, cfg = Path.cwd(), os.environ.pop("CRYPTOSTREAM_CONFIG", None)
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(cwd)
        if cfg is not None:
            os.environ["CRYPTOSTREAM_CONFIG"] = cfg


def _settings(replay: list[str], db: Path, workdir: Path):
    with _isolated(workdir):
        return load_settings(
            source="replay", replay=replay, speed="max", db=str(db), lake="off",
            serve_queries=False, progress=False,
        )


def _replay_specs(fmt: str, inputs: Inputs) -> list[str]:
    if fmt == "json":
        return [str(inputs.json_path)]
    return [f"{s}={p}" for s, p in inputs.csv]


def run_pipeline(fmt: str, inputs: Inputs, db: Path, workdir: Path, impl: str,
                 threads: int | None = None, pin: bool = False,
                 profile: dict | None = None) -> Result:
    """One in-process EmbeddedPipeline run; ``profile`` receives cProfile stats per thread."""
    res = Result(fmt, impl, db=db, one_core=pin)
    _fresh(db)
    try:
        with pinned(pin):
            pipe = EmbeddedPipeline(_settings(_replay_specs(fmt, inputs), db, workdir))
            if threads:
                pipe.sink.threads = threads  # no setting for this yet: SET threads on open()
            src_cpu: list[float] = []
            profs: dict[str, cProfile.Profile] = {}
            produce = getattr(pipe, "_produce", None)
            if produce is not None:  # measure (and maybe profile) the source thread
                def produce_measured():
                    t = time.thread_time()
                    if profile is not None:
                        profs["source"] = p = cProfile.Profile(time.thread_time)
                        p.enable()
                    try:
                        produce()
                    finally:
                        if profile is not None:
                            profs["source"].disable()
                        src_cpu.append(time.thread_time() - t)
                pipe._produce = produce_measured
            if profile is None:  # thread CPU of the stages (not with cProfile running)
                _clock(pipe.processor, "process", res, "clean + window")
                _clock(pipe.processor, "close", res, "clean + window")
                _clock(pipe.sink, "write", res, "DuckDB write")
                for name in ("open", "flush", "close"):
                    _clock(pipe.sink, name, res, "DuckDB open/checkpoint/close")
            else:  # a sink writer thread, if the pipeline has one
                _profile_off_main(pipe.sink, "write", profs)
            with Measure(res):
                if profile is not None:
                    profs["main"] = pm = cProfile.Profile(time.thread_time)
                    pm.enable()
                try:
                    summary = pipe.run(install_signals=False)
                finally:
                    if profile is not None:
                        pm.disable()
        res.cpu_source = src_cpu[0] if src_cpu else None
        if res.stages and res.cpu_main is not None:
            st = res.stages
            on_main = sum(v for k, v in st.items() if k not in res.off_main)
            st["rest of main thread"] = res.cpu_main - on_main
            if res.cpu_source is not None:
                st["source: read + decode"] = res.cpu_source
            order = ("source: read + decode", "clean + window", "DuckDB write",
                     "DuckDB open/checkpoint/close", "rest of main thread")
            res.stages = {k: st[k] for k in order if k in st}
            res.notes.append("thread CPU s: " + ", ".join(
                f"{k}{' (writer thread)' if k in res.off_main else ''} {v:.2f}"
                for k, v in res.stages.items()))
        res.trades = summary.received
        res.counts = {"received": summary.received, "accepted": summary.accepted,
                      "rejected": summary.rejected, "duplicates": summary.duplicates,
                      **{f"windows_{t}": v for t, v in summary.windows.items()}}
        if profile is not None:
            profile.update(profs)
        if summary.received != inputs.trades:
            res.notes.append(f"received {summary.received:,} of {inputs.trades:,} trades")
    except Exception as exc:  # noqa: BLE001 - a broken run is reported, the others still run
        res.error = f"{type(exc).__name__}: {exc}"
        log(traceback.format_exc())
    return res


def run_baseline(fmt: str, inputs: Inputs, db: Path, limit: int | None, pin: bool) -> Result:
    res = Result(fmt, "baseline per-record" + (" 1 CPU" if pin else ""), db=db, one_core=pin,
                 baseline=True)
    _fresh(db)
    try:
        with pinned(pin), Measure(res):
            if fmt == "json":
                r = baseline_per_record.run_baseline([inputs.json_path], db=db, limit=limit,
                                                     threads=1 if pin else None)
            else:
                parts = [(s, p, None if limit is None else
                          limit * inputs.per_symbol[s] // inputs.trades) for s, p in inputs.csv]
                if limit is not None:  # the rounding remainder goes to the first file
                    s0, p0, l0 = parts[0]
                    parts[0] = (s0, p0, l0 + limit - sum(x[2] for x in parts))
                b = baseline_per_record.PerRecordBaseline()
                t0 = time.perf_counter()
                for s, p, lim in parts:
                    b.feed_csv_file(p, s, limit=lim)
                b.close()
                t1 = time.perf_counter()
                b.store(db, threads=1 if pin else None)
                r = {**b.counters(), "process_s": t1 - t0, "store_s": time.perf_counter() - t1}
                del b
        res.trades = r["received"]
        res.counts = r
        res.notes.append(f"per-record processing {r['process_s']:.1f} s, "
                         f"DuckDB bulk load {r['store_s']:.1f} s")
    except Exception as exc:  # noqa: BLE001 - reported in the table
        res.error = f"{type(exc).__name__}: {exc}"
        log(traceback.format_exc())
    return res


def _fresh(db: Path) -> None:
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)


# -- checks ----------------------------------------------------------------------------------
def compare_stores(a: Path, b: Path) -> dict:
    """Row counts, sum of trade_count and differing windows of the two stores' aggregates."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
        con.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
        out = {}
        for t in TABLES:
            na, sa = con.execute(f"SELECT count(*), sum(trade_count) FROM a.{t}").fetchone()
            nb, sb = con.execute(f"SELECT count(*), sum(trade_count) FROM b.{t}").fetchone()
            conds = [f"x.{c} IS DISTINCT FROM y.{c}" for c in EXACT_COLS]
            conds += [
                f"((x.{c} IS NULL) <> (y.{c} IS NULL) OR abs(x.{c} - y.{c}) > "
                f"1e-9 * greatest(abs(x.{c}), abs(y.{c}), 1e-9))" for c in FLOAT_COLS
            ]
            diff = con.execute(
                f"SELECT count(*) FROM a.{t} x FULL OUTER JOIN b.{t} y "
                f"ON x.symbol = y.symbol AND x.window_start = y.window_start "
                f"WHERE x.symbol IS NULL OR y.symbol IS NULL OR " + " OR ".join(conds)
            ).fetchone()[0]
            out[t] = {"rows": (na, nb), "trade_count": (sa, sb), "differing_windows": diff}
        ta = con.execute("SELECT count(*) FROM a.trades").fetchone()[0]
        tb = con.execute("SELECT count(*) FROM b.trades").fetchone()[0]
        out["trades"] = {"rows": (ta, tb)}
        return out
    finally:
        con.close()


def check_lines(label: str, cmp: dict) -> tuple[list[str], bool]:
    lines, ok = [], True
    for t in TABLES:
        c = cmp[t]
        same = (c["rows"][0] == c["rows"][1] and c["trade_count"][0] == c["trade_count"][1]
                and c["differing_windows"] == 0)
        ok &= same
        lines.append(
            f"{label} {t}: rows {c['rows'][0]:,} vs {c['rows'][1]:,}, "
            f"sum(trade_count) {c['trade_count'][0]:,} vs {c['trade_count'][1]:,}, "
            f"windows differing beyond 1e-9: {c['differing_windows']}"
            + ("  OK" if same else "  <<<<<< MISMATCH >>>>>>")
        )
    tr = cmp["trades"]["rows"]
    ok &= tr[0] == tr[1]
    lines.append(f"{label} trades: rows {tr[0]:,} vs {tr[1]:,}"
                 + ("  OK" if tr[0] == tr[1] else "  <<<<<< MISMATCH >>>>>>"))
    return lines, ok


# -- profile ---------------------------------------------------------------------------------
def _cum(stats: dict, path_end: str, func: str, col: int = 3) -> float:
    """Sum of cumulative (col 3) or self (col 2) time of the functions named ``func`` in files
    ending with ``path_end``."""
    return sum(v[col] for (fn, _, name), v in stats.items()
               if name == func and fn.replace("\\", "/").endswith(path_end))


def stage_rows(profs: dict[str, cProfile.Profile]) -> list[tuple[str, str, float]]:
    """(thread, stage, CPU s) of a profiled pipeline run, from the package's function names
    (whatever thread they ran in); "rest" is the thread's CPU outside the named stages.

    DuckDB's Python methods (nanobind) are invisible to cProfile: their time is the self
    time of the calling function (``_run``: the INSERTs, ``write``: BEGIN/COMMIT).
    """
    rows = []
    for thread, prof in profs.items():
        st = pstats.Stats(prof)
        total, s = st.total_tt, st.stats
        found = []
        write = _cum(s, "sinks/duckdb_sink.py", "write")
        arrow = sum(_cum(s, "sinks/base.py", f) for f in
                    ("trades_table", "windows_table", "rejects_table", "gaps_table",
                     "stats_table"))
        chunk = _cum(s, "sources/ws_columnar.py", "decode_chunk")
        query = _cum(s, "sources/ws_columnar.py", "_query")
        msgs = _cum(s, "sources/binance_messages.py", "decode_lines")
        found += [
            ("clean + window: Processor.process", _cum(s, "processing/engine.py", "process")),
            ("final windows: Processor.close", _cum(s, "processing/engine.py", "close")),
            ("DuckDB write: Arrow tables from the output", arrow),
            ("DuckDB write: INSERT / anti-join / upsert / COMMIT", write - arrow),
            ("DuckDB open (DDL) / checkpoint / close",
             sum(_cum(s, "sinks/duckdb_sink.py", f) for f in ("open", "flush", "close"))),
        ]
        if chunk:
            found += [
                ("JSON: DuckDB JSON extraction (ColumnarDecoder._query)", query),
                ("JSON: split lines, Arrow column, assemble batch", chunk - query),
            ]
        elif msgs:
            decode = _cum(s, "sources/binance_messages.py", "_decode_fast")
            found += [("JSON: msgspec decode of the lines", decode),
                      ("JSON: columns from the structs (_assemble etc.)", msgs - decode)]
        found.append(("CSV: Arrow CSV reader + batches",
                      _cum(s, "sources/trade_csv.py", "read_trade_csv")))
        found = [(k, v) for k, v in found if v > 0.005]
        rows += [(thread, k, v) for k, v in found]
        rows.append((thread, "rest (file reads, loop, channel, waiting for the GIL is not CPU)",
                     total - sum(v for _, v in found)))
    return rows


def profile_tables(profs: dict[str, cProfile.Profile], top: int = 12) -> list[str]:
    """Markdown: stages, then per thread the package's functions by cumulative CPU and the top
    self times (cProfile with a thread-CPU-time timer)."""
    lines: list[str] = []
    totals = {name: pstats.Stats(prof).total_tt for name, prof in profs.items()}
    all_cpu = sum(totals.values()) or 1.0
    lines += ["| thread | stage | CPU s | % of run CPU |", "|---|---|---:|---:|"]
    for thread, stage, sec in stage_rows(profs):
        lines.append(f"| {thread} | {stage} | {sec:.2f} | {100 * sec / all_cpu:.1f} |")
    lines += [f"| all | total (profiled CPU) | {all_cpu:.2f} | 100 |", ""]
    lines.append("DuckDB's methods are invisible to cProfile; their time shows as the self time "
                 "of the caller (`_run`: INSERTs, `write`: BEGIN/COMMIT, `open`/`close`: DDL and "
                 "CHECKPOINT).\n")
    for name, prof in profs.items():
        st = pstats.Stats(prof).stats
        total = totals[name]
        lines.append(f"**{name} thread**: {total:.2f} s CPU ({100 * total / all_cpu:.0f} % of "
                     "the profiled CPU)\n")
        lines.append("| cumulative CPU s | % of run | function |")
        lines.append("|---:|---:|---|")
        ours = [(ct, f"{_short(fn)}:{ln} {func}") for (fn, ln, func), (_, _, _, ct, _)
                in st.items() if "cryptostream" in fn]
        for ct, label in sorted(ours, reverse=True)[:top]:
            lines.append(f"| {ct:.2f} | {100 * ct / all_cpu:.1f} | `{label}` |")
        lines.append("")
        lines.append("| self CPU s | % of run | function (incl. C / library code) |")
        lines.append("|---:|---:|---|")
        selfs = [(tt, f"{_short(fn)}:{ln} {func}" if ln else func)
                 for (fn, ln, func), (_, _, tt, _, _) in st.items()]
        for tt, label in sorted(selfs, reverse=True)[:top]:
            lines.append(f"| {tt:.2f} | {100 * tt / all_cpu:.1f} | `{label}` |")
        lines.append("")
    return lines


def _short(fn: str) -> str:
    for marker in ("cryptostream/", "site-packages/", "lib/python"):
        if marker in fn:
            return fn.split(marker, 1)[1]
    return Path(fn).name


# -- report ----------------------------------------------------------------------------------
def fmt_rate(r: float) -> str:
    return f"{r / 1e6:.3f} M" if r >= 1e5 else f"{r / 1e3:.1f} k"


def table_rows(results: list[Result]) -> list[list[str]]:
    base = {r.fmt: r for r in results if r.baseline and not r.error}
    rows = []
    for r in results:
        if r.error:
            rows.append([r.fmt, r.impl, "-", "-", "FAILED", "-", "-", "-", "-", "-",
                         r.error[:60]])
            continue
        b = base.get(r.fmt)
        ratio = "1.0 x" if r.baseline else (f"{r.rate / b.rate:.1f} x" if b and b.rate else "-")
        writer = sum(v for k, v in r.stages.items() if k in r.off_main)
        known = [v for v in (r.cpu_main, r.cpu_source, writer) if v is not None]
        cpu = "/".join("-" if v is None else f"{v:.1f}" for v in
                       (r.cpu_main, r.cpu_source, writer if r.off_main else None,
                        max(0.0, r.cpu_total - sum(known))))
        peak = "-" if r.rss_peak_mb is None else f"{r.rss_peak_mb:,.0f}"
        if r.rss_start_mb is not None:
            peak = f"{r.rss_start_mb:,.0f} -> {peak}"
        if r.peak_is_lifetime:
            peak += " (process max)"
        cpu_rate = fmt_rate(r.trades / r.cpu_total) if r.cpu_total > 0 else "-"
        rows.append([r.fmt, r.impl, f"{r.trades:,}", f"{r.seconds:.2f}", fmt_rate(r.rate), ratio,
                     cpu_rate, cpu, f"{r.cpu_total / r.seconds:.2f}" if r.seconds else "-", peak,
                     f"{r.load1:.2f}"])
    return rows


HEADERS = ["format", "implementation", "trades", "seconds", "trades/s", "vs baseline",
           "trades/CPU s", "CPU s main/source/writer/other", "CPU/wall", "RSS MB start -> peak", "load"]


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    right = {2, 3, 4, 5, 6, 8, 9, 10}
    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(HEADERS), line(["-" * w for w in widths]), *map(line, rows)])


def md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |",
           "|" + "|".join("---:" if i in {2, 3, 4, 5, 6, 8, 9, 10} else "---"
                          for i in range(len(HEADERS))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def target_lines(results: list[Result]) -> list[str]:
    lines = []
    for fmt, target in TARGETS.items():
        runs = [r for r in results if r.fmt == fmt and not r.error]
        if not runs:
            continue
        base = next((r for r in runs if r.baseline), None)
        pipes = [r for r in runs if not r.baseline]
        judged = next((r for r in pipes if r.one_core), None) or next(
            (r for r in pipes if "threads=1" in r.impl), None) or (pipes[0] if pipes else None)
        if judged is None:
            continue
        ok = judged.rate >= target
        per_cpu = judged.trades / judged.cpu_total if judged.cpu_total > 0 else 0.0
        lines.append(f"{fmt}: >= {target / 1e6:g} M trades/s on one core: "
                     f"{fmt_rate(judged.rate)}/s ({judged.impl}) -> {'PASS' if ok else 'FAIL'}"
                     f" ({100 * judged.rate / target:.0f} % of target; "
                     f"{fmt_rate(per_cpu)} trades per CPU second)")
        if base and base.rate:
            ratio = judged.rate / base.rate
            lines.append(f"{fmt}: >= {TARGET_RATIO:g} x the per-record baseline: {ratio:.1f} x "
                         f"({fmt_rate(judged.rate)}/s vs {fmt_rate(base.rate)}/s) -> "
                         f"{'PASS' if ratio >= TARGET_RATIO else 'FAIL'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--trades", type=int, default=5_000_000, help="trades to replay (all symbols)")
    ap.add_argument("--symbols", type=int, default=5, help="number of symbols")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "cryptostream-bench",
                    help="inputs are cached here across runs; DuckDB files are written here")
    ap.add_argument("--baseline-trades", type=int, default=None,
                    help="run the baseline on only the first N trades (default: all)")
    ap.add_argument("--formats", default="json,csv", help="comma-separated: json, csv")
    ap.add_argument("--no-pin", action="store_true",
                    help="skip the runs pinned to one CPU (baseline then runs unpinned)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one '1 CPU' pipeline run per format (cProfile)")
    ap.add_argument("--record", nargs="?", const=ROOT / "docs" / "benchmarks.md", type=Path,
                    default=None, metavar="MD", help="append the results to docs/benchmarks.md")
    ap.add_argument("--keep", action="store_true", help="keep the DuckDB files")
    ap.add_argument("--regenerate", action="store_true", help="regenerate the cached inputs")
    a = ap.parse_args(argv)
    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    if not formats or set(formats) - {"json", "csv"}:
        ap.error("--formats takes json and/or csv")
    if a.trades < 1 or a.symbols < 1:
        ap.error("--trades and --symbols must be positive")
    pin = not a.no_pin and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1
    limit = a.baseline_trades if a.baseline_trades and a.baseline_trades < a.trades else None

    info = machine_info()
    a.workdir.mkdir(parents=True, exist_ok=True)
    a.workdir = workdir = a.workdir.resolve()
    env = sorted(k for k in os.environ if k.startswith("CRYPTOSTREAM_"))
    if env:
        log(f"warning: {', '.join(env)} set; explicit benchmark settings win, others apply")

    inputs = prepare_inputs(a.workdir, a.trades, a.symbols, a.seed, formats, a.regenerate)
    files = ([inputs.json_path] if "json" in formats else []) + (
        [p for _, p in inputs.csv] if "csv" in formats else [])
    sizes = {p: p.stat().st_size for p in files}
    log(f"warming the page cache ({sum(sizes.values()) / 2**20:,.0f} MiB of input)")
    warm_page_cache(files)

    results: list[Result] = []
    checks: list[str] = []
    mismatch = False
    profiles: dict[str, dict] = {}
    for fmt in formats:
        n = inputs.trades
        log(f"[{fmt}] cryptostream EmbeddedPipeline, defaults ({n:,} trades)")
        main_run = run_pipeline(fmt, inputs, a.workdir / f"{fmt}-pipeline.duckdb", workdir,
                                "cryptostream")
        results.append(main_run)
        log(f"[{fmt}] ... {fmt_rate(main_run.rate)} trades/s in {main_run.seconds:.1f} s")
        log(f"[{fmt}] cryptostream, DuckDB threads=1")
        r = run_pipeline(fmt, inputs, a.workdir / f"{fmt}-pipeline-t1.duckdb", workdir,
                         "cryptostream threads=1", threads=1)
        results.append(r)
        log(f"[{fmt}] ... {fmt_rate(r.rate)} trades/s in {r.seconds:.1f} s")
        if pin:
            log(f"[{fmt}] cryptostream, 1 CPU (affinity) + DuckDB threads=1")
            r = run_pipeline(fmt, inputs, a.workdir / f"{fmt}-pipeline-1cpu.duckdb", workdir,
                             "cryptostream 1 CPU", threads=1, pin=True)
            results.append(r)
            log(f"[{fmt}] ... {fmt_rate(r.rate)} trades/s in {r.seconds:.1f} s")
        for extra in results[-(3 if pin else 2):]:
            if extra is not main_run and not extra.error and not main_run.error \
                    and extra.counts != main_run.counts:
                checks.append(f"{fmt}: {extra.impl} counts {extra.counts} differ from "
                              f"{main_run.counts}  <<<<<< MISMATCH >>>>>>")
                mismatch = True
        log(f"[{fmt}] baseline per-record ({limit or n:,} trades)")
        b = run_baseline(fmt, inputs, a.workdir / f"{fmt}-baseline.duckdb", limit, pin)
        results.append(b)
        log(f"[{fmt}] ... {fmt_rate(b.rate)} trades/s in {b.seconds:.1f} s")
        if limit is None and not b.error and not main_run.error:
            lines, ok = check_lines(f"{fmt}: pipeline vs baseline",
                                    compare_stores(main_run.db, b.db))
            checks += lines
            mismatch |= not ok
        elif limit is not None:
            checks.append(f"{fmt}: baseline ran on the first {limit:,} trades only: "
                          "stores not compared")
        if a.profile:
            log(f"[{fmt}] profiling one '1 CPU' pipeline run (cProfile, thread CPU time)")
            profiles[fmt] = {}
            pr = run_pipeline(fmt, inputs, a.workdir / f"{fmt}-profile.duckdb", workdir,
                              "profiled", threads=1, pin=pin, profile=profiles[fmt])
            profiles[fmt]["_result"] = pr
            _fresh(pr.db)
        if not a.keep:
            for res in results:
                if res.fmt == fmt and res.db is not None and res is not main_run:
                    _fresh(res.db)
    if set(formats) == {"json", "csv"}:
        pj = next(r for r in results if r.fmt == "json" and r.impl == "cryptostream")
        pc = next(r for r in results if r.fmt == "csv" and r.impl == "cryptostream")
        if not (pj.error or pc.error):
            lines, ok = check_lines("pipeline json vs csv", compare_stores(pj.db, pc.db))
            checks += lines
            mismatch |= not ok
    if not a.keep:
        for r in results:
            if r.db is not None:
                _fresh(r.db)

    rows = table_rows(results)
    targets = target_lines(results)
    desc = [f"{inputs.trades:,} simulated trades of {len(inputs.per_symbol)} symbols ("
            + ", ".join(f"{s} {k:,}" for s, k in inputs.per_symbol.items()) + ")"]
    if "json" in formats:
        desc.append(f"JSON lines {sizes[inputs.json_path] / 2**20:,.0f} MiB")
    if "csv" in formats:
        mib = sum(sizes[p] for _, p in inputs.csv) / 2**20
        desc.append(f"CSV {mib:,.0f} MiB in {len(inputs.csv)} files")
    input_desc = "; ".join(desc)
    gil_note = ("The pipeline's threads (main: processing; source: reading + decoding; a sink "
                "writer thread when the pipeline has one) share the GIL except inside C code "
                "that releases it (DuckDB, Arrow's CSV reader), so unpinned runs can use more "
                "than one core; the '1 CPU' runs pin the whole process to one CPU. 'CPU s' = "
                "main thread / source thread / sink writes off the main thread / other threads "
                "(DuckDB and Arrow workers); 'trades/CPU s' = trades per second of process CPU "
                "time (less sensitive to other load than wall time); 'load' = 1-min load "
                "average at the start of the run (other work on the machine).")
    print()
    print("CryptoStream end-to-end benchmark")
    for k, v in info.items():
        print(f"  {k:9s} {v}")
    print(f"  input     {input_desc}")
    print()
    print(text_table(rows))
    print()
    for r in results:
        for note in r.notes:
            print(f"  {r.fmt} {r.impl}: {note}")
    print("  " + gil_note)
    print()
    print("Targets")
    for line in targets:
        print("  " + line)
    print()
    print("Checks")
    for line in checks:
        print("  " + line)
    if mismatch:
        print("\n!!!!!! MISMATCH: pipeline and baseline stored different results (see above)")
    prof_md: list[str] = []
    for fmt, profs in profiles.items():
        pr = profs.pop("_result")
        head = (f"#### Profile: {fmt}, pipeline pinned to 1 CPU, DuckDB threads=1 "
                f"({pr.trades:,} trades, {pr.seconds:.1f} s wall under cProfile)\n")
        prof_md += [head, *profile_tables(profs), ""]
    if prof_md:
        prof_md.insert(0, '### Profiles of one "1 CPU" run per format (cProfile, thread CPU '
                          'time)\n')
        print()
        print("\n".join(prof_md))

    if a.record:
        cmd = "python benchmarks/bench_pipeline.py " + " ".join(argv if argv is not None
                                                               else sys.argv[1:])
        md = [
            f"\n## {info['date']} — commit {info['commit']}\n",
            f"- Command: `{cmd.strip()}`",
            f"- Machine: {info['cpu']}, {info['cores']}, {info['memory']} RAM, {info['os']}",
            f"- Software: Python {info['python']}; {info['versions']}",
            f"- Input: {input_desc}\n",
            md_table(rows), "",
            *[f"- {r.fmt} {r.impl}: {note}" for r in results for note in r.notes],
            f"- {gil_note}\n",
            "**Targets**\n", *[f"- {t}" for t in targets], "",
            "**Checks**\n", *[f"- {c}" for c in checks], "",
            *(["**MISMATCH: pipeline and baseline stored different results**\n"]
              if mismatch else []),
            *prof_md,
        ]
        a.record.parent.mkdir(parents=True, exist_ok=True)
        new = not a.record.exists()
        with open(a.record, "a", encoding="utf-8") as fh:
            if new:
                fh.write("# Benchmarks\n")
            fh.write("\n".join(md) + "\n")
        log(f"appended the results to {a.record}")
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
