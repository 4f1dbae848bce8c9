"""PostgreSQL sink: the same tables, keys and upsert semantics as the DuckDB store.

Schema, migrations and window tables: see ``sinks.postgres_schema`` (applied by ``open()``).

One ``write`` is ONE transaction on a pooled connection (``psycopg_pool``). Each table's
rows are streamed with a binary ``COPY`` (``sinks.postgres_copy``: encoded straight from the
Arrow columns, no Python object per row) into a per-connection temporary staging table
(``ON COMMIT DELETE ROWS``), then moved with one ``INSERT ... SELECT ... ON CONFLICT``:

* ``trades``: ``DO NOTHING`` on (symbol, trade_id). Fast path first: the batch is copied
  straight into ``trades`` inside a savepoint, which is twice as fast; if any of its trades
  is stored already (a replay, a retried write) the unique violation rolls the savepoint back
  and the staging path inserts only the missing trades;
* window tables: ``DO UPDATE`` on (symbol, window_start), only when the window's data
  changed (latency columns and ``emitted_at`` of a replayed window keep their first value,
  exactly like DuckDB);
* ``rejects`` and ``reference_prices``: ``DO NOTHING``; ``gaps``: ``DO UPDATE SET filled``;
  ``pipeline_stats``: every column is updated.

Reconnects: every write is an idempotent upsert in one transaction, so when the connection
is lost (server restart, ``pg_terminate_backend``, network) the whole write is retried on a
fresh connection, with a backoff of 0.2 s doubling up to 5 s, for up to ``retry_for_s``
seconds: a retried write never doubles a row (even when the lost connection had committed)
and nothing handed to ``write`` is lost. Then ``SinkError`` says what happened and what to
do. Data and schema errors (a value a table refuses, a missing column) are raised at once as
``SinkError``. ``open()`` waits the same way for a server that is down, but not for a DSN
that cannot work (unknown database or user, bad password). DSN passwords never appear in
messages (``redact_dsn``).

The one difference from DuckDB: PostgreSQL text cannot hold the character U+0000, which a
reject's raw payload may contain; it is stored as U+FFFD (as undecodable bytes already are).
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from hashlib import sha1

import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from cryptostream.errors import SinkError
from cryptostream.model import ML_TABLES, WindowSpec
from cryptostream.processing.engine import Output
from cryptostream.sinks import postgres_schema as schema
from cryptostream.sinks.base import (
    Checkpoint,
    gaps_table,
    ml_tables,
    reference_table,
    rejects_table,
    stats_table,
    trades_table,
    windows_table,
)
from cryptostream.sinks.duckdb_sink import _AGG_DATA_COLUMNS  # the same change test
from cryptostream.sinks.postgres_copy import encode_binary_copy

log = logging.getLogger(__name__)

#: connection parameters added when the DSN does not set them: fail fast on a dead host,
#: notice a silently dropped network within ~30 s instead of the kernel's 2 hours
_CONN_DEFAULTS = {
    "connect_timeout": "5", "application_name": "cryptostream", "keepalives": "1",
    "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}
#: server errors worth retrying on a new connection / a new transaction
_TRANSIENT_SQLSTATES = {
    "57P01",  # admin_shutdown (pg_terminate_backend, fast shutdown)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up)
    "53300",  # too_many_connections
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected (two writers upserting the same windows)
}
#: connection failures that waiting will not cure
_PERMANENT_CONNECT = re.compile(
    r"does not exist|authentication failed|no pg_hba\.conf entry|password is required|"
    r"not permitted to log in|invalid (?:connection option|sslmode|integer value|URI)|"
    r"missing \"=\"",
    re.IGNORECASE,
)
_BACKOFF_START_S = 0.2
_BACKOFF_MAX_S = 5.0


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***`` (URL and key=value forms).

    >>> redact_dsn("postgresql://bob:s3cret@db:5432/cs")
    'postgresql://bob:***@db:5432/cs'
    >>> redact_dsn("host=db password='a b' user=bob")
    'host=db password=*** user=bob'
    >>> redact_dsn("postgres://db/cs?user=bob&password=x")
    'postgres://db/cs?user=bob&password=***'
    """
    out = re.sub(r"^(postgres(?:ql)?://[^:@/?#]*):[^@/?#]*@", r"\1:***@", dsn)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", r"\1***", out,
                  flags=re.IGNORECASE)


def _password(dsn: str) -> str | None:
    try:
        return conninfo_to_dict(dsn).get("password")  # type: ignore[return-value]
    except psycopg.Error:
        return None


class PostgresSink:
    """Writes processor output to a PostgreSQL database (see module docstring)."""

    def __init__(self, dsn: str, windows: tuple[WindowSpec, ...], pool_size: int = 2,
                 retry_for_s: float = 60.0):
        self.dsn = dsn
        self.windows = windows
        self.pool_size = max(1, pool_size)
        self.retry_for_s = retry_for_s
        self.where = redact_dsn(dsn)
        self._secret = _password(dsn)
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        self._columns: dict[str, dict[str, str]] = {}
        #: transactions retried after a lost connection (since construction)
        self.retries = 0
        try:
            given = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise SinkError(f"invalid PostgreSQL DSN {self.where}: {self._clean(exc)}") from exc
        self._kwargs = {k: v for k, v in _CONN_DEFAULTS.items() if k not in given}

    # -- lifecycle -------------------------------------------------------------------------

    def open(self) -> None:
        """Connect (waiting up to ``retry_for_s`` for a server that is down), apply the
        migrations, create the window tables, start the pool."""
        if self._pool is not None:
            return
        applied, cols = self._run_with_retry("open", self._prepare)
        if applied:
            log.info("PostgreSQL %s: applied migrations %s", self.where, applied)
        self._columns = {t: dict(c) for t, c in cols.items()}
        pool = ConnectionPool(
            self.dsn, kwargs={**self._kwargs, "autocommit": True}, min_size=1,
            max_size=self.pool_size, open=False, check=ConnectionPool.check_connection,
            reconnect_timeout=2.0, name="cryptostream-postgres",
        )
        try:
            pool.open(wait=True, timeout=max(5.0, min(self.retry_for_s, 30.0)))
        except PoolTimeout as exc:
            raise SinkError(f"PostgreSQL at {self.where} went away while opening the sink "
                            "(the schema is ready); check the server and start again") from exc
        self._pool = pool

    def flush(self) -> None:
        """Nothing to do: every ``write`` commits before it returns (durable in PostgreSQL)."""

    def prune_trades(self, before_us: dict[str, int]) -> int:
        """Delete each symbol's trades older than ``before_us[symbol]`` (retention)."""
        def prune(attempt: _Attempt) -> int:
            pool = self._pool
            if pool is None:
                raise SinkError("PostgresSink closed during prune_trades")
            with pool.connection(timeout=attempt.timeout) as conn, conn.transaction():
                n = 0
                for sym, cutoff in before_us.items():
                    n += conn.execute("DELETE FROM trades WHERE symbol = %s AND "
                                      "trade_time < to_timestamp(%s / 1e6)",
                                      [sym, cutoff]).rowcount
                return n

        return self._run_with_retry("prune_trades", prune)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- writing ---------------------------------------------------------------------------

    def write(self, output: Output, stats: list[dict], now_us: int = 0,
              checkpoints: list[Checkpoint] = ()) -> None:
        """One transaction: the output, the stats and (Kafka ``process``) the checkpoints."""
        if self._pool is None:
            raise SinkError("PostgresSink.write before open()")
        known = {w.table for w in self.windows}
        for table in output.windows:
            if table not in known:
                raise KeyError(table)  # as DuckDBSink: output of another window config
        plan = self._plan(output, stats, now_us)
        if plan or checkpoints:
            self._run_with_retry("write",
                                 lambda attempt: self._write_once(plan, attempt, checkpoints, now_us))

    def load_checkpoint(self, group: str, topic: str, partition: int) -> Checkpoint | None:
        if self._pool is None:
            raise SinkError("PostgresSink.load_checkpoint before open()")

        def load(attempt: _Attempt):
            with self._pool.connection(timeout=attempt.timeout) as conn:
                return conn.execute(
                    'SELECT next_offset, state FROM consumer_checkpoints '
                    'WHERE group_id = %s AND topic = %s AND "partition" = %s',
                    [group, topic, partition]).fetchone()

        row = self._run_with_retry("load_checkpoint", load)
        return None if row is None else Checkpoint(group, topic, partition, row[0],
                                                   None if row[1] is None else bytes(row[1]))

    def _plan(self, output: Output, stats: list[dict], now_us: int) -> list[tuple[str, pa.Table]]:
        plan = [("trades", trades_table(output))]
        plan += [(t, windows_table(rows)) for t, rows in output.windows.items() if rows]
        plan += [("rejects", rejects_table(output, now_us)), ("gaps", gaps_table(output)),
                 ("reference_prices", reference_table(output)), ("pipeline_stats", stats_table(stats))]
        plan += ml_tables(output)
        return [(t, b) for t, b in plan if b is not None and b.num_rows]

    def _write_once(self, plan: list[tuple[str, pa.Table]], attempt: _Attempt,
                    checkpoints: list[Checkpoint] = (), now_us: int = 0) -> None:
        pool = self._pool
        if pool is None:
            raise SinkError("PostgresSink closed during a write")
        with pool.connection(timeout=attempt.timeout) as conn:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    for table, batch in plan:
                        self._copy_upsert(cur, table, batch)
                    for cp in checkpoints:
                        cur.execute(
                            'INSERT INTO consumer_checkpoints VALUES (%s, %s, %s, %s, %s, '
                            'to_timestamp(%s / 1e6)) ON CONFLICT (group_id, topic, "partition") '
                            "DO UPDATE SET next_offset = excluded.next_offset, "
                            "state = excluded.state, updated_at = excluded.updated_at",
                            [cp.group, cp.topic, cp.partition, cp.next_offset, cp.state, now_us])
                    self._before_commit(conn)
            except BaseException:
                attempt.broken = conn.broken  # read before the pool closes it
                raise

    def _before_commit(self, conn: psycopg.Connection) -> None:
        """Hook for tests (kill the connection right before the commit)."""

    def _copy_upsert(self, cur: psycopg.Cursor, table: str, batch: pa.Table) -> None:
        types = self._columns.get(table)
        if types is None:
            raise SinkError(f"table {table} is missing in PostgreSQL at {self.where}; "
                            "reopen the sink to create it")
        cols = batch.column_names
        missing = [c for c in cols if c not in types]
        if missing:
            raise SinkError(f"table {table} in PostgreSQL at {self.where} has no column(s) "
                            f"{missing}; a schema migration is missing")
        target = sql.Identifier(table)
        stage = sql.Identifier(_stage_name(table))
        collist = sql.SQL(", ").join(map(sql.Identifier, cols))
        pgtypes = [types[c] for c in cols]
        if table == "trades":
            # fast path: new trades (the usual case) go straight into the table; when one of
            # them is stored already, the savepoint undoes the COPY and the staging path below
            # inserts only the missing ones
            try:
                with cur.connection.transaction(), cur.copy(
                    sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, collist)
                ) as copy:
                    for chunk in encode_binary_copy(batch, pgtypes):
                        copy.write(chunk)
                return
            except psycopg.errors.UniqueViolation:
                pass
        cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS")
                    .format(stage, target))
        with cur.copy(sql.SQL("COPY pg_temp.{} ({}) FROM STDIN (FORMAT BINARY)")
                      .format(stage, collist)) as copy:
            for chunk in encode_binary_copy(batch, pgtypes):
                copy.write(chunk)
        cur.execute(_upsert_sql(table, cols, stage, collist))

    # -- retries ---------------------------------------------------------------------------

    def _prepare(self, attempt: _Attempt) -> tuple[list[int], dict]:
        """Apply the migrations and read the column catalog, on a connection of its own."""
        conn = psycopg.connect(self.dsn, autocommit=True, **self._kwargs)
        try:
            applied = schema.migrate(conn, self.windows)
            tables = schema.FIXED_TABLES + tuple(w.table for w in self.windows)
            return applied, schema.columns(conn, tables)
        except BaseException:
            attempt.broken = conn.broken
            raise
        finally:
            conn.close()

    def _run_with_retry(self, what: str, fn: Callable[[_Attempt], object]):
        """``fn(attempt)`` until it succeeds, retrying lost connections until the deadline."""
        deadline = time.monotonic() + self.retry_for_s
        delay = _BACKOFF_START_S
        while True:
            attempt = _Attempt(max(0.5, min(deadline - time.monotonic(), 2.0)))
            try:
                return fn(attempt)
            except (psycopg.Error, PoolTimeout) as exc:
                if isinstance(exc, PoolTimeout):  # the pool says only "no connection": ask why
                    cause = self._probe()
                    if cause is None and time.monotonic() < deadline:
                        continue  # the server is there: the pool is busy or still reconnecting
                    exc = cause or exc
                if not self._is_transient(exc, attempt.broken):
                    raise SinkError(self._refused(what, exc)) from exc
                last = exc
            now = time.monotonic()
            if now >= deadline or (what == "write" and self._pool is None):
                raise SinkError(self._gave_up(what, last)) from last
            log.warning("PostgreSQL %s: %s failed (%s); retrying in %.1fs", self.where, what,
                        self._clean(last), delay)
            if what == "write":
                self.retries += 1
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, _BACKOFF_MAX_S)

    def _probe(self) -> psycopg.Error | None:
        """The reason a direct connection fails now (None when it works)."""
        try:
            psycopg.connect(self.dsn, autocommit=True, **self._kwargs).close()
        except psycopg.Error as exc:
            return exc
        return None

    @staticmethod
    def _is_transient(exc: BaseException, broken: bool) -> bool:
        """A lost or refused connection (retry) rather than a refused statement (raise)."""
        if broken or isinstance(exc, PoolTimeout):
            return True
        state = getattr(exc, "sqlstate", None)
        if state:
            return state.startswith("08") or state in _TRANSIENT_SQLSTATES
        if isinstance(exc, psycopg.OperationalError):  # client side: refused, lost, timed out
            return not _PERMANENT_CONNECT.search(str(exc))
        return False

    def _clean(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if self._secret and len(self._secret) >= 3:
            text = text.replace(self._secret, "***")
        return text

    def _refused(self, what: str, exc: BaseException) -> str:
        state = getattr(exc, "sqlstate", None)
        if what == "open" and state:
            return (f"cannot prepare the PostgreSQL store at {self.where} ({type(exc).__name__}"
                    f" {state}): {self._clean(exc)}. Check that the user may create tables in "
                    "the database (or apply the migrations as its owner once).")
        if what == "open":
            return (f"cannot connect to PostgreSQL at {self.where}: {self._clean(exc)}. "
                    "Fix the DSN (host, port, user, password, database; create the database "
                    "with `createdb` if it is missing).")
        return (f"PostgreSQL at {self.where} refused the write ({type(exc).__name__}"
                f"{' ' + state if state else ''}): {self._clean(exc)}. This is a data or "
                "schema error, not a lost connection, so it is not retried; nothing of this "
                "write was stored.")

    def _gave_up(self, what: str, exc: BaseException) -> str:
        if what == "open":
            return (f"cannot reach PostgreSQL at {self.where} (tried for "
                    f"{self.retry_for_s:g}s): {self._clean(exc)}. Start the server (here: "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)"
                    " or fix host/port in the DSN.")
        return (f"lost the connection to PostgreSQL at {self.where} and could not write for "
                f"{self.retry_for_s:g}s ({self.retries} retries): {self._clean(exc)}. Nothing "
                "of this write was stored; source offsets are committed only after a "
                "successful write, so restart the pipeline once the server is back and it "
                "resumes where it stopped (rows already stored are not doubled).")


class _Attempt:
    """One try of a retried operation: how long it may wait for a pooled connection, and
    whether its connection broke (a lost connection, as opposed to a refused statement)."""

    __slots__ = ("broken", "timeout")

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.broken = False


def _stage_name(table: str) -> str:
    name = "cs_stage_" + table
    return name if len(name) <= 63 else "cs_stage_" + sha1(table.encode()).hexdigest()[:20]


def _upsert_sql(table: str, cols: list[str], stage: sql.Identifier,
                collist: sql.Composable) -> sql.Composed:
    t = sql.Identifier(table)
    if table in ("trades", "rejects", "reference_prices"):
        key = {"trades": ("symbol", "trade_id"), "rejects": ("source", "source_offset"),
               "reference_prices": ("asset", "symbol", "last_updated_at")}[table]
        return sql.SQL("INSERT INTO {} ({}) SELECT {} FROM pg_temp.{} ON CONFLICT ({}) DO NOTHING"
                       ).format(t, collist, collist, stage, _ids(key))
    if table == "gaps":
        key, update, change = ("symbol", "from_id"), ["filled"], ()
    elif table == "pipeline_stats":
        key, change = ("run_id", "symbol"), ()
        update = [c for c in cols if c not in key]
    elif table in ML_TABLES:
        key, change = ML_TABLES[table][1], ()
        update = [c for c in cols if c not in key]
    else:  # a window table
        key, change = ("symbol", "window_start"), _AGG_DATA_COLUMNS
        update = [c for c in cols if c not in key]
    sets = sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                              for c in update)
    where = sql.SQL("")
    if change:
        where = sql.SQL(" WHERE ") + sql.SQL(" OR ").join(
            sql.SQL("{}.{} IS DISTINCT FROM EXCLUDED.{}").format(t, sql.Identifier(c), sql.Identifier(c))
            for c in change)
    # DISTINCT ON: a key twice in one batch keeps its first row (as DuckDB does) instead of
    # failing with "ON CONFLICT DO UPDATE command cannot affect row a second time"
    return sql.SQL(
        "INSERT INTO {t} ({cols}) SELECT DISTINCT ON ({key}) {cols} FROM pg_temp.{stage} "
        "ORDER BY {key}, ctid ON CONFLICT ({key}) DO UPDATE SET {sets}{where}"
    ).format(t=t, cols=collist, key=_ids(key), stage=stage, sets=sets, where=where)


def _ids(names) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, names))
