"""The ``cryptostream`` command line: run the pipeline, query the store, show the counts."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cryptostream.config import load_settings
from cryptostream.errors import CryptoStreamError

app = typer.Typer(
    name="cryptostream",
    help="Real-time crypto market analytics: feeds -> clean trades -> event-time windows -> DuckDB/Parquet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts hold [SYMBOL=]FILE and [/SLIDE]: not markup
)
# piped output is read by people in wide terminals and logs: do not fold tables at 80 columns
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 200)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file (default ./cryptostream.toml).")]
DbOpt = Annotated[Path | None, typer.Option("--db", help="DuckDB file [default: data/cryptostream.duckdb].")]
MlOpt = Annotated[bool | None, typer.Option("--ml/--no-ml", help="Score every closed 1-min window with the ML models (anomalies, predictions) [default: on].")]
MlModelsOpt = Annotated[str | None, typer.Option(help="Forecasters, comma-separated, from naive,linear,online_linear,lstm (naive is always on) [default: naive,linear,online_linear].")]
MlWarmupOpt = Annotated[int | None, typer.Option(help="Closed windows per symbol before the models score [default: 60].")]
ModelsDirOpt = Annotated[Path | None, typer.Option(help="Start from the latest models `cryptostream train` saved here, and save refits here [default: train live only].")]
RetainOpt = Annotated[float | None, typer.Option(help="Prune raw trades older than this many days (before each symbol's newest trade) from the store and the lake; windows are kept [default: keep all].")]
ContaminationOpt = Annotated[float | None, typer.Option(help="Share of windows the anomaly detectors flag [default: 0.05].")]


def _ml(ml, ml_models, ml_warmup, models_dir, contamination) -> dict:
    return {"ml": ml, "ml_models": ml_models, "ml_warmup": ml_warmup, "models_dir": models_dir,
                "contamination": contamination}


MetricsPortOpt = Annotated[int | None, typer.Option("--metrics-port", help="Serve Prometheus /metrics, /healthz and /readyz on 127.0.0.1:N; 0 turns them off [default: 9108].")]
LogFormatOpt = Annotated[str | None, typer.Option("--log-format", help="human | json (one JSON object per line on stderr) [default: human].")]
RateOpt = Annotated[float | None, typer.Option("--rate", help="Simulator: combined trades/s of all symbols, paced in real time (so --duration is wall time) [default: 30 per symbol].")]


def _obs(metrics_port, log_format) -> dict:
    return {"metrics_port": metrics_port, "log_format": log_format}


def _setup(s) -> None:
    """Configure the logs of a role once; in JSON mode the console's lines are JSON log
    records too (so stderr holds nothing else)."""
    global err
    import logging

    from cryptostream.observability import logs

    logs.configure(s.log_format, logs.secrets_of(s))
    if s.log_format == "json":
        err = logs.json_console(logging.getLogger("cryptostream.cli"))


@app.command()
def run(
    source: Annotated[str | None, typer.Option(
        help="binance | replay | simulate | coingecko, or binance,coingecko  [default: binance]")] = None,
    replay: Annotated[list[str] | None, typer.Option(
        "--replay", help="[SYMBOL=]FILE to replay: official trade CSV/ZIP or WebSocket JSON lines (.gz ok). Repeatable.")] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols, e.g. BTCUSDT,ETHUSDT [default: BTCUSDT,ETHUSDT,BNBUSDT].")] = None,
    speed: Annotated[str | None, typer.Option(help="'max' (as fast as possible) or N x real time.")] = None,
    duration: Annotated[str | None, typer.Option(help="Live sources: wall time to run, then close every window and exit (e.g. 90s). Simulator: event time to produce (wall time with --rate).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed of the simulator.")] = None,
    rate: RateOpt = None,
    db: DbOpt = None,
    lake: Annotated[str | None, typer.Option(help="Parquet lake folder, or 'off'. [default: data/lake]")] = None,
    window: Annotated[list[str] | None, typer.Option(
        "--window", help="TABLE=SIZE[/SLIDE] in seconds; replaces the defaults. Repeatable.")] = None,
    allowed_lateness: Annotated[str | None, typer.Option(help="Allowed lateness, e.g. 2s.")] = None,
    idle_timeout: Annotated[str | None, typer.Option(help="Quiet time after which a symbol's watermark advances with the clock (live/paced).")] = None,
    max_clock_skew: Annotated[str | None, typer.Option(help="Max |trade time - receive time| in seconds; 0 disables.")] = None,
    spike_threshold: Annotated[float | None, typer.Option(help="Price-spike flag threshold in percent.")] = None,
    binance_url: Annotated[str | None, typer.Option(help="Binance stream base URL [default: wss://stream.binance.com:9443; also wss://data-stream.binance.vision].")] = None,
    binance_rest_url: Annotated[str | None, typer.Option(help="Binance REST base URL for gap backfills [default: https://api.binance.com, or the stream's host when it is 127.0.0.1].")] = None,
    binance_stream: Annotated[str | None, typer.Option(help="trade | aggTrade  [default: trade]")] = None,
    stale_after: Annotated[str | None, typer.Option(help="Replace a connection that sends nothing for this long [default: 30s].")] = None,
    max_connection_age: Annotated[str | None, typer.Option(help="Rotate the connection before this age (Binance closes at 24h) [default: 23.5h].")] = None,
    backfill_wait: Annotated[str | None, typer.Option(help="How long a trade-id gap holds its windows open for the REST backfill [default: 30s].")] = None,
    coingecko_url: Annotated[str | None, typer.Option(help="CoinGecko API base URL (API key: $COINGECKO_API_KEY) [default: https://api.coingecko.com].")] = None,
    coingecko_interval: Annotated[str | None, typer.Option(help="CoinGecko polling interval [default: 60s].")] = None,
    flush_interval: Annotated[str | None, typer.Option(help="Write to the store at least this often [default: 25ms live, 1s otherwise].")] = None,
    broker: Annotated[str | None, typer.Option(help="Run ingest + process through this Kafka broker (HOST:PORT) instead of in-process.")] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group with --broker [default: cryptostream].")] = None,
    sink: Annotated[list[str] | None, typer.Option("--sink", help="'duckdb' (the --db file) and/or a postgres:// DSN. Repeatable [default: duckdb].")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bar [default: when stderr is a terminal].")] = None,
    retain_trades_days: RetainOpt = None,
    ml: MlOpt = None,
    ml_models: MlModelsOpt = None,
    ml_warmup: MlWarmupOpt = None,
    models_dir: ModelsDirOpt = None,
    contamination: ContaminationOpt = None,
    metrics_port: MetricsPortOpt = None,
    log_format: LogFormatOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run the embedded pipeline (source -> clean -> windows -> DuckDB + Parquet), or with
    --broker both Kafka roles (ingest + process) in one command."""
    from cryptostream.pipeline import EmbeddedPipeline

    s = load_settings(
        config, source=source, replay=tuple(replay or ()), symbols=symbols, speed=speed,
        duration_s=duration, seed=seed, db=db, lake=lake, windows=tuple(window or ()),
        allowed_lateness_s=allowed_lateness, idle_timeout_s=idle_timeout,
        max_clock_skew_s=max_clock_skew, spike_threshold_pct=spike_threshold, progress=progress,
        binance_url=binance_url, binance_rest_url=binance_rest_url, binance_stream=binance_stream,
        stale_after_s=stale_after, max_connection_age_s=max_connection_age,
        backfill_wait_s=backfill_wait, coingecko_url=coingecko_url,
        coingecko_interval_s=coingecko_interval, flush_interval_s=flush_interval, broker=broker,
        group=group, sinks=tuple(sink or ()), retain_trades_days=retain_trades_days,
        **_ml(ml, ml_models, ml_warmup, models_dir, contamination),
        **_obs(metrics_port, log_format), sim_rate=rate,
    )
    from cryptostream.observability.logs import redact
    from cryptostream.observability.server import observe

    _setup(s)
    telemetry = observe(s, "run")
    if s.broker:
        from cryptostream.kafka_pipeline import run_both

        err.print(f"[dim]ingest + process via {s.broker} (group {s.group}) -> {redact(', '.join(s.sinks))}[/dim]")
        sm, n = run_both(s, telemetry=telemetry)
        err.print(f"ingest: {sm.received:,} records, {sm.delivered:,} messages acknowledged; "
                  f"process: {n:,} records")
        return
    show = s.progress if s.progress is not None else err.is_terminal
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[received]:>12,} msgs  {task.fields[rate]:>10,.0f} trades/s"),
        TimeElapsedColumn(), console=err, disable=not show, transient=False,
    )
    task = bar.add_task(s.source, total=None, received=0, rate=0.0)

    def on_progress(sm, src) -> None:
        total = getattr(src, "bytes_total", None)
        done = getattr(src, "bytes_done", None)
        bar.update(task, total=total or None, completed=done or 0, received=sm.received,
                   rate=sm.trades_per_s)

    pipe = EmbeddedPipeline(s, on_progress=on_progress, telemetry=telemetry)
    telemetry.watch(pipe)
    err.print(f"[dim]run {pipe.run_id}: {s.source} -> {s.db}" + (f" + {s.lake}" if s.lake else "") + "[/dim]")
    freeze_startup_heap()
    with bar:
        sm = pipe.run()
    t = Table(title=f"run {sm.run_id}" + (" (interrupted)" if sm.interrupted else ""))
    for col in ("received", "accepted", "rejected", "duplicates", "ignored", "seconds", "msgs/s"):
        t.add_column(col, justify="right")
    t.add_row(*(f"{v:,}" for v in (sm.received, sm.accepted, sm.rejected, sm.duplicates, sm.ignored)),
              f"{sm.seconds:.2f}", f"{sm.trades_per_s:,.0f}")
    err.print(t)
    err.print("windows written: " + ", ".join(f"{k}={v}" for k, v in sorted(sm.windows.items())))


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="Read-only SQL (SELECT, DESCRIBE, SHOW, EXPLAIN).")],
    db: DbOpt = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table | csv | json")] = "table",
    timeout: Annotated[str | None, typer.Option(help="Statement timeout, e.g. 30s [default: 30s].")] = None,
    max_rows: Annotated[int | None, typer.Option(help="Refuse results with more rows; 0: no limit [default: 100000].")] = None,
    lake: Annotated[str | None, typer.Option(help="Lake folder read_parquet may read when no pipeline runs [default: data/lake].")] = None,
    config: ConfigOpt = None,
) -> None:
    """Query the store, also while a pipeline is writing it (read-only: no files, no writes)."""
    from cryptostream.query import run_query

    s = load_settings(config, db=db, query_timeout_s=timeout, query_max_rows=max_rows, lake=lake)
    table = run_query(s.db, sql, timeout_s=s.query_timeout_s, max_rows=s.query_max_rows,
                      lake=s.lake)
    _print_table(table, format)


def _print_table(table, fmt: str) -> None:
    rows = table.to_pylist()
    if fmt == "json":
        sys.stdout.write("\n".join(json.dumps(r, default=str) for r in rows) + ("\n" if rows else ""))
    elif fmt == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(table.column_names)
        for r in rows:
            w.writerow(["" if v is None else v for v in r.values()])
    elif fmt == "table":
        t = Table(show_lines=False)
        for name in table.column_names:
            t.add_column(name, overflow="fold")
        for r in rows:
            t.add_row(*("NULL" if v is None else str(v) for v in r.values()))
        out.print(t)
        out.print(f"[dim]{len(rows)} row(s)[/dim]")
    else:
        raise CryptoStreamError(f"unknown --format {fmt!r}; use table, csv or json")


@app.command()
def stats(
    db: DbOpt = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Run id (default: the latest run).")] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="table | csv | json")] = "table",
    config: ConfigOpt = None,
) -> None:
    """Received / accepted / rejected (by reason) / duplicates / ignored / late, per symbol."""
    from cryptostream.query import run_query

    s = load_settings(config, db=db)
    latest = run_query(s.db, "SELECT run_id FROM pipeline_stats ORDER BY started_at DESC, updated_at DESC LIMIT 1").to_pylist()
    if not latest and run_id is None:
        raise CryptoStreamError(f"{s.db} has no pipeline runs yet; start one with `cryptostream run`")
    rid = run_id or latest[0]["run_id"]
    table = run_query(
        s.db,
        "SELECT symbol, received, accepted, rejected, duplicates, ignored, late, gaps, gap_trades, "
        "gaps_open, rejected_by_reason, recv_skew_ms, max_trade_time, watermark, "
        "received = accepted + rejected + duplicates + ignored AS reconciled, "
        "source, source_state, source_attempt, reconnects, last_message_at, "
        "epoch(updated_at) - epoch(last_message_at) AS last_message_age_s, "
        "exchange_clock_skew_ms, backfill_pending, backfilled_trades, updated_at "
        "FROM pipeline_stats WHERE run_id = ? ORDER BY symbol",
        [rid],
    )
    if format != "table":
        _print_table(table, format)
        return
    rows = table.to_pylist()
    t = Table(title=f"pipeline stats, run {rid}")
    cols = ["symbol", "received", "accepted", "rejected", "duplicates", "ignored", "late", "gaps",
            "gaps open", "rejected by reason", "skew ms", "reconciled"]
    for c in cols:
        t.add_column(c, justify="left" if c in ("symbol", "rejected by reason") else "right")
    for r in rows:
        reasons = json.loads(r["rejected_by_reason"] or "{}")
        t.add_row(
            r["symbol"] or "(unknown)", *(f"{r[k] or 0:,}" for k in (
                "received", "accepted", "rejected", "duplicates", "ignored", "late", "gaps",
                "gaps_open")),
            ", ".join(f"{k}={v}" for k, v in reasons.items()) or "-",
            "-" if r["recv_skew_ms"] is None else f"{r['recv_skew_ms']:.0f}",
            "yes" if r["reconciled"] else "[red]NO[/red]",
        )
    out.print(t)
    if rows:
        out.print(_source_line(rows[0]))


@app.command()
def dashboard(
    db: DbOpt = None,
    port: Annotated[int, typer.Option(help="TCP port of the web server.")] = 8501,
    host: Annotated[str, typer.Option(help="Address to bind; the dashboard has no login, keep it on loopback.")] = "127.0.0.1",
    postgres: Annotated[str | None, typer.Option("--postgres", help="Read this PostgreSQL store (postgresql://user@host/db) instead of --db.")] = None,
    refresh: Annotated[float, typer.Option(help="Auto-refresh interval in seconds; 0 turns it off (changeable in the page).")] = 5.0,
    broker: Annotated[str | None, typer.Option("--broker", help="Kafka broker HOST:PORT, to show the consumer lag.")] = None,
    group: Annotated[str, typer.Option(help="Consumer group whose lag is shown with --broker.")] = "cryptostream",
    metrics_port: MetricsPortOpt = None,
    log_format: LogFormatOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve the live dashboard (Streamlit) on http://HOST:PORT; it keeps reading while a
    pipeline writes the store."""
    from cryptostream.dashboard.server import check_port, serve, streamlit_command

    if refresh < 0:
        raise CryptoStreamError(f"--refresh {refresh:g}: give seconds >= 0 (0 turns auto-refresh off)")
    s = load_settings(config, db=db, **_obs(metrics_port, log_format))
    _setup(s)
    if postgres and db is not None:
        raise CryptoStreamError("give either --db (DuckDB) or --postgres (PostgreSQL), not both")
    if postgres and not postgres.startswith(("postgres://", "postgresql://")):
        raise CryptoStreamError(f"--postgres {postgres!r}: expected a DSN like postgresql://user@127.0.0.1:5432/db")
    check_port(host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/yellow] serving on {host}: anyone who can reach it sees the data (no login)")
    store = "PostgreSQL store" if postgres else str(s.db)
    err.print(f"dashboard of {store} on http://{host}:{port} (Ctrl-C stops it)")
    if s.metrics_port != 0:  # Streamlit takes this process over: a sidecar serves the metrics
        from cryptostream.observability import logs, sidecar

        for secret in logs.secrets_of(s.model_copy(update={"sinks": (postgres,)})) if postgres else ():
            logs.add_secret(secret)
        probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "localhost") else host
        sidecar.start(s.metrics_port, f"http://{probe_host}:{port}/_stcore/health", s.log_format)
    serve(streamlit_command(db=s.db, postgres=postgres, host=host, port=port, refresh=refresh,
                            broker=broker, group=group), postgres)


@app.command()
def health(
    port: Annotated[int | None, typer.Option(help="Metrics port of the role to ask [default: 9108].")] = None,
    host: Annotated[str, typer.Option(help="Address of the role.")] = "127.0.0.1",
    format: Annotated[str, typer.Option("--format", "-f", help="text | json")] = "text",
    config: ConfigOpt = None,
) -> None:
    """Ask a running role (run, ingest, process, dashboard) for /healthz and /readyz; exit 0
    when it is ready, 1 when it is not, 2 when nothing answers."""
    from cryptostream.observability import DEFAULT_METRICS_PORT
    from cryptostream.observability.server import probe

    s = load_settings(config, metrics_port=port)
    if s.metrics_port == 0:
        raise CryptoStreamError("metrics port 0 means metrics are off: give the port the role serves with --port N")
    where = s.metrics_port or DEFAULT_METRICS_PORT
    ready, body, live = probe(host, where)
    if format == "json":
        sys.stdout.write(json.dumps({"ready": ready, "readyz": body, "healthz": live}) + "\n")
    elif format == "text":
        out.print(f"{body.get('role', '?')} on {host}:{where}: {'ready' if ready else 'NOT READY'} "
                  f"(live: {live.get('status')})", markup=False)
        for name, c in body.get("checks", {}).items():
            out.print(f"  {'ok  ' if c.get('ok') else 'FAIL'} {name}: {c.get('detail')}", markup=False)
    else:
        raise CryptoStreamError(f"unknown --format {format!r}; use text or json")
    if not ready:
        raise typer.Exit(1)


def _source_line(r: dict) -> str:
    """One line on the source's state as the run last wrote it."""
    state = r["source_state"] or "unknown"
    parts = [f"source {r['source']}: {state}"]
    if state in ("replay", "simulated"):
        parts[0] += " (not live data)"
    if state == "reconnecting":
        parts[0] += f" (attempt {r['source_attempt']})"
    if r["reconnects"]:
        parts.append(f"{r['reconnects']} reconnects")
    if r["last_message_age_s"] is not None:
        parts.append(f"last message {r['last_message_age_s']:.1f} s before the last update")
    if r["exchange_clock_skew_ms"] is not None:
        parts.append(f"exchange clock {r['exchange_clock_skew_ms']:+,.0f} ms from ours")
    if r["backfilled_trades"] or r["backfill_pending"]:
        parts.append(f"{r['backfilled_trades']:,} trades backfilled, {r['backfill_pending']} pending")
    parts.append(f"updated {r['updated_at']:%Y-%m-%d %H:%M:%S %Z}")
    return "; ".join(parts)


@app.command()
def record(
    out_file: Annotated[Path, typer.Option("--out", help="Output file: <ns> <json> lines (.gz compresses).")],
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols [default: BTCUSDT,ETHUSDT,BNBUSDT].")] = None,
    binance_url: Annotated[str | None, typer.Option(help="Binance stream base URL [default: wss://stream.binance.com:9443].")] = None,
    binance_stream: Annotated[str | None, typer.Option(help="trade | aggTrade  [default: trade]")] = None,
    duration: Annotated[str | None, typer.Option(help="Stop after this wall time (e.g. 10m); default: until Ctrl-C.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Record raw Binance messages with their receive time, for `run --source replay`."""
    import signal
    import threading

    from cryptostream.sources.binance_stream import StreamOptions
    from cryptostream.sources.recorder import record as record_stream

    s = load_settings(config, symbols=symbols, binance_url=binance_url,
                      binance_stream=binance_stream, duration_s=duration)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    err.print(f"recording {', '.join(s.symbols)} @{s.binance_stream} from {s.binance_url} -> {out_file}")
    with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                  disable=not err.is_terminal) as bar:
        task = bar.add_task("connecting")

        def show(sm, st) -> None:
            bar.update(task, description=f"{st.state}: {sm.messages:,} messages, {sm.bytes / 1e6:,.1f} MB, "
                                         f"{sm.reconnects} reconnects")

        sm = record_stream(s.binance_url, s.symbols, out_file, s.binance_stream, s.duration_s, stop,
                           StreamOptions(stale_after_s=s.stale_after_s, seed=s.seed), show)
    err.print(f"wrote {sm.messages:,} messages ({sm.bytes / 1e6:,.1f} MB) in {sm.seconds:.1f} s "
              f"to {out_file}; {sm.reconnects} reconnects")


BrokerOpt = Annotated[str | None, typer.Option("--broker", help="Kafka bootstrap server HOST:PORT.")]
topics_app = typer.Typer(help="Create, describe the pipeline's Kafka topics; show consumer lag.",
                         no_args_is_help=True, rich_markup_mode=None)
app.add_typer(topics_app, name="topics")


def _need_broker(s) -> None:
    if not s.broker:
        raise CryptoStreamError("give the Kafka broker: --broker HOST:PORT (or CRYPTOSTREAM_BROKER)")


@topics_app.command("create")
def topics_create(
    broker: BrokerOpt = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions of the data topics [default: 6].")] = None,
    retention: Annotated[str | None, typer.Option(help="Retention of raw/clean/rejects, e.g. 7d [default: 7d].")] = None,
    window: Annotated[list[str] | None, typer.Option("--window", help="Window specs (their tables get topics).")] = None,
    config: ConfigOpt = None,
) -> None:
    """Create the topics (raw_trades, clean_trades, rejects, pipeline_stats, one per window table)."""
    from cryptostream.kafka_pipeline import ensure_topics

    s = load_settings(config, broker=broker, partitions=partitions, retention_s=retention,
                      windows=tuple(window or ()))
    _need_broker(s)
    for name, status in ensure_topics(s).items():
        out.print(f"{name}: {status}")


@topics_app.command("describe")
def topics_describe(broker: BrokerOpt = None, format: Annotated[str, typer.Option("--format", "-f")] = "table",
                    config: ConfigOpt = None) -> None:
    """Partitions and status of each pipeline topic."""
    import pyarrow as pa

    from cryptostream.transport.kafka_admin import Topics, topic_names

    s = load_settings(config, broker=broker)
    _need_broker(s)
    rows = Topics(s.broker).describe(topic_names(tuple(w.table for w in s.window_specs())))
    _print_table(pa.Table.from_pylist([{k: str(v) for k, v in r.items()} for r in rows]), format)


@topics_app.command("lag")
def topics_lag(broker: BrokerOpt = None,
               group: Annotated[str | None, typer.Option(help="Consumer group [default: cryptostream].")] = None,
               format: Annotated[str, typer.Option("--format", "-f")] = "table",
               config: ConfigOpt = None) -> None:
    """Committed offset, end offset and lag per partition of the group's input topics."""
    import pyarrow as pa

    from cryptostream.transport.kafka_admin import CLEAN, REJECTS, STATS, Topics

    s = load_settings(config, broker=broker, group=group)
    _need_broker(s)
    rows = Topics(s.broker).lag(s.group, [CLEAN, REJECTS, STATS])
    _print_table(pa.Table.from_pylist(rows), format)
    err.print(f"total lag: {sum(r['lag'] for r in rows):,} records")


@app.command()
def ingest(
    broker: BrokerOpt = None,
    source: Annotated[str | None, typer.Option(help="binance | replay | simulate  [default: binance]")] = None,
    replay: Annotated[list[str] | None, typer.Option("--replay", help="[SYMBOL=]FILE to replay. Repeatable.")] = None,
    symbols: Annotated[str | None, typer.Option(help="Comma-separated symbols.")] = None,
    speed: Annotated[str | None, typer.Option(help="'max' or N x real time.")] = None,
    duration: Annotated[str | None, typer.Option(help="Live: wall time to run; simulator: event time.")] = None,
    seed: Annotated[int | None, typer.Option(help="Simulator seed.")] = None,
    binance_url: Annotated[str | None, typer.Option(help="Binance stream base URL.")] = None,
    binance_rest_url: Annotated[str | None, typer.Option(help="Binance REST base URL.")] = None,
    max_clock_skew: Annotated[str | None, typer.Option(help="Max |trade time - receive time|; 0 disables.")] = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions when topics are created [default: 6].")] = None,
    publish_raw: Annotated[bool | None, typer.Option("--raw/--no-raw", help="Publish raw_trades [default: yes].")] = None,
    rate: RateOpt = None,
    metrics_port: MetricsPortOpt = None,
    log_format: LogFormatOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run the sources and publish raw_trades, clean_trades, rejects (and counters) to Kafka."""
    from cryptostream.kafka_pipeline import IngestPipeline

    s = load_settings(config, broker=broker, source=source, replay=tuple(replay or ()),
                      symbols=symbols, speed=speed, duration_s=duration, seed=seed,
                      binance_url=binance_url, binance_rest_url=binance_rest_url,
                      max_clock_skew_s=max_clock_skew, partitions=partitions, publish_raw=publish_raw,
                      sim_rate=rate, **_obs(metrics_port, log_format))
    pipe = _kafka_role(s, "ingest", IngestPipeline)
    err.print(f"[dim]{pipe.run_id}: {s.source} -> {s.broker}[/dim]")
    freeze_startup_heap()
    sm = pipe.run()
    err.print(f"received {sm.received:,} records, published {sm.published:,} messages, "
              f"{sm.delivered:,} acknowledged, in {sm.seconds:.1f} s")


@app.command()
def process(
    broker: BrokerOpt = None,
    group: Annotated[str | None, typer.Option(help="Consumer group; run N replicas with the same group [default: cryptostream].")] = None,
    db: DbOpt = None,
    lake: Annotated[str | None, typer.Option(help="Parquet lake folder, or 'off'.")] = None,
    sink: Annotated[list[str] | None, typer.Option("--sink", help="'duckdb' (the --db file) and/or a postgres:// DSN. Repeatable [default: duckdb].")] = None,
    until_idle: Annotated[str | None, typer.Option(help="Exit after this long without new records, closing every window.")] = None,
    window: Annotated[list[str] | None, typer.Option("--window", help="TABLE=SIZE[/SLIDE]. Repeatable.")] = None,
    allowed_lateness: Annotated[str | None, typer.Option(help="Allowed lateness, e.g. 2s.")] = None,
    idle_timeout: Annotated[str | None, typer.Option(help="Quiet time after which a symbol's watermark advances with the clock.")] = None,
    session_timeout_ms: Annotated[int | None, typer.Option(help="Consumer group session timeout [default: 10000].")] = None,
    ml: MlOpt = None,
    ml_models: MlModelsOpt = None,
    ml_warmup: MlWarmupOpt = None,
    models_dir: ModelsDirOpt = None,
    contamination: ContaminationOpt = None,
    metrics_port: MetricsPortOpt = None,
    log_format: LogFormatOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Consume clean_trades in a consumer group, compute the windows, write the sinks."""
    from cryptostream.kafka_pipeline import ProcessPipeline

    s = load_settings(config, broker=broker, group=group, db=db, lake=lake, sinks=tuple(sink or ()),
                      until_idle_s=until_idle, windows=tuple(window or ()),
                      allowed_lateness_s=allowed_lateness, idle_timeout_s=idle_timeout,
                      session_timeout_ms=session_timeout_ms,
                      **_ml(ml, ml_models, ml_warmup, models_dir, contamination),
                      **_obs(metrics_port, log_format))
    from cryptostream.observability.logs import redact

    pipe = _kafka_role(s, "process", ProcessPipeline)
    err.print(f"[dim]{pipe.run_id}: {s.broker} -> {redact(', '.join(s.sinks))}[/dim]")
    freeze_startup_heap()
    n = pipe.run()
    err.print(f"processed {n:,} records")


def freeze_startup_heap() -> None:
    """Keep what start-up allocated (the modules, the ML libraries: over a million objects)
    out of the garbage collector's full passes, which otherwise paused every thread of a run
    for 100-130 ms each (measured in bench_live_latency); what the run allocates later is
    collected as before."""
    gc.collect()
    gc.freeze()


def _kafka_role(s, name: str, pipeline_cls):
    """A Kafka role's pipeline with its logs, metrics endpoint and bounded signal handling."""
    from cryptostream.observability.server import observe

    _need_broker(s)
    _setup(s)
    telemetry = observe(s, name)
    pipe = pipeline_cls(s, telemetry=telemetry)
    telemetry.watch(pipe)
    _stop_on_signals(pipe.stop, s.shutdown_timeout_s)
    return pipe


def _stop_on_signals(stop, timeout_s: float) -> None:
    from cryptostream import shutdown

    shutdown.install(stop, timeout_s)


def _register_standins() -> None:
    from cryptostream.ml.commands import register as register_ml
    from cryptostream.standins.commands import register

    register(app)
    register_ml(app)


_register_standins()


def main() -> None:
    try:
        app()
    except CryptoStreamError as exc:
        from cryptostream.observability.logs import redact

        err.print(f"[red]error:[/red] {escape(redact(str(exc)))}")
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
