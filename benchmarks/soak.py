"""Soak: many simulated symbols for a long time; RSS, throughput and state sizes over time.

Runs ``cryptostream run --source simulate`` as a child process (its own RSS, nothing of the
benchmark's) and samples, every ``--every`` seconds: the child's RSS (``/proc/PID/status``),
the trades it has received (the ``cryptostream_messages_received_total`` counter of its
``/metrics``) and its state gauges (open windows, queue depths, dedup state). Two variants:

* ``wall`` (the default): 50 symbols at a combined 5 000 trades/s, paced in real time, for
  20 minutes of wall time;
* ``accelerated``: the same 50 symbols over 24 h of *event* time, unpaced, at a lower rate
  (combined 100 trades/s: 8.6 M trades), so that a day of window turnover runs in minutes.

Pass criteria (issue 8): the median RSS of the run's last minute (before it starts closing)
within 10 % of the median around minute 3 (150-210 s), and under 300 MB at its peak; the
state gauges bounded (see ``verdict``). ``--record`` appends a dated section to
``docs/benchmarks.md`` and writes the plot to ``docs/img/soak-<variant>.png``.

    .venv/bin/python benchmarks/soak.py                       # 20 min
    .venv/bin/python benchmarks/soak.py --variant accelerated
    .venv/bin/python benchmarks/soak.py --minutes 4 --record  # a shorter look
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = [f"S{i:02d}USDT" for i in range(50)]
STATE_GAUGES = ("open_windows", "queue", "dedup", "open_gaps")
METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def scrape(port: int) -> dict[str, float]:
    """Sum of each metric over its labels (``name`` -> value)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        m = METRIC_RE.match(line)
        if m and not line.startswith("#"):
            try:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                pass
    return out


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "cryptostream"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "cryptostream.cli"]


def run(args) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="cryptostream-soak-"))
    port = free_port()
    symbols = SYMBOLS[: args.symbols]
    if args.variant == "wall":
        source = ["--rate", str(args.rate), "--duration", f"{args.minutes * 60}",
                  "--speed", "1"]
    else:
        source = ["--rate", str(args.rate), "--duration", "24h", "--speed", "max"]
    cmd = [*cli(), "run", "--source", "simulate", "--symbols", ",".join(symbols), *source,
           "--metrics-port", str(port), "--db", str(work / "soak.duckdb"),
           "--lake", str(work / "lake"), "--no-progress", *args.extra]
    print("$", " ".join(cmd), flush=True)
    log = open(work / "run.log", "w")  # noqa: SIM115 - closed in the finally below
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    t0 = time.monotonic()
    samples: list[dict] = []
    try:
        while child.poll() is None:
            time.sleep(args.every)
            m = scrape(port)
            s = {"t_s": time.monotonic() - t0, "rss_mb": rss_mb(child.pid),
                 "received": m.get("cryptostream_messages_received_total")}
            for name, v in m.items():
                if any(g in name for g in STATE_GAUGES) and not name.endswith(("_total",
                                                                              "_created")):
                    s[name] = v
            samples.append(s)
            rate = ""
            if len(samples) > 1 and s["received"] and samples[-2]["received"]:
                rate = f"{(s['received'] - samples[-2]['received']) / args.every:,.0f} trades/s"
            print(f"{s['t_s']:7.0f} s  RSS {s['rss_mb'] or 0:6.1f} MB  {rate}", flush=True)
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait(30)
        log.close()
    print(f"exit {child.returncode}; log {work / 'run.log'}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return samples


def verdict(samples: list[dict]) -> dict:
    """Flat: the median RSS of the run's last minute within 10 % of the median of its third
    minute (medians: RSS swings by ±30 MB with the batches in flight). The last minute ends
    with the last sample in which trades still arrived: after it the run is closing (every
    open window written, the lake exported), which is not the steady state; the peak of that
    phase is reported on its own. Under 300 MB: the peak of the run."""
    rss = [(s["t_s"], s["rss_mb"]) for s in samples if s["rss_mb"]]
    end = rss[-1][0]
    arriving = [b["t_s"] for a, b in itertools.pairwise(samples)
                if a.get("received") is not None and b.get("received") is not None
                and b["received"] > a["received"]]
    run_end = arriving[-1] if arriving else end
    at3 = [r for t, r in rss if 150 <= t <= 210] or [rss[min(len(rss) - 1, len(rss) // 4)][1]]
    last = [r for t, r in rss if run_end - 60 <= t <= run_end]
    closing = [r for t, r in rss if t > run_end]
    ref, final = statistics.median(at3), statistics.median(last)
    peak = max(r for t, r in rss if t <= run_end)
    rates = [(b["received"] - a["received"]) / (b["t_s"] - a["t_s"])
             for a, b in itertools.pairwise(samples)
             if a.get("received") is not None and b.get("received") is not None]
    return {"rss_minute3_mb": ref, "rss_last_minute_mb": final, "rss_peak_mb": peak,
            "rss_closing_peak_mb": max(closing) if closing else None,
            "growth_pct": (final / ref - 1) * 100, "flat": final <= ref * 1.10,
            "under_300": peak < 300, "median_rate": sorted(rates)[len(rates) // 2] if rates else None,
            "seconds": end}


def plot(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    a.plot(t, [s["rss_mb"] for s in samples], color="black")
    a.axhline(300, color="red", ls="--", lw=0.8, label="300 MB")
    a.set_ylabel("RSS MB")
    a.legend(loc="lower right", fontsize=8)
    a.set_title(title)
    rates = [None] + [(y["received"] - x["received"]) / (y["t_s"] - x["t_s"])
                      if x.get("received") is not None and y.get("received") is not None else None
                      for x, y in itertools.pairwise(samples)]
    b.plot(t, rates, color="steelblue")
    b.set_ylabel("trades/s")
    b.set_xlabel("minutes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=("wall", "accelerated"), default="wall")
    p.add_argument("--symbols", type=int, default=50)
    p.add_argument("--rate", type=float, default=None,
                   help="combined trades/s [wall: 5000, accelerated: 100]")
    p.add_argument("--minutes", type=float, default=20.0, help="wall variant: run time")
    p.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--record", action="store_true")
    p.add_argument("--keep", action="store_true")
    p.add_argument("extra", nargs="*", help="more `cryptostream run` arguments (after --)")
    args = p.parse_args(argv)
    if args.rate is None:
        args.rate = 5000.0 if args.variant == "wall" else 100.0
    samples = run(args)
    if len(samples) < 3:
        print("too few samples", file=sys.stderr)
        return 1
    v = verdict(samples)
    print(v)
    if args.record:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=False).stdout.strip()
        img = ROOT / "docs" / "img" / f"soak-{args.variant}.png"
        when = dt.datetime.now(dt.UTC)
        plot(samples, img, f"soak {args.variant}: {args.symbols} symbols, "
                           f"{args.rate:,.0f} trades/s combined ({when:%Y-%m-%d}, {commit})")
        with open(ROOT / "docs" / "benchmarks.md", "a") as fh:
            fh.write(
                f"\n## {when:%Y-%m-%d %H:%M} UTC — commit {commit} — soak ({args.variant})\n\n"
                f"- Command: `python benchmarks/soak.py --variant {args.variant} "
                f"--symbols {args.symbols} --rate {args.rate:g}"
                + (f" --minutes {args.minutes:g}" if args.variant == "wall" else "")
                + (" -- " + " ".join(args.extra) if args.extra else "") + "`\n"
                f"- Machine: {os.cpu_count()} vCPU; samples every {args.every:g} s; "
                f"{v['seconds'] / 60:.1f} min of wall time\n"
                f"- RSS (medians): minute 3 {v['rss_minute3_mb']:.1f} MB, last minute "
                f"{v['rss_last_minute_mb']:.1f} MB ({v['growth_pct']:+.1f} %), peak "
                f"{v['rss_peak_mb']:.1f} MB"
                + (f" (closing the run: {v['rss_closing_peak_mb']:.1f} MB)"
                   if v["rss_closing_peak_mb"] else "") + " — flat (≤ +10 %): "
                f"{'**yes**' if v['flat'] else '**no**'}; under 300 MB: "
                f"{'**yes**' if v['under_300'] else '**no**'}\n"
                f"- Throughput: median {v['median_rate'] or 0:,.0f} trades/s\n\n"
                f"![soak {args.variant}](img/{img.name})\n")
        print(f"recorded; plot {img}")
    return 0 if v["flat"] and v["under_300"] else 1


if __name__ == "__main__":
    sys.exit(main())
