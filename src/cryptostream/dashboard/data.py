"""Read the store for the dashboard: one class per store, incremental table reads.

``DuckDBStore`` goes through :func:`cryptostream.query.run_query` (the writing pipeline's
loopback endpoint while it runs, else a read-only open of the file with external access
disabled: the dashboard never opens the file for writing and never keeps it open).
``PostgresStore`` keeps one psycopg connection whose every query runs in a read-only
transaction (``default_transaction_read_only`` and ``SET TRANSACTION READ ONLY``) under a
``statement_timeout``; give it the DSN of a role that only has SELECT grants
(docs/architecture.md, decision 17). Both refuse a result above ``max_rows`` rows and a
statement running longer than ``timeout_s`` (``QueryError``). Both take SQL with ``?``
parameters (never values pasted into SQL; the only identifiers used are the fixed table
names below) and return pandas DataFrames whose times are UTC.

:func:`load_incremental` keeps one frame per table in a cache mapping (Streamlit's
``session_state`` in the app, a plain dict in the benchmark). The first read of a selection
(symbols, range start) loads it whole; later reads fetch only rows whose change column
(``emitted_at``, ``scored_at``, ...) is after the highest value already seen, merge
them by the table's key and drop rows that fell out of the range.
"""

from __future__ import annotations

import abc
import contextlib
import datetime
import re
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from cryptostream.errors import CryptoStreamError, QueryError


class StoreUnavailable(CryptoStreamError):
    """The store cannot be read right now (file missing, server down); the message says why."""


@dataclass(frozen=True)
class TableSpec:
    """How to read one table incrementally."""

    name: str
    key: tuple[str, ...]  # rows with the same key replace each other
    changed: str  # grows whenever a row is (re)written
    time: str  # event time the range filters on
    columns: tuple[str, ...] | None = None  # None: every column


AGG_1M = TableSpec("agg_1m", ("symbol", "window_start"), "emitted_at", "window_start")
AGG_5M = TableSpec("agg_5m_1m", ("symbol", "window_start"), "emitted_at", "window_start")
PREDICTIONS = TableSpec("predictions", ("symbol", "target_window_start", "model", "target"),
                        "made_at", "target_window_start")
PREDICTION_ERRORS = TableSpec("prediction_errors",
                              ("symbol", "target_window_start", "model", "target"),
                              "scored_at", "target_window_start")
ANOMALIES = TableSpec("anomalies", ("symbol", "window_start", "detector"), "scored_at",
                      "window_start")
TRADES = TableSpec("trades", ("symbol", "trade_id"), "processed_at", "trade_time")
REJECTS = TableSpec("rejects", ("source", "source_offset"), "rejected_at", "rejected_at",
                    ("source", "source_offset", "symbol", "reason", "detail", "raw", "trade_id",
                     "trade_time", "recv_time", "rejected_at"))

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
#: the dashboard's statement timeout and row limit (a week of 1-minute windows for 10
#: symbols is ~100 000 rows: the limit leaves room for 20 times that)
DASHBOARD_TIMEOUT_S = 30.0
DASHBOARD_MAX_ROWS = 2_000_000


def _ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a table or column name: {name!r}")
    return name


def iso(ts: pd.Timestamp | None) -> str | None:
    """A UTC timestamp as the ISO text both stores cast with ``CAST(? AS TIMESTAMPTZ)``."""
    return None if ts is None else pd.Timestamp(ts).tz_convert("UTC").isoformat()


def _to_utc(df: pd.DataFrame) -> pd.DataFrame:
    """Every time column as UTC (DuckDB labels them with the session's zone; psycopg may
    hand over a column of datetimes as plain objects)."""
    for col in df.columns:
        dtype = df[col].dtype
        if isinstance(dtype, pd.DatetimeTZDtype):
            if str(dtype.tz) not in ("UTC", "Etc/UTC"):
                df[col] = df[col].dt.tz_convert("UTC")
        elif dtype == object:
            first = df[col].dropna()
            if len(first) and isinstance(first.iloc[0], datetime.datetime):
                df[col] = pd.to_datetime(df[col], utc=True)
    return df


class Store(abc.ABC):
    """What the dashboard needs from a store; subclasses implement ``_query``."""

    kind = "store"

    @abc.abstractmethod
    def describe(self) -> str: ...

    def query(self, sql: str, params: Sequence = ()) -> pd.DataFrame:
        """Run read-only ``sql`` (``?`` parameters) and return a DataFrame (UTC times)."""
        return _to_utc(self._query(sql, list(params)))

    @abc.abstractmethod
    def _query(self, sql: str, params: list) -> pd.DataFrame: ...

    def tables(self) -> set[str]:
        """Names of the tables present (empty when the store does not exist yet)."""
        df = self.query("SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = current_schema()")
        return set(df["table_name"])

    def writer_running(self) -> bool | None:
        """True/False when the store can tell whether a pipeline is writing it, else None."""
        return None

    def missing(self) -> str | None:
        """Why the store does not exist yet, or None when it does."""
        return None

    def identity(self) -> object:
        """Changes when the store is replaced (cached rows then no longer apply)."""
        return None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Queries inside share what can be shared (one refresh)."""
        yield

    def close(self) -> None:
        pass


class DuckDBStore(Store):
    """A DuckDB file, read through ``run_query`` (see module docstring)."""

    kind = "duckdb"

    def __init__(self, path: str | Path, timeout_s: float = DASHBOARD_TIMEOUT_S,
                 max_rows: int = DASHBOARD_MAX_ROWS):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.max_rows = max_rows
        self._con = None  # read-only connection of the current session (no writer running)

    def describe(self) -> str:
        return f"DuckDB {self.path}"

    def tables(self) -> set[str]:
        from cryptostream.query import _live_endpoint

        if not self.path.exists() and _live_endpoint(self.path) is None:
            return set()
        return super().tables()

    def writer_running(self) -> bool:
        from cryptostream.query import _live_endpoint

        return _live_endpoint(self.path) is not None

    def identity(self) -> object:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def missing(self) -> str | None:
        if self.path.exists() or self.writer_running():
            return None
        return f"{self.path} does not exist yet."

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """When no pipeline serves the file, one read-only connection serves every query of
        the session (opening the file costs ~20 ms); it is closed at the end, so a pipeline
        can take the file between refreshes. While a pipeline runs, each query goes to its
        endpoint."""
        import duckdb

        from cryptostream.query import open_read_only

        if self._con is not None or self.writer_running() or not self.path.exists():
            yield
            return
        try:
            self._con = open_read_only(self.path)
        except duckdb.Error:  # locked, or a writer is starting: query by query instead
            yield
            return
        try:
            yield
        finally:
            con, self._con = self._con, None
            con.close()

    def _query(self, sql: str, params: list) -> pd.DataFrame:
        from cryptostream.query import _execute, run_query

        if self._con is not None:
            return _execute(self._con, sql, params, self.timeout_s, self.max_rows).to_pandas()
        try:
            table = run_query(self.path, sql, params, timeout_s=self.timeout_s, lock_wait_s=5.0,
                              max_rows=self.max_rows)
        except QueryError as exc:
            if not self.path.exists():
                raise StoreUnavailable(
                    f"{self.path} does not exist yet; start the pipeline "
                    f"(`cryptostream run --db {self.path}`) and this page fills by itself"
                ) from exc
            raise
        return table.to_pandas()


class PostgresStore(Store):
    """A PostgreSQL store (the tables of ``sinks.postgres_schema``), one connection whose
    queries run in read-only transactions (see the module docstring)."""

    kind = "postgres"

    def __init__(self, dsn: str, timeout_s: float = DASHBOARD_TIMEOUT_S,
                 max_rows: int = DASHBOARD_MAX_ROWS):
        self.dsn = dsn
        self.timeout_s = timeout_s
        self.max_rows = max_rows
        self._conn = None

    def describe(self) -> str:
        u = urlsplit(self.dsn)
        host = u.hostname or "localhost"
        return f"PostgreSQL {host}:{u.port or 5432}{u.path or ''}"

    def _connect(self):
        import psycopg

        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot connect to {self.describe()} ({' '.join(str(exc).split())[:300]}); "
                "check that the server runs and the DSN given with --postgres"
            ) from exc
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute("SET default_transaction_read_only = on")
        conn.execute(f"SET statement_timeout = {max(1, round(self.timeout_s * 1000))}")
        return conn

    def _query(self, sql: str, params: list) -> pd.DataFrame:
        import psycopg

        pg_sql = sql.replace("%", "%%").replace("?", "%s")
        for attempt in (0, 1):
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            try:
                # a read-only transaction (whatever the session says) and a server-side
                # cursor, so that at most max_rows + 1 rows ever leave the server
                with self._conn.transaction(force_rollback=True):
                    self._conn.execute("SET TRANSACTION READ ONLY")
                    with self._conn.cursor(name="cryptostream_dashboard") as cur:
                        cur.execute(pg_sql, params)
                        cols = [d.name for d in cur.description or ()]
                        limit = self.max_rows + 1 if self.max_rows else None
                        rows = (cur.fetchmany(limit) if limit else cur.fetchall()) \
                            if cur.description else []
                if self.max_rows and len(rows) > self.max_rows:
                    raise QueryError(
                        f"refused: the result has more than {self.max_rows:,} rows (the row "
                        "limit of the dashboard's reads); narrow the time range or symbols")
                return pd.DataFrame.from_records(rows, columns=cols)
            except psycopg.errors.QueryCanceled as exc:  # statement_timeout
                raise QueryError(
                    f"refused: the query ran longer than the {self.timeout_s:g} s statement "
                    "timeout and was stopped; narrow the time range or symbols") from exc
            except psycopg.OperationalError as exc:  # connection lost: reconnect once
                self.close()
                if attempt:
                    raise StoreUnavailable(
                        f"lost the connection to {self.describe()}: {exc}") from exc
            except psycopg.errors.SyntaxError as exc:
                first = (pg_sql.split(None, 1) or [""])[0].upper()
                if first not in ("SELECT", "WITH", "VALUES", "TABLE", "("):
                    raise QueryError("refused: the dashboard's PostgreSQL reads run SELECT "
                                     "statements only (through a read-only cursor)") from exc
                raise QueryError(" ".join(str(exc).split())[:500]) from exc
            except psycopg.errors.ReadOnlySqlTransaction as exc:
                raise QueryError("refused: the dashboard's PostgreSQL connection is read-only ("
                                 + " ".join(str(exc).split())[:300] + ")") from exc
            except psycopg.Error as exc:
                raise QueryError(" ".join(str(exc).split())[:500]) from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def open_store(db: str | Path | None = None, postgres: str | None = None) -> Store:
    if postgres:
        return PostgresStore(postgres)
    return DuckDBStore(db or Path("data/cryptostream.duckdb"))


# -- incremental reads -------------------------------------------------------------------------

@dataclass
class Cached:
    """One table's rows for one selection, and the highest change value seen."""

    symbols: tuple[str, ...]
    start: pd.Timestamp | None
    df: pd.DataFrame
    high: pd.Timestamp | None


@dataclass
class LoadStats:
    """What one refresh read: rows fetched per table, full or incremental, seconds."""

    rows: dict[str, int] = field(default_factory=dict)
    full: dict[str, bool] = field(default_factory=dict)
    queries: int = 0
    seconds: float = 0.0

    def note(self, table: str, rows: int, full: bool) -> None:
        self.rows[table] = self.rows.get(table, 0) + rows
        self.full[table] = full
        self.queries += 1


def _select(spec: TableSpec) -> str:
    cols = ", ".join(f'"{_ident(c)}"' for c in spec.columns) if spec.columns else "*"
    return f"SELECT {cols} FROM {_ident(spec.name)}"


def load_incremental(store: Store, cache: MutableMapping, spec: TableSpec,
                     symbols: Sequence[str], start: pd.Timestamp | None,
                     stats: LoadStats | None = None, overlap_s: float = 0.0,
                     equal: dict[str, object] | None = None) -> pd.DataFrame:
    """The rows of ``spec.name`` for ``symbols`` with ``spec.time >= start`` (all when
    ``start`` is None), reading only what changed since the last call for the same symbols.
    Rows come ordered by ``spec.time``, then the rest of the key.

    ``overlap_s`` re-reads rows written up to that long before the highest change value
    seen (several writers whose commits may land out of order: PostgreSQL with Kafka
    replicas). ``equal`` adds ``column = value`` conditions (part of the selection)."""
    syms = tuple(symbols)
    equal = equal or {}
    slot = f"table:{spec.name}:" + ",".join(f"{k}={v}" for k, v in sorted(equal.items()))
    cached: Cached | None = cache.get(slot)
    reuse = (cached is not None and cached.symbols == syms
             and (cached.start is None or (start is not None and cached.start <= start)))
    where = ["symbol = ANY(?)"]
    params: list = [list(syms)]
    for col, value in sorted(equal.items()):
        where.append(f"{_ident(col)} = ?")
        params.append(value)
    if start is not None:
        where.append(f"{_ident(spec.time)} >= CAST(? AS TIMESTAMPTZ)")
        params.append(iso(start))
    if reuse and cached.high is not None:
        where.append(changed_since(spec.changed, overlap_s))
        params.append(iso(cached.high - pd.Timedelta(seconds=overlap_s)))
    new = store.query(f"{_select(spec)} WHERE {' AND '.join(where)}", params)
    if stats is not None:
        stats.note(spec.name, len(new), not reuse)
    order = [spec.time, *(k for k in spec.key if k != spec.time)]
    if reuse and len(cached.df):
        df = _merge(cached.df, new, spec, order) if len(new) else cached.df
        if start is not None and cached.start != start:  # sorted by time: cut, no filter
            df = df.iloc[int(df[spec.time].searchsorted(start, side="left")):]
    else:
        df = new.sort_values(order, ignore_index=True) if len(new) else new
    high = df[spec.changed].max() if len(df) else None
    cache[slot] = Cached(syms, start, df, None if high is None or pd.isna(high) else high)
    return df


def changed_since(column: str, overlap_s: float) -> str:
    """The condition "written after the highest value seen" (one ``?``: that value minus the
    overlap). With one writer (DuckDB) every row with the same change time is committed in
    the same transaction, so ``>`` misses nothing; with several writers whose commits can
    land out of order, ``>=`` over the overlap re-reads (and merges) the rows near it."""
    return f"{_ident(column)} {'>' if overlap_s == 0 else '>='} CAST(? AS TIMESTAMPTZ)"


def _merge(old: pd.DataFrame, new: pd.DataFrame, spec: TableSpec, order: list[str]) -> pd.DataFrame:
    """``old`` with the rows of ``new`` added, or replacing the rows with the same key."""
    key = list(spec.key)
    new = new.drop_duplicates(key, keep="last")
    first = new[spec.time].min()
    # only rows at or after the earliest time in ``new`` can share a key with it
    cut = int(old[spec.time].searchsorted(first, side="left"))
    head, tail = old.iloc[:cut], old.iloc[cut:]
    if len(tail):
        same = pd.MultiIndex.from_frame(tail[key]).isin(pd.MultiIndex.from_frame(new[key]))
        tail = tail[~same]
    rest = pd.concat([tail, new], ignore_index=True) if len(tail) else new
    rest = rest.sort_values(order, ignore_index=True, kind="stable")
    return pd.concat([head, rest], ignore_index=True) if len(head) else rest
