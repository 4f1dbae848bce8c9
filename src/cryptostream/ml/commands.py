"""The ``train`` and ``evaluate`` commands: fit and save models, walk-forward reports."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cryptostream.errors import ConfigError

err = Console(stderr=True)

FromOpt = Annotated[list[str], typer.Option(
    "--from", help="Input: a kline file ([SYMBOL=]FILE: .csv, .csv.gz, .zip, with or without "
                   "a header), a DuckDB store (*.duckdb: its agg_1m) or a postgres:// DSN. "
                   "Repeatable; windows of one symbol are merged.")]
SymbolsOpt = Annotated[str | None, typer.Option(help="Only these symbols (comma-separated).")]
WarmupOpt = Annotated[int, typer.Option(help="Windows per symbol before the first target.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of every random choice (models, injections).")]
ContaminationOpt = Annotated[float, typer.Option(help="Share of windows a detector flags.")]


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("train")(train)


def _symbols(symbols: str | None) -> list[str] | None:
    return [s.strip() for s in symbols.split(",") if s.strip()] if symbols else None


def _bar(show: bool | None) -> Progress:
    return Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                    disable=not (err.is_terminal if show is None else show))


def _progress_cb(bar: Progress):
    tasks: dict[str, int] = {}

    def cb(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total)
        bar.update(tasks[what], completed=done, total=total)

    return cb


def _load(sources: list[str], symbols: str | None):
    from cryptostream.ml.klines import load_inputs

    def on_file(path, k) -> None:
        if k is not None and k.bad_rows:
            err.print(f"[yellow]{path}: {k.bad_rows:,} of {k.rows:,} rows could not be parsed "
                      "and were skipped[/yellow]")

    return load_inputs(sources, _symbols(symbols), on_file=on_file)


def _names(text: str | None, known: tuple[str, ...], what: str) -> tuple[str, ...] | None:
    if not text or text == "all":
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(f"unknown {what} {bad}; choose from {', '.join(known)} or 'all'")
    return names


def evaluate(
    sources: FromOpt,
    report: Annotated[Path, typer.Option(help="Folder for report.md, metrics.json and plots.")],
    symbols: SymbolsOpt = None,
    models: Annotated[str | None, typer.Option(help="Forecasters (comma-separated) or 'all' [default: all installed: naive, linear, online_linear, lstm with torch].")] = None,
    detectors: Annotated[str | None, typer.Option(help="Detectors or 'all' [default: isolation_forest, half_space_trees].")] = None,
    warmup: WarmupOpt = 120,
    retrain_every: Annotated[int, typer.Option(help="Targets between refits of the batch forecasters.")] = 60,
    history: Annotated[int | None, typer.Option(help="Batch forecasters train on the last N windows (rolling origin) [default: all before the target (expanding)].")] = None,
    contamination: ContaminationOpt = 0.05,
    inject_rate: Annotated[float, typer.Option(help="Share of windows that get an injected anomaly.")] = 0.02,
    seed: SeedOpt = 0,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bars [default: when stderr is a terminal].")] = None,
) -> None:
    """Walk-forward evaluation of every forecaster against the naive baseline and of the
    anomaly detectors on injected events; writes report.md, metrics.json and plots."""
    from cryptostream.ml.detectors import DETECTOR_NAMES
    from cryptostream.ml.evaluate import EvalConfig
    from cryptostream.ml.evaluate import evaluate as run_eval
    from cryptostream.ml.forecasters import FORECASTER_NAMES
    from cryptostream.ml.report import write_report

    m = _names(models, FORECASTER_NAMES, "model(s)")
    if m is not None and "naive" not in m:
        m = ("naive", *m)  # skill needs the baseline
    cfg = EvalConfig(models=m, detectors=_names(detectors, DETECTOR_NAMES, "detector(s)"),
                     warmup=warmup, retrain_every=retrain_every, history=history,
                     contamination=contamination, inject_rate=inject_rate, seed=seed)
    inputs = _load(sources, symbols)
    t0 = time.monotonic()
    with _bar(progress) as bar:
        try:
            metrics, results = run_eval(inputs, cfg, _progress_cb(bar))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    files = write_report(report, metrics, results, cfg, sources)
    for sym, f in metrics["forecast"].items():
        skills = ", ".join(f"{n} {v['skill']:+.4f}" for n, v in f["models"].items()
                           if n != "naive" and v["skill"] is not None)
        err.print(f"{sym}: {f['models']['naive']['n']:,} targets; skill vs naive: {skills}")
    err.print(f"wrote {len(files)} files to {report} in {time.monotonic() - t0:.1f} s "
              f"(report.md, metrics.json)")


def train(
    sources: FromOpt,
    models_dir: Annotated[Path, typer.Option(help="Where models are saved: DIR/SYMBOL/MODEL/VERSION.joblib (+ .json metadata).")] = Path("models"),
    model: Annotated[str, typer.Option(help="Model(s) to train, comma-separated, or 'all': linear, online_linear, lstm, isolation_forest, half_space_trees.")] = "all",
    symbols: SymbolsOpt = None,
    history: Annotated[int | None, typer.Option(help="Train on the last N windows per symbol [default: all].")] = None,
    warmup: WarmupOpt = 120,
    contamination: ContaminationOpt = 0.05,
    seed: SeedOpt = 0,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bar [default: when stderr is a terminal].")] = None,
) -> None:
    """Fit models on history and save them with version, training span, features and
    walk-forward metrics; `run --models-dir DIR` starts from the latest ones."""
    from cryptostream.ml import persistence
    from cryptostream.ml.detectors import DETECTOR_NAMES
    from cryptostream.ml.forecasters import FORECASTER_NAMES
    from cryptostream.ml.training import fit_and_measure

    known = tuple(n for n in FORECASTER_NAMES if n != "naive") + DETECTOR_NAMES
    names = _names(model, known, "model(s)") or known
    inputs = _load(sources, symbols)
    jobs = [(sym, n) for sym in sorted(inputs) for n in names]
    with _bar(progress) as bar:
        task = bar.add_task("training", total=len(jobs))
        for sym, name in jobs:
            bar.update(task, description=f"{sym} {name}")
            bars = inputs[sym] if history is None else inputs[sym].tail(history)
            try:
                obj, meta = fit_and_measure(name, bars, warmup=warmup,
                                            contamination=contamination, seed=seed)
            except ValueError as exc:
                err.print(f"[yellow]{sym} {name}: not trained: {exc}[/yellow]")
                bar.advance(task)
                continue
            path = persistence.save_to(models_dir, obj, meta)  # version = content hash
            err.print(f"{sym} {name}: {meta['n_train']:,} windows -> {path}"
                      + "".join(f"  {k} {v:.4g}" for k, v in meta.get("metrics", {}).items()
                                if isinstance(v, int | float)))
            bar.advance(task)
