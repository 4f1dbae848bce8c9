"""Reports results: tables, targets, store checks, profiles, and the --record markdown."""

from __future__ import annotations

import cProfile
import pstats
from pathlib import Path

from bench_measure import Result

TARGETS = {"json": 1_000_000, "csv": 3_000_000}  # trades/s on one core
TARGET_RATIO = 5.0
TABLES = ("agg_1m", "agg_5m_1m")
EXACT_COLS = ("trade_count", "first_trade_id", "last_trade_id", "spike_count", "missing_trades",
              "window_end")
FLOAT_COLS = ("open", "high", "low", "close", "volume", "quote_volume", "vwap", "avg_price",
              "price_stddev", "buy_volume", "sell_volume", "buy_sell_ratio", "trade_intensity",
              "range_pct", "return_pct")

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


# -- output ----------------------------------------------------------------------------------
GIL_NOTE = ("The pipeline's threads (main: processing; source: reading + decoding; a sink "
            "writer thread when the pipeline has one) share the GIL except inside C code "
            "that releases it (DuckDB, Arrow's CSV reader), so unpinned runs can use more "
            "than one core; the '1 CPU' runs pin the whole process to one CPU. 'CPU s' = "
            "main thread / source thread / sink writes off the main thread / other threads "
            "(DuckDB and Arrow workers); 'trades/CPU s' = trades per second of process CPU "
            "time (less sensitive to other load than wall time); 'load' = 1-min load "
            "average at the start of the run (other work on the machine).")


def input_description(trades: int, per_symbol: dict[str, int], json_mib: float | None,
                      csv_mib: float | None, csv_files: int) -> str:
    desc = [f"{trades:,} simulated trades of {len(per_symbol)} symbols ("
            + ", ".join(f"{s} {k:,}" for s, k in per_symbol.items()) + ")"]
    if json_mib is not None:
        desc.append(f"JSON lines {json_mib:,.0f} MiB")
    if csv_mib is not None:
        desc.append(f"CSV {csv_mib:,.0f} MiB in {csv_files} files")
    return "; ".join(desc)


def profile_markdown(profiles: dict[str, dict]) -> list[str]:
    """The profile sections; ``profiles`` maps format -> {thread: cProfile, "_result": Result}
    (the "_result" entries are removed)."""
    prof_md: list[str] = []
    for fmt, profs in profiles.items():
        pr = profs.pop("_result")
        head = (f"#### Profile: {fmt}, pipeline pinned to 1 CPU, DuckDB threads=1 "
                f"({pr.trades:,} trades, {pr.seconds:.1f} s wall under cProfile)\n")
        prof_md += [head, *profile_tables(profs), ""]
    if prof_md:
        prof_md.insert(0, '### Profiles of one "1 CPU" run per format (cProfile, thread CPU '
                          'time)\n')
    return prof_md


def print_report(info: dict, input_desc: str, rows: list[list[str]], results: list[Result],
                 targets: list[str], checks: list[str], mismatch: bool,
                 prof_md: list[str]) -> None:
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
    print("  " + GIL_NOTE)
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
    if prof_md:
        print()
        print("\n".join(prof_md))


def append_markdown(path: Path, cmd: str, info: dict, input_desc: str, rows: list[list[str]],
                    results: list[Result], targets: list[str], checks: list[str],
                    mismatch: bool, prof_md: list[str]) -> None:
    """Append a dated section to ``path`` (created with a "# Benchmarks" title if missing)."""
    md = [
        f"\n## {info['date']} — commit {info['commit']}\n",
        f"- Command: `{cmd.strip()}`",
        f"- Machine: {info['cpu']}, {info['cores']}, {info['memory']} RAM, {info['os']}",
        f"- Software: Python {info['python']}; {info['versions']}",
        f"- Input: {input_desc}\n",
        md_table(rows), "",
        *[f"- {r.fmt} {r.impl}: {note}" for r in results for note in r.notes],
        f"- {GIL_NOTE}\n",
        "**Targets**\n", *[f"- {t}" for t in targets], "",
        "**Checks**\n", *[f"- {c}" for c in checks], "",
        *(["**MISMATCH: pipeline and baseline stored different results**\n"]
          if mismatch else []),
        *prof_md,
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as fh:
        if new:
            fh.write("# Benchmarks\n")
        fh.write("\n".join(md) + "\n")
