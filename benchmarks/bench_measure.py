"""Runs the pipeline and the baseline once each, measuring time, CPU per thread, RSS, pinning."""

from __future__ import annotations

import contextlib
import cProfile
import gc
import os
import re
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import baseline_per_record
from bench_inputs import Inputs
from bench_machine import log

from cryptostream.config import load_settings
from cryptostream.pipeline import EmbeddedPipeline


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
            serve_queries=False, progress=False, ml=False,  # the windowing path only
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
    fresh(db)
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
    fresh(db)
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


def fresh(db: Path) -> None:
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
