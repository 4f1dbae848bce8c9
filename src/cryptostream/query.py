"""Read-only SQL over the store, also while a pipeline is writing it.

DuckDB lets one process write a database file, and while it does no other process may open
it. So the writing pipeline serves reads: ``QueryServer`` listens on 127.0.0.1 (random
port), announces itself in ``<db>.query.json`` (mode 0600, with a random token), and answers
``POST /query`` with an Arrow IPC stream, running each statement on its own cursor of the
writer's database (MVCC snapshot: readers never see half a flush, never block the writer).
``run_query`` uses that endpoint when a live pipeline announced one, and otherwise opens the
file read-only itself. Only read statements (SELECT, EXPLAIN, DESCRIBE/SHOW, read-only
PRAGMA) are accepted, in a transaction that is rolled back.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pyarrow as pa

from cryptostream.errors import QueryError

_READ_TYPES = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
_READ_PRAGMAS = ("show", "describe", "table_info", "database_size", "storage_info", "version")
MAX_SQL_BYTES = 1 << 20


def endpoint_file(db: Path) -> Path:
    return db.with_name(db.name + ".query.json")


def check_read_only(sql: str) -> None:
    """Raise ``QueryError`` unless every statement in ``sql`` only reads.

    >>> check_read_only("SELECT 1; DESCRIBE agg_1m")
    >>> check_read_only("DROP TABLE trades")
    Traceback (most recent call last):
    ...
    cryptostream.errors.QueryError: only read-only statements are allowed (SELECT, DESCRIBE, SHOW, EXPLAIN); got DROP
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"cannot parse the query: {exc}") from exc
    if not statements:
        raise QueryError("empty query")
    for st in statements:
        if st.type in _READ_TYPES:
            continue
        if st.type == duckdb.StatementType.PRAGMA and st.query.strip().lower().removeprefix(
            "pragma"
        ).strip().startswith(_READ_PRAGMAS):
            continue
        raise QueryError(
            "only read-only statements are allowed (SELECT, DESCRIBE, SHOW, EXPLAIN); "
            f"got {st.type.name}"
        )


def _execute(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pa.Table:
    check_read_only(sql)
    con.execute("BEGIN TRANSACTION")
    try:
        statements = duckdb.extract_statements(sql)
        for st in statements[:-1]:
            con.execute(st)
        return con.sql(statements[-1].query, params=params or None).to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from exc
    finally:
        con.execute("ROLLBACK")


class QueryServer:
    """Serves read-only queries on a writer's database (see module docstring)."""

    def __init__(self, sink, db: Path, host: str = "127.0.0.1", port: int = 0):
        self.sink = sink
        self.db = Path(db)
        self.token = secrets.token_hex(16)
        # One connection made here, in the thread that owns the writer; each request gets its
        # own cursor of it (creating cursors is serialised: connections are not thread-safe).
        self._base = sink.cursor()
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
                    return self._send(413, b"query too long", "text/plain")
                cur = None
                try:
                    body = json.loads(self.rfile.read(length))
                    with server._cursor_lock:
                        cur = server._base.cursor()
                    table = _execute(cur, str(body["sql"]), body.get("params"))
                except (ValueError, KeyError, TypeError):
                    return self._send(400, b'expected JSON {"sql": ..., "params": [...]}', "text/plain")
                except QueryError as exc:
                    return self._send(400, str(exc).encode(), "text/plain")
                finally:
                    if cur is not None:
                        cur.close()
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
    timeout_s: float = 60.0,
    lock_wait_s: float = 15.0,
) -> pa.Table:
    """Run read-only ``sql`` (with ``?`` parameters) against ``db``: via the live writer
    if one runs, else directly on the file.

    A writer that is starting or closing holds the file lock for a moment without serving
    queries; such a refusal (and a dropped connection) is retried for ``lock_wait_s``.
    """
    db = Path(db)
    check_read_only(sql)
    deadline = time.monotonic() + lock_wait_s
    while True:
        try:
            return _query_once(db, sql, params, timeout_s)
        except _Busy as busy:
            if time.monotonic() >= deadline:
                raise QueryError(str(busy)) from busy.__cause__
            time.sleep(0.1)


class _Busy(Exception):
    """The writer is between states (starting, closing): worth retrying shortly."""


def _query_once(db: Path, sql: str, params: list | None, timeout_s: float) -> pa.Table:
    info = _live_endpoint(db)
    if info is not None:
        # a plain HTTP/1.1 request on loopback: an httpx client costs 9-50 ms to build
        # (TLS context), more than most queries
        conn = http.client.HTTPConnection(info["host"], info["port"], timeout=timeout_s)
        try:
            conn.request("POST", "/query", body=json.dumps({"sql": sql, "params": params}),
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
    if not db.exists():
        raise QueryError(f"{db} does not exist yet; run `cryptostream run` first or pass --db")
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.IOException as exc:
        raise _Busy(
            f"{db} is locked by another process that does not serve queries "
            f"({exc.args[0].splitlines()[0]}). If it is a pipeline started with "
            "serve_queries = false, wait until it ends; otherwise stop that process."
        ) from exc
    try:
        return _execute(con, sql, params)
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
