"""Write the evaluation report: ``report.md``, ``metrics.json`` and plots (PNG + HTML)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from cryptostream.ml.evaluate import EvalConfig, SymbolResult

PLOT_TARGETS = 720  # the last N targets in the forecast plots (12 h of minutes)


def write_report(out_dir: Path, metrics: dict, results: list[SymbolResult], cfg: EvalConfig,
                 inputs: list[str]) -> list[Path]:
    """Write everything into ``out_dir`` (created); returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / "metrics.json"]
    files[0].write_text(json.dumps(metrics, indent=2, sort_keys=False) + "\n")
    plots: dict[str, list[str]] = {}
    for r in results:
        plots[r.symbol] = [p.name for p in _plots(out_dir, r)]
        files += [out_dir / n for n in plots[r.symbol]]
    md = out_dir / "report.md"
    md.write_text(_markdown(metrics, results, cfg, inputs, plots))
    files.append(md)
    return files


def _ts(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _num(v, fmt: str = "{:.4g}") -> str:
    return "–" if v is None else fmt.format(v)


def _markdown(metrics: dict, results: list[SymbolResult], cfg: EvalConfig, inputs: list[str],
              plots: dict[str, list[str]]) -> str:
    lines = [
        "# CryptoStream model evaluation",
        "",
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC from: "
        + ", ".join(f"`{i}`" for i in inputs) + ".",
        "",
        ("**Method.** Walk-forward, no look-ahead: the forecast of each 1-minute window's VWAP "
        "(quote volume / volume) is made from the windows before it only; batch models are "
        f"refitted every {cfg.retrain_every} targets on the windows whose targets are already "
        f"known ({'expanding origin' if cfg.history is None else f'last {cfg.history} windows'}); "
        "online models learn each target once it is revealed. Every model is scored on the same "
        f"targets, those after a warm-up of {cfg.warmup} windows; a model that cannot predict a "
        "target yet is scored with the naive forecast for it (counted below as fallbacks). "
        "Skill = 1 − MAE / MAE(naive): **0 means no better than repeating the last VWAP, "
        "negative means worse.** MAPE is a fraction."),
        "",
        ("**Be honest about it:** on real minute data the next VWAP is very close to the last "
        "one, and a naive forecast is hard to beat. The skills below are what the models "
        "measured, whatever their sign."),
        "",
        "## Forecasts",
    ]
    for r in results:
        f = r.forecast
        lines += ["", f"### {r.symbol}",
                  (f"Targets: {f['models']['naive']['n']:,} windows from {_ts(f['first_target_ms'])} "
                  f"to {_ts(f['last_target_ms'])} UTC."), "",
                  ("| model | MAE | RMSE | MAPE | directional accuracy | skill vs naive | "
                  "fallbacks |"), "|---|---:|---:|---:|---:|---:|---:|"]
        fb = r.runs.get("fallbacks", {})
        for name, m in f["models"].items():
            lines.append(f"| {name} | {_num(m['mae'])} | {_num(m['rmse'])} | "
                         f"{_num(m['mape'], '{:.3e}')} | {_num(m['directional_accuracy'], '{:.3f}')}"
                         f" | {_num(m['skill'], '{:+.4f}')} | {fb.get(name, 0):,} |")
        best = max(f["models"].items(), key=lambda kv: kv[1]["skill"] or -np.inf)
        verdict = (f"Best: **{best[0]}** with skill {best[1]['skill']:+.4f}."
                   if best[0] != "naive" and (best[1]["skill"] or 0) > 0 else
                   "No model beats the naive forecast here.")
        lines += ["", verdict]
    lines += ["", "## Anomaly detection (injected events)", "",
              (f"Events injected into the real series at a rate of {cfg.inject_rate:.0%} of the "
              "windows after the warm-up (seeded): price jumps of 1–5 % (a level shift), volume "
              "bursts of 5–20×, trade-count droughts (1–5 % of normal). Contamination "
              f"{cfg.contamination:.0%}. Real windows that are unusual on their own count as "
              "false positives, so precision is a lower bound.")]
    for r in results:
        lines += ["", f"### {r.symbol}", "",
                  "| detector | precision | recall | false-positive rate | injected |",
                  "|---|---:|---:|---:|---:|"]
        for name, m in r.anomaly.items():
            lines.append(f"| {name} | {_num(m['precision'], '{:.3f}')} | "
                         f"{_num(m['recall'], '{:.3f}')} | {_num(m['fpr'], '{:.3f}')} | "
                         f"{m['n_injected']} |")
    lines += ["", "## Plots", ""]
    for sym, names in plots.items():
        for n in names:
            lines.append(f"![{sym} {n}]({n})" if n.endswith(".png") else f"- [{n}]({n})")
    return "\n".join(lines) + "\n"


def _plots(out_dir: Path, r: SymbolResult) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    fr = r.runs["forecast"]
    t = np.asarray(fr.start_ms)[-PLOT_TARGETS:].astype("datetime64[ms]")
    actual = np.asarray(fr.actual)[-PLOT_TARGETS:]
    files = []
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.plot(t, actual, color="black", lw=1.4, label="actual VWAP")
    html = go.Figure(go.Scatter(x=t, y=actual, name="actual VWAP", line={"color": "black"}))
    for name, pred in fr.predicted.items():
        p = np.asarray(pred)[-PLOT_TARGETS:]
        ax.plot(t, p, lw=0.8, label=name, ls="--" if name == "naive" else "-")
        html.add_trace(go.Scatter(x=t, y=p, name=name, line={"width": 1}))
    ax.set_title(f"{r.symbol}: next-window VWAP, actual vs predicted (last {len(t)} targets)")
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    files.append(out_dir / f"{r.symbol}-forecast.png")
    fig.savefig(files[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)
    html.update_layout(title=f"{r.symbol}: actual vs predicted VWAP", template="plotly_white")
    files.append(out_dir / f"{r.symbol}-forecast.html")
    html.write_html(files[-1], include_plotlyjs="directory")  # works offline

    dr, injected, labels = r.runs["detect"], r.runs["injected"], r.runs["labels"]
    ts = np.asarray(dr.start_ms).astype("datetime64[ms]")
    rows = dr.rows
    fig, axes = plt.subplots(len(dr.scores) + 1, 1, figsize=(11, 2.2 * (len(dr.scores) + 1)),
                             sharex=True)
    axes[0].plot(ts, injected.vwap[rows], color="black", lw=0.8)
    axes[0].scatter(ts[labels[rows]], injected.vwap[rows][labels[rows]], color="red", s=12,
                    label="injected event")
    axes[0].set_title(f"{r.symbol}: VWAP with injected events")
    axes[0].legend(loc="best", fontsize=8)
    for ax, (name, scores) in zip(axes[1:], dr.scores.items(), strict=True):
        sc = np.array([np.nan if s is None else s for s in scores], float)
        flags = np.asarray(dr.flags[name], bool)
        ax.plot(ts, sc, lw=0.6, color="steelblue")
        ax.scatter(ts[flags], sc[flags], color="orange", s=8, label="flagged")
        ax.set_title(f"{name} score", fontsize=9)
        ax.legend(loc="best", fontsize=7)
    fig.autofmt_xdate()
    files.append(out_dir / f"{r.symbol}-anomalies.png")
    fig.savefig(files[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)
    return files
