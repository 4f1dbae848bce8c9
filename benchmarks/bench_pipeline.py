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
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_inputs import Inputs, prepare_inputs, warm_page_cache
from bench_machine import log, machine_info
from bench_measure import Result, fresh, run_baseline, run_pipeline
from bench_report import (
    append_markdown,
    check_lines,
    compare_stores,
    fmt_rate,
    input_description,
    print_report,
    profile_markdown,
    table_rows,
    target_lines,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    a.formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    if not a.formats or set(a.formats) - {"json", "csv"}:
        ap.error("--formats takes json and/or csv")
    if a.trades < 1 or a.symbols < 1:
        ap.error("--trades and --symbols must be positive")
    return a


def run_format(fmt: str, inputs: Inputs, a: argparse.Namespace, pin: bool, limit: int | None,
               results: list[Result], checks: list[str], profiles: dict[str, dict]) -> bool:
    """All runs of one input format (appended to ``results``); True on a mismatch."""
    workdir = a.workdir
    mismatch = False
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
        fresh(pr.db)
    if not a.keep:
        for res in results:
            if res.fmt == fmt and res.db is not None and res is not main_run:
                fresh(res.db)
    return mismatch


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    formats = a.formats
    pin = not a.no_pin and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1
    limit = a.baseline_trades if a.baseline_trades and a.baseline_trades < a.trades else None

    info = machine_info()
    a.workdir.mkdir(parents=True, exist_ok=True)
    a.workdir = a.workdir.resolve()
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
        mismatch |= run_format(fmt, inputs, a, pin, limit, results, checks, profiles)
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
                fresh(r.db)

    rows = table_rows(results)
    targets = target_lines(results)
    input_desc = input_description(
        inputs.trades, inputs.per_symbol,
        sizes[inputs.json_path] / 2**20 if "json" in formats else None,
        sum(sizes[p] for _, p in inputs.csv) / 2**20 if "csv" in formats else None,
        len(inputs.csv))
    prof_md = profile_markdown(profiles)
    print_report(info, input_desc, rows, results, targets, checks, mismatch, prof_md)

    if a.record:
        cmd = "python benchmarks/bench_pipeline.py " + " ".join(argv if argv is not None
                                                               else sys.argv[1:])
        append_markdown(a.record, cmd, info, input_desc, rows, results, targets, checks,
                        mismatch, prof_md)
        log(f"appended the results to {a.record}")
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
