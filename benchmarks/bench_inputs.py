"""Generates the benchmark's input files (JSON lines, trade CSVs) once and caches them."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench_machine import log

from cryptostream.sources.simulator import write_trade_csv, write_ws_jsonl

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT",
           "TRXUSDT", "LTCUSDT", "LINKUSDT")


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
