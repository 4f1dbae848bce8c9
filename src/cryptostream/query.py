"""Read-only SQL over the store, also while a pipeline is writing it, and nothing else.

DuckDB lets one process write a database file, and while it does no other process may open
it. So the writing pipeline serves reads: ``QueryServer`` listens on 127.0.0.1 (random
port), announces itself in ``<db>.query.json`` (mode 0600, with a random token), and answers
``POST /query`` with an Arrow IPC stream, running each statement on its own cursor of the
writer's database (MVCC snapshot: readers never see half a flush, never block the writer).
``run_query`` uses that endpoint when a live pipeline announced one, and otherwise opens the
file read-only itself.

What a query may do (docs/architecture.md, decision 17), on both paths:

* only read statements: SELECT (DESCRIBE, SHOW, SUMMARIZE, VALUES), EXPLAIN of one, and a
  few read-only PRAGMAs, run in a transaction that is rolled back;
* nothing outside the store: no table function that reads files, URLs or other databases
  (``read_csv``, ``read_text``, ``glob``, ``query``...), no ``FROM 'file.csv'``, no ATTACH,
  COPY, INSTALL/LOAD, SET, nor a function DuckDB would load an extension for. The Parquet
  lake stays readable with ``read_parquet`` / ``parquet_scan`` under the configured lake
  folder only. Checked on DuckDB's own parse tree (``extract_statements`` for the statement
  types, ``json_serialize_sql`` for every table reference and function call), and, when
  the file is opened read-only (no writer), also enforced by DuckDB itself
  (``enable_external_access = false``, ``allowed_directories = [lake]``, extension
  autoloading off, configuration locked);
* a statement timeout (``timeout_s``, default 30 s: the connection is interrupted from a
  timer) and a row limit (``max_rows``, default 100 000: at most ``max_rows + 1`` rows are
  fetched and a bigger result is refused, never silently cut).

Every refusal raises ``QueryError`` with a message that starts with "refused:" and says
what to do instead.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pyarrow as pa

from cryptostream.errors import QueryError

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_ROWS = 100_000
MAX_SQL_BYTES = 1 << 20
#: extra seconds the HTTP client waits past the statement timeout the server enforces
_HTTP_GRACE_S = 15.0
_ROWS_PER_BATCH = 8192

_READ_TYPES = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_READ_PRAGMAS = ("show", "describe", "table_info", "database_size", "storage_info", "version")

#: table functions that read nothing but the store's catalog or their own arguments
SAFE_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree",
    "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_dependencies",
    "duckdb_functions", "duckdb_indexes", "duckdb_keywords", "duckdb_schemas",
    "duckdb_sequences", "duckdb_tables", "duckdb_types", "duckdb_views",
    "pragma_table_info", "pragma_storage_info", "pragma_database_size", "pragma_version",
    "pragma_show", "pragma_metadata_info", "pragma_platform", "pragma_collations",
    "pragma_database_list", "show_databases", "show_tables", "show_tables_expanded",
    "duckdb_settings", "duckdb_extensions", "duckdb_memory", "duckdb_optimizers",
    "pg_timezone_names", "icu_calendar_names", "summary",
})
#: table functions that read Parquet files: allowed on paths under the lake folder only
LAKE_TABLE_FUNCTIONS = frozenset({
    "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema",
    "parquet_file_metadata", "parquet_kv_metadata",
})
#: scalar functions refused even though DuckDB knows them (environment, sequences)
_DENIED_FUNCTIONS = frozenset({"getenv", "nextval", "setval", "currval"})
#: functions that read files or run SQL text, refused wherever they appear outside FROM
_FILE_FUNCTIONS = frozenset({"glob", "sniff_csv", "query", "query_table",
                             "json_execute_serialized_sql", "parquet_bloom_probe"})


def _reads_files(name: str) -> bool:
    return (name in _FILE_FUNCTIONS or name in LAKE_TABLE_FUNCTIONS
            or name.startswith("read_") or name.endswith("_scan"))
#: a table name that is a path or URL (DuckDB would scan the file: FROM '/etc/passwd')
_PATHLIKE = re.compile(r"[/\\:~*?]|\.[A-Za-z0-9]+$")
_EXPLAIN = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?(?:\([^)]*\)\s*)?", re.IGNORECASE)

_TYPE_HINTS = {
    "COPY": "COPY is refused: queries cannot write or read files. To export a result, use "
            "`cryptostream query ... --format csv|json` and redirect the output",
    "ATTACH": "ATTACH is refused: queries run on the store only, not on other databases or "
              "files",
    "DETACH": "DETACH is refused: queries run on the store only",
    "LOAD": "INSTALL/LOAD is refused: queries cannot install or load DuckDB extensions",
    "EXTENSION": "INSTALL/LOAD is refused: queries cannot install or load DuckDB extensions",
    "SET": "SET is refused: a query cannot change the session (read-only, external access "
           "off, timeout, row limit); use --timeout / --max-rows of `cryptostream query`",
    "VARIABLE_SET": "SET is refused: a query cannot change the session (read-only, external "
                    "access off, timeout, row limit); use --timeout / --max-rows",
    "EXPORT": "EXPORT DATABASE is refused: queries cannot write files",
    "CALL": "CALL is refused: only SELECT, DESCRIBE, SHOW, EXPLAIN and read-only PRAGMAs "
            "run (a read-only connection)",
}


def endpoint_file(db: Path) -> Path:
    return db.with_name(db.name + ".query.json")


def _lake_root(lake: str | Path | None) -> str | None:
    return None if lake is None else os.path.realpath(os.path.abspath(os.fspath(lake)))


# -- the check ------------------------------------------------------------------------------

_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _serialize(sql: str) -> dict:
    """DuckDB's parse tree of one SELECT statement (``json_serialize_sql``), from a private
    in-memory database that can read nothing (parsing binds nothing: no table is needed)."""
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:", config={
                "enable_external_access": False, "autoload_known_extensions": False,
                "autoinstall_known_extensions": False})
        try:
            text = _parser.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()[0]
        except duckdb.Error as exc:
            raise QueryError(f"cannot parse the query: {str(exc).splitlines()[0]}") from exc
    try:
        tree = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise QueryError("refused: the query is nested too deeply to be checked") from exc
    if not isinstance(tree, dict) or tree.get("error"):
        msg = tree.get("error_message", "") if isinstance(tree, dict) else ""
        raise QueryError(f"refused: this statement cannot be checked ({msg}); only plain "
                         "SELECT, DESCRIBE, SHOW and EXPLAIN statements are run")
    return tree


@dataclass
class _Found:
    tables: list[tuple[str, ...]] = field(default_factory=list)
    table_functions: list[dict] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)  # called in expressions


def _walk(tree: object) -> _Found:
    """Every table reference, table function call and function call in a parse tree."""
    found = _Found()
    called_in_from: set[int] = set()  # the FUNCTION nodes of TABLE_FUNCTION references
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            kind = node.get("type")
            if kind == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
                found.table_functions.append(node["function"])
                called_in_from.add(id(node["function"]))
            elif kind in ("BASE_TABLE", "SHOW_REF"):
                found.tables.append(tuple(str(node.get(k) or "") for k in (
                    "table_name", "schema_name", "catalog_name")))
            if node.get("class") == "FUNCTION" and isinstance(node.get("function_name"), str) \
                    and id(node) not in called_in_from:
                found.functions.append(node["function_name"].lower())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _args(fn: dict) -> list[dict]:
    """The positional argument expressions of a FUNCTION node (DuckDB 2.x lists them under
    ``arguments`` with a ``name``; 1.x under ``children``)."""
    if isinstance(fn.get("arguments"), list):
        return [a.get("expression") or {} for a in fn["arguments"]
                if isinstance(a, dict) and not a.get("name")]
    return [c for c in fn.get("children") or [] if isinstance(c, dict)]


def _string_constant(node: dict) -> str | None:
    if node.get("class") != "CONSTANT":
        return None
    literal = node.get("literal")
    if isinstance(literal, dict):  # DuckDB 2.x
        return literal.get("text") if literal.get("kind") == "STRING" else None
    value = node.get("value") or {}  # DuckDB 1.x
    return None if value.get("is_null") or not isinstance(value.get("value"), str) \
        else value["value"]


def _constant_paths(fn: dict) -> list[str] | None:
    """The file paths a ``read_parquet(...)``-style call names, when they are constants."""
    args = _args(fn)
    if not args:
        return None
    first = args[0]
    values = [first]
    if first.get("class") == "FUNCTION" and str(first.get("function_name")).lower() in (
            "list_value", "array_value"):
        values = _args(first)
    paths = [_string_constant(v) for v in values]
    return None if not paths or None in paths else paths


def _under(path: str, root: str) -> bool:
    """``path`` (maybe with glob characters) lies inside the folder ``root``."""
    if "://" in path or path.startswith("~"):
        return False
    fixed = re.split(r"[*?\[{]", path, maxsplit=1)[0]  # the part before any glob character
    real = os.path.realpath(os.path.abspath(fixed or "."))
    if not (real == root or real.startswith(root.rstrip(os.sep) + os.sep)):
        return False
    return ".." not in Path(path).parts


def _check_select(sql: str, lake: str | None, functions: frozenset[str] | None) -> None:
    found = _walk(_serialize(sql))
    for name, schema, catalog in found.tables:
        for part in (name, schema, catalog):
            if part and _PATHLIKE.search(part):
                raise QueryError(
                    f"refused: {part!r} names a file or URL, not a table; queries read the "
                    "store's tables (see `SHOW TABLES`)"
                    + (" and the lake with read_parquet('<lake>/...')" if lake else ""))
    for fn in found.table_functions:
        name = str(fn.get("function_name", "")).lower()
        if name in SAFE_TABLE_FUNCTIONS:
            continue
        if name in LAKE_TABLE_FUNCTIONS and lake is not None:
            paths = _constant_paths(fn)
            if paths and all(_under(p, lake) for p in paths):
                continue
            raise QueryError(
                f"refused: {name}() may only read the Parquet lake ({lake}), named by "
                "constant paths under it, e.g. "
                f"read_parquet('{lake}/agg_1m/**/*.parquet', hive_partitioning = true)")
        where = (f"; the Parquet lake is readable with read_parquet('{lake}/...')" if lake
                 else "")
        raise QueryError(
            f"refused: table function {name}() is not allowed: queries read the store's "
            f"tables only, never files, URLs, other databases or SQL text{where}")
    for name in found.functions:
        if name in _DENIED_FUNCTIONS:
            raise QueryError(f"refused: {name}() is not allowed in a read-only query")
        if _reads_files(name):
            raise QueryError(f"refused: {name}() reads files or SQL text; queries read the "
                             "store's tables only")
        if functions is not None and name not in functions:
            raise QueryError(
                f"refused: unknown function {name}(): queries cannot load DuckDB "
                "extensions (check the name with `SELECT * FROM duckdb_functions()`)")


def _statements(sql: str) -> list[duckdb.Statement]:
    try:
        return duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"cannot parse the query: {str(exc).splitlines()[0]}") from exc
    except ValueError as exc:  # a statement type this Python client does not know
        raise QueryError(f"refused: unsupported statement ({exc}); only SELECT, DESCRIBE, "
                         "SHOW and EXPLAIN run (a read-only connection)") from exc


@lru_cache(maxsize=512)
def _check_cached(sql: str, lake: str | None,
                  functions: frozenset[str] | None) -> tuple[duckdb.Statement, ...]:
    statements = _statements(sql)
    if not statements:
        raise QueryError("empty query")
    for st in statements:
        _check_statement(st, lake, functions)
    return tuple(statements)


def _kind(st: duckdb.Statement):
    try:
        return st.type
    except ValueError:
        return None


def _check_statement(st: duckdb.Statement, lake: str | None,
                     functions: frozenset[str] | None) -> None:
    try:
        kind = st.type
    except ValueError as exc:  # a statement type this Python client does not know
        raise QueryError(f"refused: unsupported statement ({exc}); only SELECT, DESCRIBE, "
                         "SHOW and EXPLAIN run (a read-only connection)") from exc
    if kind == duckdb.StatementType.SELECT:
        _check_select(st.query, lake, functions)
        return
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement: check that one like any other
        m = _EXPLAIN.match(st.query)
        inner = _statements(st.query[m.end():]) if m else []
        if len(inner) != 1 or _kind(inner[0]) != duckdb.StatementType.SELECT:
            raise QueryError("refused: only EXPLAIN of a SELECT statement is allowed "
                             "(a read-only connection)")
        _check_select(inner[0].query, lake, functions)
        return
    if kind == duckdb.StatementType.PRAGMA and st.query.strip().lower().removeprefix(
            "pragma").strip().startswith(_READ_PRAGMAS):
        return
    hint = _TYPE_HINTS.get(kind.name)
    if hint is not None:
        raise QueryError(f"refused: {hint}")
    raise QueryError(
        "refused: only read-only statements are allowed (SELECT, DESCRIBE, SHOW, EXPLAIN); "
        f"got {kind.name}"
    )


def check_read_only(sql: str, lake: str | Path | None = None,
                    functions: frozenset[str] | None = None) -> list[duckdb.Statement]:
    """The statements of ``sql``; raises ``QueryError`` unless every one only reads the
    store (see the module docstring). ``lake``: the folder ``read_parquet`` may read;
    ``functions``: the function names the database knows (others are refused, since DuckDB
    would try to load an extension for them), None to leave that to DuckDB.

    >>> len(check_read_only("SELECT 1; DESCRIBE agg_1m"))
    2
    >>> check_read_only("DROP TABLE trades")
    Traceback (most recent call last):
    ...
    cryptostream.errors.QueryError: refused: only read-only statements are allowed (SELECT, DESCRIBE, SHOW, EXPLAIN); got DROP
    >>> check_read_only("SELECT * FROM read_csv('/etc/passwd')")
    Traceback (most recent call last):
    ...
    cryptostream.errors.QueryError: refused: table function read_csv() is not allowed: queries read the store's tables only, never files, URLs, other databases or SQL text
    """
    return list(_check_cached(sql, _lake_root(lake), functions))


# -- running ----------------------------------------------------------------------------------

def known_functions(con: duckdb.DuckDBPyConnection) -> frozenset[str]:
    """Names of the functions (and macros) ``con``'s database has loaded."""
    rows = con.execute("SELECT DISTINCT lower(function_name) FROM duckdb_functions()").fetchall()
    return frozenset(r[0] for r in rows)


def _read_only_settings(lake: str | Path | None) -> list[str]:
    """The statements that make a fresh connection read nothing but the store (and the lake
    folder), then lock its configuration. ``allowed_directories`` can only be set once the
    database runs, and before external access is disabled."""
    root = _lake_root(lake)
    sets = []
    if root is not None:
        folder = (root.rstrip(os.sep) + os.sep).replace("'", "''")
        sets.append(f"SET allowed_directories = ['{folder}']")
    sets += ["SET python_enable_replacements = false", "SET enable_external_access = false",
             "SET lock_configuration = true"]
    return sets


def open_read_only(db: str | Path, lake: str | Path | None = None) -> duckdb.DuckDBPyConnection:
    """The store opened read-only, external access disabled (only ``lake`` readable, by
    ``read_parquet``), extension autoloading off, the configuration locked."""
    con = duckdb.connect(str(db), read_only=True, config={
        "autoload_known_extensions": False, "autoinstall_known_extensions": False})
    try:
        for stmt in _read_only_settings(lake):
            con.execute(stmt)
    except duckdb.Error:
        # this process already has the file open (the same database instance), locked
        ok = con.execute("SELECT current_setting('enable_external_access') = false AND "
                         "current_setting('lock_configuration')").fetchone()[0]
        if not ok:
            con.close()
            raise
    return con


def _execute(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None,
             timeout_s: float | None = DEFAULT_TIMEOUT_S, max_rows: int = DEFAULT_MAX_ROWS,
             lake: str | Path | None = None,
             functions: frozenset[str] | None = None) -> pa.Table:
    """Check ``sql``, run it in a rolled-back transaction on ``con`` under the statement
    timeout (``timeout_s``; None or 0: none) and the row limit (``max_rows``; 0: none)."""
    statements = check_read_only(sql, lake, functions)
    done = threading.Lock()  # held by the timer while it interrupts, and by the end of the run
    state = {"finished": False, "fired": False}

    def interrupt() -> None:
        with done:
            if not state["finished"]:
                state["fired"] = True
                con.interrupt()

    timer = threading.Timer(timeout_s, interrupt) if timeout_s else None
    con.execute("BEGIN TRANSACTION")
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            for st in statements[:-1]:
                con.execute(st)
            # a relation streams: at most max_rows + 1 rows are ever produced and fetched
            rel = con.sql(statements[-1].query, params=params or None)
            if rel is None:  # nothing to return (cannot happen for reads)
                return pa.table({})
            reader = rel.to_arrow_reader(_ROWS_PER_BATCH)
            try:
                batches, rows = [], 0
                for batch in reader:
                    rows += batch.num_rows
                    if max_rows and rows > max_rows:
                        raise QueryError(
                            f"refused: the result has more than {max_rows:,} rows (the row "
                            "limit); add a LIMIT or aggregate, or raise the limit "
                            "(`cryptostream query --max-rows N`, 0 for none)")
                    batches.append(batch)
                return pa.Table.from_batches(batches, schema=reader.schema)
            finally:
                reader.close()
        except duckdb.Error as exc:
            if state["fired"]:
                raise QueryError(
                    f"refused: the query ran longer than the {timeout_s:g} s statement timeout "
                    "and was stopped; narrow it (WHERE, LIMIT) or raise the timeout "
                    "(`cryptostream query --timeout SECONDS`)") from exc
            raise QueryError(str(exc).splitlines()[0]) from exc
        finally:
            with done:
                state["finished"] = True
    finally:
        if timer is not None:
            timer.cancel()
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:  # already rolled back by the failed statement
            pass


class QueryServer:
    """Serves read-only queries on a writer's database (see module docstring).

    ``lake``: the Parquet lake folder that ``read_parquet`` may read (None: no file at all).
    """

    def __init__(self, sink, db: Path, host: str = "127.0.0.1", port: int = 0,
                 lake: str | Path | None = None):
        self.sink = sink
        self.db = Path(db)
        self.lake = _lake_root(lake)
        self.token = secrets.token_hex(16)
        # One connection made here, in the thread that owns the writer; each request gets its
        # own cursor of it (creating cursors is serialised: connections are not thread-safe).
        self._base = sink.cursor()
        # the writer's database keeps external access (its registered Arrow batches, and
        # whatever the writer may need), so function names are checked against what it has
        # loaded: an unknown one would make DuckDB load an extension
        self.functions = known_functions(self._base)
        self._cursor_lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = False  # stop() waits for requests in flight
        self._server.block_on_close = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="query-server",
                                        daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._server.server_address[:2]

    def start(self) -> None:
        self._thread.start()
        path = endpoint_file(self.db)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            host, port = self.address
            json.dump({"host": host, "port": port, "pid": os.getpid(), "token": self.token}, fh)
        os.replace(tmp, path)

    def stop(self) -> None:
        try:
            endpoint_file(self.db).unlink()
        except FileNotFoundError:
            pass
        self._server.shutdown()
        self._server.server_close()
        self._base.close()

    def run(self, sql: str, params: list | None = None,
            timeout_s: float | None = DEFAULT_TIMEOUT_S,
            max_rows: int = DEFAULT_MAX_ROWS) -> pa.Table:
        """One query on a fresh cursor of the writer's database (what a request runs)."""
        with self._cursor_lock:
            cur = self._base.cursor()
        try:
            try:  # no Python-variable scans (`FROM some_dataframe`) on this cursor
                cur.execute("SET python_enable_replacements = false")
            except duckdb.Error:
                pass
            return _execute(cur, sql, params, timeout_s, max_rows, self.lake, self.functions)
        finally:
            cur.close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # no access log on stderr
                pass

            def do_POST(self):
                if self.path != "/query":
                    return self._send(404, b"not found", "text/plain")
                if self.headers.get("Authorization") != f"Bearer {server.token}":
                    return self._send(403, b"bad token", "text/plain")
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_SQL_BYTES:
                    return self._send(413, b"refused: query too long", "text/plain")
                try:
                    body = json.loads(self.rfile.read(length))
                    sql, params = str(body["sql"]), body.get("params")
                    timeout_s = float(body.get("timeout_s") or DEFAULT_TIMEOUT_S)
                    max_rows = int(body.get("max_rows", DEFAULT_MAX_ROWS))
                    if not (timeout_s > 0 and max_rows >= 0):
                        raise ValueError
                except (ValueError, KeyError, TypeError, AttributeError):
                    return self._send(400, b'expected JSON {"sql": ..., "params": [...], '
                                      b'"timeout_s": >0, "max_rows": >=0}', "text/plain")
                try:
                    table = server.run(sql, params, timeout_s, max_rows)
                except QueryError as exc:
                    return self._send(400, str(exc).encode(), "text/plain")
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
                self._send(200, sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_query(
    db: str | Path,
    sql: str,
    params: list | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    lock_wait_s: float = 15.0,
    max_rows: int = DEFAULT_MAX_ROWS,
    lake: str | Path | None = None,
) -> pa.Table:
    """Run read-only ``sql`` (with ``?`` parameters) against ``db``: via the live writer
    if one runs, else directly on the file (read-only, external access disabled).

    ``timeout_s`` is the statement timeout, ``max_rows`` the row limit (0: none), ``lake``
    the folder ``read_parquet`` may read when the file is opened here (a live pipeline
    applies its own lake folder). A writer that is starting or closing holds the file lock
    for a moment without serving queries; such a refusal (and a dropped connection) is
    retried for ``lock_wait_s``.
    """
    db = Path(db)
    if not timeout_s or timeout_s <= 0:
        raise QueryError("the statement timeout must be a positive number of seconds")
    if max_rows < 0:
        raise QueryError("the row limit must be >= 0 (0: no limit)")
    deadline = time.monotonic() + lock_wait_s
    while True:
        try:
            return _query_once(db, sql, params, timeout_s, max_rows, lake)
        except _Busy as busy:
            if time.monotonic() >= deadline:
                raise QueryError(str(busy)) from busy.__cause__
            time.sleep(0.1)


class _Busy(Exception):
    """The writer is between states (starting, closing): worth retrying shortly."""


def _query_once(db: Path, sql: str, params: list | None, timeout_s: float, max_rows: int,
                lake: str | Path | None) -> pa.Table:
    info = _live_endpoint(db)
    if info is not None:
        # a plain HTTP/1.1 request on loopback: an httpx client costs 9-50 ms to build
        # (TLS context), more than most queries
        conn = http.client.HTTPConnection(info["host"], info["port"],
                                          timeout=timeout_s + _HTTP_GRACE_S)
        try:
            conn.request("POST", "/query",
                         body=json.dumps({"sql": sql, "params": params, "timeout_s": timeout_s,
                                          "max_rows": max_rows}),
                         headers={"Authorization": f"Bearer {info['token']}",
                                  "Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            raise _Busy(f"the pipeline writing {db} did not answer ({exc}); retry") from exc
        finally:
            conn.close()
        if resp.status != 200:
            raise QueryError(body.decode("utf-8", "replace"))
        return pa.ipc.open_stream(body).read_all()
    check_read_only(sql, lake)  # (a live pipeline checks with its own lake folder)
    if not db.exists():
        raise QueryError(f"{db} does not exist yet; run `cryptostream run` first or pass --db")
    try:
        con = open_read_only(db, lake)
    except duckdb.IOException as exc:
        raise _Busy(
            f"{db} is locked by another process that does not serve queries "
            f"({exc.args[0].splitlines()[0]}). If it is a pipeline started with "
            "serve_queries = false, wait until it ends; otherwise stop that process."
        ) from exc
    except duckdb.ConnectionException as exc:  # open in this process with other settings
        raise _Busy(f"{db} is open in this process with other settings "
                    f"({str(exc).splitlines()[0]}); close that connection first") from exc
    try:
        return _execute(con, sql, params, timeout_s, max_rows, lake)
    finally:
        con.close()


def _live_endpoint(db: Path) -> dict | None:
    ep = endpoint_file(db)
    try:
        info = json.loads(ep.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not _pid_alive(int(info.get("pid", 0))):
        return None
    return info
