"""The safe query path: queries read the store and nothing else, in bounded time and rows.

Both ways a DuckDB query runs are attacked: through a running pipeline's query endpoint (a
paced replay writes the store meanwhile) and on the file opened read-only (no writer). Each
attempt to read a file (``read_csv``, ``read_text``, ``FROM '/etc/passwd'``, ``query()``,
``read_parquet`` outside the lake), to attach a database, to write a file (``COPY``), to
install or load an extension, to write the store, or to change the session (``SET``) must
fail with a message that starts with "refused:" and says what was refused; a statement
running past the timeout and a result above the row limit are refused too, and legitimate
reads keep working. PostgreSQL: the dashboard's reads run in read-only transactions, and a
role with only SELECT grants cannot write at all.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import duckdb
import pytest

from cryptostream.errors import QueryError
from cryptostream.query import endpoint_file, open_read_only, run_query

pytestmark = [pytest.mark.integration]

ATTACKS = [
    # (sql, what the refusal must name)
    ("SELECT * FROM read_csv('/etc/passwd')", "read_csv()"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", "read_csv_auto()"),
    ("SELECT * FROM read_text('/etc/passwd')", "read_text()"),
    ("SELECT * FROM read_blob('/etc/hostname')", "read_blob()"),
    ("SELECT * FROM glob('/etc/*')", "glob()"),
    ("SELECT * FROM '/etc/passwd'", "names a file"),
    ("SELECT * FROM 'https://example.com/x.csv'", "names a file"),
    ("SELECT * FROM trades WHERE symbol IN (SELECT content FROM read_text('/etc/passwd'))",
     "read_text()"),
    ("WITH x AS (SELECT * FROM read_json('/etc/x.json')) SELECT * FROM x", "read_json()"),
    ("SELECT * FROM query('SELECT 1')", "query()"),
    ("SELECT * FROM read_parquet('/etc/x.parquet')", "read_parquet()"),
    ("SELECT * FROM read_parquet('LAKE/../../x.parquet')", "read_parquet()"),
    ("DESCRIBE '/etc/passwd'", "names a file"),
    ("ATTACH '/tmp/cs_attack.duckdb' AS x", "ATTACH"),
    ("COPY agg_1m TO '/tmp/cs_attack.csv'", "COPY"),
    ("COPY (SELECT 1) TO '/tmp/cs_attack.csv'", "COPY"),
    ("EXPORT DATABASE '/tmp/cs_attack_dir'", "EXPORT"),
    ("INSTALL httpfs", "INSTALL/LOAD"),
    ("LOAD httpfs", "INSTALL/LOAD"),
    ("CREATE TABLE t AS SELECT 1", "read-only"),
    ("INSERT INTO trades SELECT * FROM trades", "read-only"),
    ("SELECT 1; DROP TABLE agg_1m", "read-only"),
    ("SET enable_external_access = true", "SET"),
    ("SET GLOBAL enable_external_access = true", "SET"),
    ("RESET enable_external_access", "SET"),
    ("CALL pragma_version()", "CALL"),
    ("EXPLAIN ANALYZE COPY agg_1m TO '/tmp/cs_attack.csv'", "EXPLAIN"),
    ("EXPLAIN ANALYZE SELECT * FROM read_csv('/etc/passwd')", "read_csv()"),
    ("SELECT getenv('HOME')", "getenv()"),
    ("SELECT length(read_text('/etc/passwd'))", "read_text()"),
]
LEGIT = [
    "SELECT count(*) AS n FROM trades",
    "DESCRIBE agg_1m",
    "SHOW TABLES",
    "SUMMARIZE SELECT 1 AS x",
    "EXPLAIN SELECT * FROM agg_1m",
    "PRAGMA table_info('agg_1m')",
    "SELECT * FROM duckdb_tables()",
    "WITH w AS (SELECT symbol, count(*) AS n FROM agg_1m GROUP BY ALL) SELECT * FROM w",
    "SELECT list_sum([1, 2, 3]) AS s, range FROM range(3)",
]
LEAKS = [Path("/tmp/cs_attack.csv"), Path("/tmp/cs_attack.duckdb"), Path("/tmp/cs_attack_dir")]


def _refused(db: Path, sql: str, **kw) -> str:
    with pytest.raises(QueryError) as info:
        run_query(db, sql, lock_wait_s=5.0, **kw)
    msg = str(info.value)
    assert "Traceback" not in msg
    return msg


def _attack_all(db: Path, lake_dir: Path, **kw) -> None:
    for p in LEAKS:
        assert not p.exists(), f"{p} exists before the test; remove it"
    problems = []
    for sql, names in ATTACKS:
        sql = sql.replace("LAKE", str(lake_dir))
        try:
            run_query(db, sql, lock_wait_s=5.0, **kw)
        except QueryError as exc:
            msg = str(exc)
            if not msg.startswith("refused:") or names not in msg:
                problems.append(f"{sql!r}: unclear refusal: {msg}")
            continue
        problems.append(f"{sql!r} was accepted")
    assert not problems, "\n".join(problems)
    for p in LEAKS:
        assert not p.exists(), f"a refused statement created {p}"


def _limits(db: Path, **kw) -> None:
    t0 = time.monotonic()
    msg = _refused(db, "SELECT sum(a.range * b.range) AS s FROM range(1000000) a, "
                       "range(1000000) b", timeout_s=1.0, **kw)
    took = time.monotonic() - t0
    assert msg.startswith("refused:") and "timeout" in msg and "--timeout" in msg, msg
    assert took < 15, f"the timeout of 1 s took {took:.1f} s to stop the query"
    msg = _refused(db, "SELECT * FROM range(1000)", max_rows=100, **kw)
    assert msg.startswith("refused:") and "100 rows" in msg and "--max-rows" in msg, msg
    assert run_query(db, "SELECT * FROM range(100)", max_rows=100, **kw).num_rows == 100
    assert run_query(db, "SELECT * FROM range(250000)", max_rows=0, **kw).num_rows == 250_000
    assert run_query(db, "SELECT 1 AS one", **kw).to_pylist() == [{"one": 1}]  # still serving


def _legit(db: Path, **kw) -> None:
    for sql in LEGIT:
        run_query(db, sql, lock_wait_s=5.0, **kw)


# -- the read-only file path (no writer) --------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory, cs):
    ws = cs.Workspace(tmp_path_factory.mktemp("safe"))
    ws.replay(cs.real.btc_csv)
    return ws


def test_file_path_refuses_everything_but_reading_the_store(store):
    assert not endpoint_file(store.db).exists()
    _attack_all(store.db, store.lake, lake=store.lake)
    _legit(store.db, lake=store.lake)


def test_file_path_reads_the_lake_and_only_the_lake(store):
    glob = f"{store.lake}/agg_1m/**/*.parquet"
    n_lake = run_query(store.db, f"SELECT count(*) AS n FROM read_parquet('{glob}', "
                       "hive_partitioning = true)", lake=store.lake).to_pylist()[0]["n"]
    n_store = run_query(store.db, "SELECT count(*) AS n FROM agg_1m").to_pylist()[0]["n"]
    assert n_lake == n_store > 0
    msg = _refused(store.db, f"SELECT * FROM read_parquet('{glob}')")  # no lake configured
    assert "read_parquet()" in msg


def test_file_path_limits(store):
    _limits(store.db)


def test_read_only_connection_enforces_it_in_duckdb_too(store):
    """Without our checks, DuckDB itself refuses: external access off, configuration locked."""
    con = open_read_only(store.db, store.lake)
    try:
        for sql in ("SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM '/etc/passwd'",
                    "COPY agg_1m TO '/tmp/cs_attack.csv'", "INSTALL httpfs",
                    "ATTACH '/tmp/cs_attack.duckdb' AS x", "SET enable_external_access = true",
                    "CREATE TABLE t AS SELECT 1"):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
        glob = f"{store.lake}/agg_1m/**/*.parquet"
        assert con.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone()[0] > 0
    finally:
        con.close()
    for p in LEAKS:
        assert not p.exists()


def test_cli_flags_and_messages(store, cs):
    proc = cs.run_cli("query", "SELECT * FROM read_csv('/etc/passwd')", "--db", store.db,
                      cwd=store.root, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "refused" in proc.stderr and "read_csv" in proc.stderr, proc.stderr
    proc = cs.run_cli("query", "SELECT * FROM range(10)", "--db", store.db, "--max-rows", "5",
                      cwd=store.root, check=False)
    assert proc.returncode == 2 and "row limit" in " ".join(proc.stderr.split()), proc.stderr
    proc = cs.run_cli("query", "SELECT sum(a.range * b.range) FROM range(1000000) a, "
                      "range(1000000) b", "--db", store.db, "--timeout", "1s",
                      cwd=store.root, check=False)
    assert proc.returncode == 2 and "timeout" in proc.stderr, proc.stderr
    proc = cs.run_cli("query", "SELECT count(*) AS n FROM read_parquet('lake/trades/**/"
                      "*.parquet')", "--db", store.db, "--lake", "lake", "--format", "json",
                      cwd=store.root)  # a lake folder relative to the working directory
    assert json.loads(proc.stdout) == {"n": 9757}


# -- the live path (a pipeline writes the store and serves the queries) ------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory, cs):
    """A paced replay (about 6 minutes of trade time at 1x) serving queries."""
    root = tmp_path_factory.mktemp("live")
    db, lake = root / "live.duckdb", root / "lake"
    with open(root / "w.out", "w") as out, open(root / "w.err", "w") as err:
        writer = cs.start_cli(*cs.replay_args(db, lake, cs.real.btc_csv, speed="1"), cwd=root,
                              stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not endpoint_file(db).exists() and writer.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert endpoint_file(db).exists(), (root / "w.err").read_text()[-3000:]
        yield db, lake, writer
    finally:
        if writer.poll() is None:
            writer.send_signal(signal.SIGINT)
            try:
                writer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait()


def test_live_path_refuses_everything_but_reading_the_store(live):
    db, lake, writer = live
    _attack_all(db, lake)
    _legit(db)
    assert writer.poll() is None, "the pipeline died while being attacked"
    assert endpoint_file(db).exists()


def test_live_path_limits(live):
    db, _lake, writer = live
    _limits(db)
    assert writer.poll() is None


def test_live_path_allows_read_parquet_under_its_lake_only(live):
    db, lake, _writer = live
    # passes the check (the pipeline's own lake folder); may find no file yet
    try:
        run_query(db, f"SELECT count(*) FROM read_parquet('{lake}/agg_1m/**/*.parquet')")
    except QueryError as exc:
        assert not str(exc).startswith("refused:"), exc
    msg = _refused(db, f"SELECT * FROM read_parquet('{lake.parent}/*.parquet')")
    assert "read_parquet()" in msg and str(lake) in msg


# -- PostgreSQL ---------------------------------------------------------------------------------

def test_postgres_dashboard_reads_are_read_only_and_bounded(pg_dsn):
    import psycopg
    from psycopg import sql

    from cryptostream.dashboard.data import PostgresStore

    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute("CREATE TABLE agg_1m (symbol text, n int)")
        con.execute("INSERT INTO agg_1m SELECT 'BTCUSDT', g FROM generate_series(1, 50) g")
        con.execute("CREATE SEQUENCE s")
    role = f"cs_reader_{uuid.uuid4().hex[:8]}"
    dbname = pg_dsn.rsplit("/", 1)[1]
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        # what docs/architecture.md (decision 17) tells operators to run
        con.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        con.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(dbname), sql.Identifier(role)))
        con.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        con.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(
            sql.Identifier(role)))
        con.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
            sql.Identifier(role)))
    reader_dsn = pg_dsn.replace("postgres@", f"{role}@", 1)
    try:
        # the role itself: reads work, writes are refused by its grants even outside the
        # dashboard (and even after turning the read-only default off)
        with psycopg.connect(reader_dsn, autocommit=True) as con:
            assert con.execute("SELECT count(*) FROM agg_1m").fetchone()[0] == 50
            con.execute("SET default_transaction_read_only = off")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute("INSERT INTO agg_1m VALUES ('X', 1)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute("CREATE TABLE public.x (a int)")

        # the dashboard's store, even on an all-powerful DSN, runs read-only transactions
        for dsn in (pg_dsn, reader_dsn):
            store = PostgresStore(dsn, timeout_s=1.0, max_rows=10)
            try:
                assert store.query("SELECT count(*) AS n FROM agg_1m")["n"].tolist() == [50]
                for write in ("INSERT INTO agg_1m VALUES ('X', 1)",
                              "CREATE TABLE y AS SELECT 1 AS a", "DROP TABLE agg_1m"):
                    with pytest.raises(QueryError, match="refused: .* SELECT statements only"):
                        store.query(write)
                # a SELECT that writes (a sequence) is refused by the read-only transaction
                with pytest.raises(QueryError, match="read-only|permission denied"):
                    store.query("SELECT nextval('s')")
                with pytest.raises(QueryError, match="refused: the result has more than 10 rows"):
                    store.query("SELECT * FROM agg_1m")
                assert len(store.query("SELECT * FROM agg_1m LIMIT 10")) == 10
                with pytest.raises(QueryError, match="refused: the query ran longer than"):
                    store.query("SELECT pg_sleep(5)")
                assert store.query("SELECT 1 AS one")["one"].tolist() == [1]  # still usable
            finally:
                store.close()
        with psycopg.connect(pg_dsn, autocommit=True) as con:
            assert con.execute("SELECT count(*) FROM agg_1m").fetchone()[0] == 50
            assert con.execute("SELECT to_regclass('public.y')").fetchone()[0] is None
            assert con.execute("SELECT nextval('s')").fetchone()[0] == 1  # never advanced
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as con:
            con.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            con.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
