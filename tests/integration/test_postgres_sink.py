"""The PostgreSQL sink against the local server: same tables as DuckDB, migrations, reconnects.

Every test gets an empty ``public`` schema of the session's own database (``pg_dsn`` in
tests/conftest.py); a reference result that must not be disturbed is written to a second
schema of the same database (``options=-csearch_path=ref`` in its DSN) and compared table
by table (row count and a sum of md5 hashes of the rows' text, floats exact in that text).
Connections are cut three ways: ``pg_terminate_backend`` (between writes, during a large COPY
or INSERT, right before the commit) and a TCP proxy that goes away (server down / network).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from cryptostream.errors import SinkError
from cryptostream.ml.live import MLConfig, MLStage
from cryptostream.model import (
    AGG_COLUMNS,
    DEFAULT_WINDOWS,
    ML_TABLES,
    Rejected,
    RejectReason,
    WindowSpec,
)
from cryptostream.processing.engine import AcceptedTrades, EngineConfig, Output, Processor
from cryptostream.sinks.base import stats_rows
from cryptostream.sinks.duckdb_sink import DuckDBSink
from cryptostream.sinks.postgres_copy import encode_binary_copy
from cryptostream.sinks.postgres_schema import MIGRATIONS
from cryptostream.sinks.postgres_sink import PostgresSink
from cryptostream.sources.coingecko import ReferenceTick
from cryptostream.sources.replay import ReplayFile, ReplaySource

pytestmark = pytest.mark.integration

REAL = Path(__file__).parents[1] / "fixtures" / "real"
BAD = Path(__file__).parents[1] / "fixtures" / "bad"
NOW_US = 1_900_000_000_000_000
TABLES = ("trades", "agg_1m", "agg_5m_1m", "rejects", "gaps", "pipeline_stats", "reference_prices",
          *ML_TABLES)


# -- data --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rich(tmp_path_factory) -> tuple[Output, list[dict]]:
    """Two symbols of real trades, every reject reason the bad fixture has (one raw payload
    holds U+0000), gaps (lines cut out of a real file), reference ticks with nulls, stats,
    and the ML rows the live stage derives from the windows."""
    lines = (REAL / "BTCUSDT-trades-2025-01-01-first210.csv").read_text().splitlines()
    holed = tmp_path_factory.mktemp("gaps") / "BTCUSDT-trades-2025-01-01.csv"
    holed.write_text("\n".join(x for i, x in enumerate(lines) if i not in (20, 21, 22, 100)) + "\n")
    proc = Processor(EngineConfig(windows=DEFAULT_WINDOWS, max_clock_skew_us=5_000_000))
    out = Output()
    for spec in (REAL / "btcusdt-ws-raw-20240808.hftbacktest.gz",
                 REAL / "ethusdt-ws-raw-20240808.hftbacktest.gz", BAD / "malformed.jsonl", holed):
        for sb in ReplaySource([ReplayFile.parse(str(spec))]).batches():
            out.extend(proc.process(sb, NOW_US))
    out.extend(proc.close(NOW_US))
    out.reference_prices += [
        ReferenceTick("bitcoin", "BTCUSDT", 60000.123456789012, 1.5e10, None, 1723161600,
                      1723161601123456),
        ReferenceTick("ethereum", "", 2500.5, None, -1.25, 1723161600, 1723161601000000),
        ReferenceTick("bitcoin", "BTCUSDT", 60001.0, 1.6e10, 0.1, 1723161600, 1723161609000000),
    ]
    ml = MLStage(MLConfig(warmup_windows=5))  # the ML tables, from the same windows
    out.ml = ml.on_windows(out.windows["agg_1m"], NOW_US)
    ml.close()
    assert out.rejects and out.gaps and len(out.windows["agg_1m"]) > 1
    assert all(out.ml.get(t) for t in ML_TABLES), {t: len(r) for t, r in out.ml.items()}
    return out, stats_rows("run-1", NOW_US, NOW_US, "test", proc.counters)


def _halves(out: Output) -> tuple[Output, Output]:
    def cut(xs):
        return xs[: len(xs) // 2], xs[len(xs) // 2:]

    parts = [Output(), Output()]
    for name in ("trades", "rejects", "gaps", "reference_prices"):
        for part, xs in zip(parts, cut(getattr(out, name)), strict=True):
            setattr(part, name, list(xs))
    for table, rows in out.windows.items():
        for part, xs in zip(parts, cut(rows), strict=True):
            part.windows[table] = list(xs)
    return parts[0], parts[1]


def _synthetic(n_per_symbol: int) -> Output:
    """A large output: ``n_per_symbol`` trades of two symbols, with nulls, plus windows."""
    rng = np.random.default_rng(7)
    trades = []
    for sym in ("BTCUSDT", "ETHUSDT"):
        n = n_per_symbol
        t = 1_723_161_600_000_000 + np.sort(rng.integers(0, 3_600_000_000, n))
        recv_lat = rng.random(n)
        recv_lat[::7] = np.nan
        trades.append(AcceptedTrades(
            sym, "synthetic", np.arange(1, n + 1, dtype=np.int64), 60000 + rng.random(n),
            rng.random(n), t, rng.random(n) < 0.5, rng.random(n) < 0.01, t + 5,
            np.where(np.arange(n) % 3 == 0, np.iinfo(np.int64).min, t + 9), NOW_US,
            rng.random(n), recv_lat))
    windows = []
    for sym in ("BTCUSDT", "ETHUSDT"):
        for i in range(500):
            row = {n: float(rng.random()) for n, t in AGG_COLUMNS if t == "DOUBLE"}
            row.update({n: int(i) for n, t in AGG_COLUMNS if t == "BIGINT"})
            row.update({n: i % 2 == 0 for n, t in AGG_COLUMNS if t == "BOOLEAN"})
            start = 1_723_161_600_000_000 + i * 60_000_000
            row.update(symbol=sym, window_start_us=start, window_end_us=start + 60_000_000,
                       emitted_at_us=NOW_US)
            windows.append(row)
    return Output(trades=trades, windows={"agg_1m": windows})


# -- reading stores back -----------------------------------------------------------------------

def _norm(v):
    if isinstance(v, float) and math.isnan(v):
        return "NaN"  # NaN != NaN
    if isinstance(v, str):
        return v.replace("\x00", "\ufffd")  # what PostgreSQL text stores for U+0000
    return v


def _key(row: tuple) -> tuple:
    return tuple((True, "", 0) if v is None else (False, type(v).__name__, v) for v in row)


def _pg_rows(dsn: str, tables=TABLES) -> dict[str, list[tuple]]:
    with psycopg.connect(dsn) as con:
        con.execute("SET TimeZone = 'UTC'")
        cur = con.cursor(binary=True)
        return {t: sorted((tuple(map(_norm, r)) for r in cur.execute(
            sql.SQL("SELECT * FROM {}").format(sql.Identifier(t)))), key=_key) for t in tables}


def _duck_rows(path: Path, tables=TABLES) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: sorted((tuple(map(_norm, r)) for r in con.sql(f"SELECT * FROM {t}").fetchall()),
                          key=_key) for t in tables}
    finally:
        con.close()


def _digests(dsn: str, schema: str = "public", tables=TABLES) -> dict[str, tuple[int, str]]:
    """(row count, sum over the rows of 64 bits of the md5 of their text) per table of
    ``schema``: equal for equal tables whatever the row order; floats print exactly."""
    with psycopg.connect(dsn) as con:
        con.execute("SET TimeZone = 'UTC'")
        return {t: tuple(con.execute(sql.SQL(
            "SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 16))::bit(64)::bigint"
            "::numeric), 0)::text FROM {}.{} t").format(
                sql.Identifier(schema), sql.Identifier(t))).fetchone()) for t in tables}


def _in_schema(dsn: str, schema: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        con.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return f"{dsn}?options=-csearch_path%3D{schema}"


def _reference(dsn: str, *writes: Output, stats: list[dict] | None = None
               ) -> dict[str, tuple[int, str]]:
    """Digests of the uninterrupted result of ``writes`` (written in schema ``ref``)."""
    sink = PostgresSink(_in_schema(dsn, "ref"), DEFAULT_WINDOWS)
    sink.open()
    for out in writes:
        sink.write(out, stats or [], 1)
    sink.close()
    return _digests(dsn, "ref")


def _with_app(dsn: str, app: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={app}"


def _terminate(dsn: str, app: str, query_prefix: str | None = None) -> int:
    """Terminate the backends of ``app`` (only those running a query starting with
    ``query_prefix`` when given); returns how many."""
    with psycopg.connect(dsn, autocommit=True) as con:
        return len(con.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = %s"
            " AND (%s::text IS NULL OR (state = 'active' AND query LIKE %s || '%%'))",
            [app, query_prefix, query_prefix]).fetchall())


# -- same tables as DuckDB -----------------------------------------------------------------------

def test_the_same_output_gives_equal_tables_in_duckdb_and_postgres(pg_dsn, tmp_path, rich):
    out, stats = rich
    duck = DuckDBSink(tmp_path / "d.duckdb", DEFAULT_WINDOWS)
    duck.open()
    duck.write(out, stats, 1)
    duck.close()
    pg = PostgresSink(pg_dsn, DEFAULT_WINDOWS)
    pg.open()
    pg.write(out, stats, 1)
    pg.write(out, stats, 2)  # idempotent, as DuckDB's
    pg.close()
    want, got = _duck_rows(tmp_path / "d.duckdb"), _pg_rows(pg_dsn)
    for t in TABLES:
        assert got[t], f"{t} is empty: the test data should cover every table"
        assert got[t] == want[t], t  # every row, floats bit-exact, aware timestamps
    nul = [r for r in got["rejects"] if "\ufffd" in (r[5] or "")]
    assert nul, "the malformed fixture's binary line should be among the rejects"


def test_columns_and_types_match_the_duckdb_store(pg_dsn, tmp_path):
    duck = DuckDBSink(tmp_path / "d.duckdb", DEFAULT_WINDOWS)
    duck.open()
    duck.close()
    pg = PostgresSink(pg_dsn, DEFAULT_WINDOWS)
    pg.open()
    pg.close()
    pg_types = {"text": "VARCHAR", "double precision": "DOUBLE", "bigint": "BIGINT",
                "boolean": "BOOLEAN", "timestamp with time zone": "TIMESTAMP WITH TIME ZONE"}
    con = duckdb.connect(str(tmp_path / "d.duckdb"), read_only=True)
    with psycopg.connect(pg_dsn) as pgc:
        for t in TABLES:
            want = con.execute("SELECT column_name, data_type FROM information_schema.columns "
                               "WHERE table_name = ? ORDER BY ordinal_position", [t]).fetchall()
            got = pgc.execute("SELECT column_name, data_type FROM information_schema.columns "
                              "WHERE table_schema = 'public' AND table_name = %s "
                              "ORDER BY ordinal_position", [t]).fetchall()
            assert [(c, pg_types[d]) for c, d in got] == want, t
        keys = dict(pgc.execute(
            "SELECT tc.table_name, string_agg(k.column_name, ',' ORDER BY k.ordinal_position) "
            "FROM information_schema.table_constraints tc JOIN information_schema.key_column_usage k "
            "USING (constraint_schema, constraint_name) WHERE tc.constraint_type = 'PRIMARY KEY' "
            "AND tc.table_schema = 'public' GROUP BY tc.table_name").fetchall())
    con.close()
    assert keys == {
        "trades": "symbol,trade_id", "agg_1m": "symbol,window_start",
        "agg_5m_1m": "symbol,window_start", "rejects": "source,source_offset",
        "gaps": "symbol,from_id", "pipeline_stats": "run_id,symbol",
        "reference_prices": "asset,symbol,last_updated_at", "schema_migrations": "version",
        "consumer_checkpoints": "group_id,topic,partition",
        **{t: ",".join(key) for t, (_, key) in ML_TABLES.items()},
    }


def test_a_replayed_window_keeps_its_first_latency_and_a_changed_one_is_updated(pg_dsn, rich):
    out, stats = rich
    sink = PostgresSink(pg_dsn, DEFAULT_WINDOWS)
    sink.open()
    sink.write(out, stats, 1)
    first = _pg_rows(pg_dsn, ("agg_1m",))["agg_1m"]
    rows = [dict(r) for r in out.windows["agg_1m"]]
    for r in rows:
        r["latency_avg_ms"] += 1000.0
        r["emitted_at_us"] += 1
    sink.write(Output(windows={"agg_1m": rows}), [], 2)
    assert _pg_rows(pg_dsn, ("agg_1m",))["agg_1m"] == first  # same data: row untouched
    rows[0]["close"] += 1.0
    sink.write(Output(windows={"agg_1m": rows}), [], 3)
    sink.close()
    after = _pg_rows(pg_dsn, ("agg_1m",))["agg_1m"]
    assert sum(a != b for a, b in zip(after, first, strict=True)) == 1


def test_a_data_error_is_raised_at_once_and_nothing_is_half_written(pg_dsn, rich):
    out, stats = rich
    sink = PostgresSink(pg_dsn, DEFAULT_WINDOWS, retry_for_s=30)
    sink.open()
    bad = Rejected(None, 1, "BTCUSDT", RejectReason.BAD_TYPE, "", "")  # rejects.source NOT NULL
    t0 = time.monotonic()
    with pytest.raises(SinkError, match=r"refused the write.*not retried") as err:
        sink.write(Output(trades=out.trades, windows=out.windows, rejects=[bad]), stats, 1)
    assert time.monotonic() - t0 < 5 and sink.retries == 0
    assert "23502" in str(err.value)  # not_null_violation
    sink.close()
    assert all(n == 0 for n, _ in _digests(pg_dsn).values())


@pytest.mark.parametrize("chunk_bytes", [16 << 20, 300])
def test_binary_copy_round_trips_every_type_and_null(pg_dsn, chunk_bytes):
    """Extremes, nulls, NaN/inf, multi-byte and long text, dictionary columns; ``300`` bytes
    a chunk splits the rows over many chunks (and a row wider than a chunk gets its own)."""
    ts = pa.timestamp("us", tz="UTC")
    table = pa.table({
        "n": pa.array(range(6), pa.int64()),
        "i": pa.array([0, -1, 2**63 - 1, -(2**63), None, 7], pa.int64()),
        "f": pa.array([0.1, -0.0, math.nan, -math.inf, None, 1e-320], pa.float64()),
        "b": pa.array([True, False, None, True, False, None], pa.bool_()),
        "t": pa.array([0, -1, 946_684_800_000_000, 253_402_300_799_999_999, None, 1], ts),
        "s": pa.array(["", "é€😀", "x" * 5000, None, "a\x00b", "plain"], pa.string()),
        "d": pa.array(["BTCUSDT", None, "", "ETHUSDT", "BTCUSDT", "é"]).dictionary_encode(),
    })
    types = ["bigint", "bigint", "double precision", "boolean", "timestamp with time zone",
             "text", "text"]
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("CREATE TABLE enc (n BIGINT, i BIGINT, f DOUBLE PRECISION, b BOOLEAN, "
                    "t TIMESTAMPTZ, s TEXT, d TEXT)")
        for t in (table, table.slice(0, 0), table.slice(2, 3)):
            with con.cursor().copy("COPY enc FROM STDIN (FORMAT BINARY)") as copy:
                for chunk in encode_binary_copy(t, types, chunk_bytes=chunk_bytes):
                    copy.write(chunk)
        got = con.cursor(binary=True).execute("SELECT * FROM enc ORDER BY n, ctid").fetchall()
    want = sorted(table.to_pylist() + table.slice(2, 3).to_pylist(), key=lambda r: r["n"])
    want = [tuple(_norm(v) for v in r.values()) for r in want]
    assert [tuple(map(_norm, r)) for r in got] == want


def test_replicas_writing_the_same_output_at_once_store_it_once(pg_dsn, rich):
    """Two ``process`` replicas (or a retry racing a slow commit) writing overlapping data:
    unique violations of the direct COPY fall back to the upsert, nothing is doubled."""
    out, stats = rich
    want = _reference(pg_dsn, out, stats=stats)
    sinks = [PostgresSink(pg_dsn, DEFAULT_WINDOWS) for _ in range(3)]
    for s in sinks:
        s.open()
    start = threading.Barrier(len(sinks))
    errors: list[BaseException] = []

    def write(s: PostgresSink) -> None:
        start.wait()
        try:
            s.write(out, stats, 1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s,)) for s in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in sinks:
        s.close()
    assert errors == []
    assert _digests(pg_dsn) == want


# -- migrations ----------------------------------------------------------------------------------

def _migrations(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as con:
        return con.execute("SELECT version, applied_at, description FROM schema_migrations "
                           "ORDER BY version").fetchall()


def test_migrations_are_applied_once_and_recorded(pg_dsn):
    sink = PostgresSink(pg_dsn, DEFAULT_WINDOWS)
    sink.open()
    sink.close()
    first = _migrations(pg_dsn)
    assert [(v, d) for v, _, d in first] == [(m.version, m.description) for m in MIGRATIONS]
    again = PostgresSink(pg_dsn, DEFAULT_WINDOWS)
    again.open()
    again.open()  # a second open of the same sink is a no-op
    again.close()
    assert _migrations(pg_dsn) == first  # applied_at unchanged: nothing re-applied


def test_sinks_opening_concurrently_apply_each_migration_once(pg_dsn):
    windows = (*DEFAULT_WINDOWS, WindowSpec("agg_15m", 900, 900))
    sinks = [PostgresSink(pg_dsn, windows) for _ in range(6)]
    start = threading.Barrier(len(sinks))
    errors: list[BaseException] = []

    def open_(s: PostgresSink) -> None:
        start.wait()
        try:
            s.open()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_, args=(s,)) for s in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    for s in sinks:
        s.close()
    assert [v for v, _, _ in _migrations(pg_dsn)] == [m.version for m in MIGRATIONS]
    with psycopg.connect(pg_dsn) as con:
        assert con.execute("SELECT to_regclass('agg_15m') IS NOT NULL").fetchone() == (True,)


def test_a_newer_schema_or_a_foreign_window_table_is_refused(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("CREATE TABLE agg_2m (symbol TEXT, n BIGINT)")
    with pytest.raises(SinkError, match="agg_2m exists .* other columns"):
        PostgresSink(pg_dsn, (WindowSpec("agg_2m", 120, 120),)).open()
    PostgresSink(pg_dsn, DEFAULT_WINDOWS).open()
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("INSERT INTO schema_migrations VALUES (999, now(), 'from the future')")
    with pytest.raises(SinkError, match=r"\[999\].*upgrade cryptostream"):
        PostgresSink(pg_dsn, DEFAULT_WINDOWS).open()


# -- lost connections ----------------------------------------------------------------------------

def test_a_connection_killed_between_writes_is_replaced(pg_dsn, rich):
    out, _ = rich
    a, b = _halves(out)
    want = _reference(pg_dsn, a, b)
    dsn = _with_app(pg_dsn, "cs_kill_between")
    sink = PostgresSink(dsn, DEFAULT_WINDOWS, pool_size=2)
    sink.open()
    sink.write(a, [], 1)
    assert _terminate(pg_dsn, "cs_kill_between") >= 1
    sink.write(b, [], 1)
    assert _terminate(pg_dsn, "cs_kill_between") >= 1
    sink.write(b, [], 1)  # again, on yet another connection: changes nothing
    sink.close()
    assert _digests(pg_dsn) == want


@pytest.mark.parametrize("phase", ["COPY \"trades\"", "INSERT INTO \"trades\""])
def test_a_connection_killed_during_a_large_write_is_retried_whole(pg_dsn, phase):
    """``COPY "trades"``: during the direct COPY of new trades; ``INSERT INTO "trades"``:
    during the move from the staging table (the trades are all stored already)."""
    big = _synthetic(100_000)
    writes = (big, big) if phase.startswith("INSERT") else (big,)
    want = _reference(pg_dsn, *writes)
    app = "cs_kill_during"
    sink = PostgresSink(_with_app(pg_dsn, app), DEFAULT_WINDOWS, retry_for_s=30)
    sink.open()
    for out in writes[:-1]:
        sink.write(out, [], 1)
    killed = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not killed:
            if _terminate(pg_dsn, app, phase):
                killed.append(time.monotonic())
            time.sleep(0.005)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        sink.write(writes[-1], [], 1)
    finally:
        stop.set()
        thread.join()
    sink.close()
    assert killed, f"the write ended before a backend could be killed during {phase}"
    assert sink.retries >= 1
    assert _digests(pg_dsn) == want  # no trade lost, none doubled


class _DiesBeforeCommit(PostgresSink):
    """Its first transaction loses its connection right before the COMMIT."""

    kills = 0

    def _before_commit(self, conn: psycopg.Connection) -> None:
        if not self.kills:
            self.kills += 1
            with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", [conn.info.backend_pid])


def test_a_connection_killed_right_before_the_commit_is_retried(pg_dsn, rich):
    out, _ = rich
    want = _reference(pg_dsn, out)
    sink = _DiesBeforeCommit(pg_dsn, DEFAULT_WINDOWS, retry_for_s=20)
    sink.admin_dsn = pg_dsn
    sink.open()
    sink.write(out, [], 1)
    sink.close()
    assert sink.kills == 1 and sink.retries == 1
    assert _digests(pg_dsn) == want


class TcpProxy:
    """127.0.0.1:<port> forwarded to the PostgreSQL server; ``stop()`` drops every connection
    and refuses new ones (a server that is down), ``start()`` serves again on the same port."""

    def __init__(self, upstream=("127.0.0.1", 5432)):
        self.upstream = upstream
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(16)
        self.listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def stop(self) -> None:
        lst, self.listener = self.listener, None
        if lst is not None:
            try:
                lst.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
            except OSError:
                pass
            lst.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def proxy():
    p = TcpProxy()
    p.start()
    yield p
    p.stop()


def _via(proxy: TcpProxy, dsn: str) -> str:
    return dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")


def test_a_write_waits_for_a_server_that_comes_back(pg_dsn, rich, proxy):
    out, _ = rich
    a, b = _halves(out)
    want = _reference(pg_dsn, a, b)
    sink = PostgresSink(_via(proxy, pg_dsn), DEFAULT_WINDOWS, retry_for_s=30)
    sink.open()
    sink.write(a, [], 1)
    proxy.stop()
    back = threading.Timer(2.0, proxy.start)
    back.start()
    t0 = time.monotonic()
    sink.write(b, [], 1)  # blocks until the "server" is back, then succeeds
    took = time.monotonic() - t0
    back.join()
    sink.close()
    assert 1.5 < took < 20  # waited for the pool to reconnect (and retried if that took long)
    assert _digests(pg_dsn) == want


def test_a_server_that_stays_away_gives_a_clear_error_within_retry_for_s(pg_dsn, rich, proxy):
    out, stats = rich
    sink = PostgresSink(_via(proxy, pg_dsn), DEFAULT_WINDOWS, retry_for_s=2.0)
    sink.open()
    proxy.stop()
    t0 = time.monotonic()
    with pytest.raises(SinkError) as err:
        sink.write(out, stats, 1)
    took = time.monotonic() - t0
    sink.close()
    assert 1.5 < took < 2.0 + 6.0  # the deadline, plus at most one attempt's connect timeout
    msg = str(err.value)
    assert f"127.0.0.1:{proxy.port}" in msg and "could not write for 2s" in msg
    assert "Nothing of this write was stored" in msg and "restart the pipeline" in msg


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_fails_open_within_retry_for_s():
    port = _closed_port()
    sink = PostgresSink(f"postgresql://postgres@127.0.0.1:{port}/cs", DEFAULT_WINDOWS,
                        retry_for_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(SinkError) as err:
        sink.open()
    assert time.monotonic() - t0 < 1.0 + 3.0
    msg = str(err.value)
    assert f"cannot reach PostgreSQL at postgresql://postgres@127.0.0.1:{port}/cs" in msg
    assert "Connection refused" in msg and "Start the server" in msg
    sink.close()  # closing a sink that never opened is fine


def test_a_missing_database_is_not_waited_for(pg_database):
    dsn = pg_database.rsplit("/", 1)[0] + "/cs_no_such_database"
    t0 = time.monotonic()
    with pytest.raises(SinkError, match='database "cs_no_such_database" does not exist.*createdb'):
        PostgresSink(dsn, DEFAULT_WINDOWS, retry_for_s=30).open()
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("form", ["url", "keywords"])
def test_a_dsn_password_is_redacted_in_errors(form):
    port = _closed_port()
    secret = "s3cr3t-pw"
    dsn = (f"postgresql://postgres:{secret}@127.0.0.1:{port}/cs" if form == "url" else
           f"host=127.0.0.1 port={port} user=postgres password={secret} dbname=cs")
    with pytest.raises(SinkError) as err:
        PostgresSink(dsn, DEFAULT_WINDOWS, retry_for_s=0.3).open()
    msg = str(err.value)
    assert secret not in msg and secret not in repr(err.value)
    assert ("postgres:***@127.0.0.1" if form == "url" else "password=***") in msg
