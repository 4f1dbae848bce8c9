"""PostgreSQL schema of the store: versioned migrations, window tables, the column catalog.

The tables, column names and keys are those of the DuckDB store (``sinks.duckdb_sink``), with
PostgreSQL types (TEXT, DOUBLE PRECISION, BIGINT, BOOLEAN, TIMESTAMPTZ); ``trades`` has the
primary key (symbol, trade_id) here (B-tree indexes are cheap in PostgreSQL and make the
trade insert an ``ON CONFLICT DO NOTHING``).

Migrations: ``MIGRATIONS`` is an ordered list of (version, description, statements). A
released migration is never edited; a change of the schema is a new migration at the end.
``migrate`` runs in ONE transaction under a transaction-scoped advisory lock, so several
processes opening the same database at once (two ``process`` replicas) apply each missing
migration exactly once: the second waits for the first, then finds nothing to do. Each
applied version is recorded in ``schema_migrations(version, applied_at, description)``.
A database migrated by a newer CryptoStream (a version this code does not know) is refused.

Window tables are not migrations: which ones exist depends on the configured windows
(``--window agg_15m=900``), so after the migrations, in the same transaction and under the
same lock, every configured window table is created with ``CREATE TABLE IF NOT EXISTS``
(columns ``AGG_COLUMNS``, primary key (symbol, window_start)). A window table that already
exists with other columns is refused. Tables of windows no longer configured are left alone.
If ``AGG_COLUMNS`` ever changes, a migration must alter the existing ``agg_*`` tables too.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from cryptostream.errors import SinkError
from cryptostream.model import AGG_COLUMNS, ML_TABLES, WindowSpec

#: key of the advisory lock serialising schema changes (per database): "cs-schem" in ASCII
LOCK_KEY = 0x63732D736368656D

#: PostgreSQL spelling of the DuckDB types of ``model.AGG_COLUMNS`` / ``TRADE_COLUMNS``
PG_TYPES = {
    "VARCHAR": "TEXT",
    "DOUBLE": "DOUBLE PRECISION",
    "BIGINT": "BIGINT",
    "BOOLEAN": "BOOLEAN",
    "TIMESTAMPTZ": "TIMESTAMPTZ",
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "trades, rejects, gaps, pipeline_stats", (
        """CREATE TABLE IF NOT EXISTS trades (
            symbol TEXT NOT NULL, trade_id BIGINT NOT NULL, price DOUBLE PRECISION,
            qty DOUBLE PRECISION, quote_qty DOUBLE PRECISION, trade_time TIMESTAMPTZ,
            is_buyer_maker BOOLEAN, is_price_spike BOOLEAN, event_time TIMESTAMPTZ,
            recv_time TIMESTAMPTZ, processed_at TIMESTAMPTZ, latency_ms DOUBLE PRECISION,
            recv_latency_ms DOUBLE PRECISION, source TEXT, PRIMARY KEY (symbol, trade_id))""",
        """CREATE TABLE IF NOT EXISTS rejects (
            source TEXT NOT NULL, source_offset BIGINT NOT NULL, symbol TEXT, reason TEXT NOT NULL,
            detail TEXT, raw TEXT, trade_id BIGINT, trade_time TIMESTAMPTZ, recv_time TIMESTAMPTZ,
            rejected_at TIMESTAMPTZ, PRIMARY KEY (source, source_offset))""",
        """CREATE TABLE IF NOT EXISTS gaps (
            symbol TEXT NOT NULL, from_id BIGINT NOT NULL, to_id BIGINT NOT NULL, count BIGINT,
            filled BIGINT, after_trade_time TIMESTAMPTZ, detected_at TIMESTAMPTZ,
            PRIMARY KEY (symbol, from_id))""",
        """CREATE TABLE IF NOT EXISTS pipeline_stats (
            run_id TEXT NOT NULL, symbol TEXT NOT NULL, source TEXT, received BIGINT,
            accepted BIGINT, rejected BIGINT, duplicates BIGINT, ignored BIGINT, late BIGINT,
            gaps BIGINT, gap_trades BIGINT, rejected_by_reason TEXT, watermark TIMESTAMPTZ,
            max_trade_time TIMESTAMPTZ, recv_skew_ms DOUBLE PRECISION, started_at TIMESTAMPTZ,
            updated_at TIMESTAMPTZ, PRIMARY KEY (run_id, symbol))""",
    )),
    Migration(2, "pipeline_stats: source state columns (duckdb_sink.STATS_ADDED)", (
        """ALTER TABLE pipeline_stats
            ADD COLUMN IF NOT EXISTS gaps_open BIGINT,
            ADD COLUMN IF NOT EXISTS source_state TEXT,
            ADD COLUMN IF NOT EXISTS source_attempt BIGINT,
            ADD COLUMN IF NOT EXISTS reconnects BIGINT,
            ADD COLUMN IF NOT EXISTS last_message_at TIMESTAMPTZ,
            ADD COLUMN IF NOT EXISTS exchange_clock_skew_ms DOUBLE PRECISION,
            ADD COLUMN IF NOT EXISTS backfill_pending BIGINT,
            ADD COLUMN IF NOT EXISTS backfilled_trades BIGINT,
            ADD COLUMN IF NOT EXISTS source_detail TEXT""",
    )),
    Migration(3, "reference_prices (CoinGecko ticks)", (
        """CREATE TABLE IF NOT EXISTS reference_prices (
            asset TEXT NOT NULL, symbol TEXT NOT NULL, price_usd DOUBLE PRECISION,
            volume_24h DOUBLE PRECISION, change_24h DOUBLE PRECISION,
            last_updated_at TIMESTAMPTZ NOT NULL, received_at TIMESTAMPTZ,
            PRIMARY KEY (asset, symbol, last_updated_at))""",
    )),
    Migration(4, "consumer_checkpoints (Kafka process: offset + processor state)", (
        """CREATE TABLE IF NOT EXISTS consumer_checkpoints (
            group_id TEXT NOT NULL, topic TEXT NOT NULL, "partition" INTEGER NOT NULL,
            next_offset BIGINT NOT NULL, state BYTEA, updated_at TIMESTAMPTZ,
            PRIMARY KEY (group_id, topic, "partition"))""",
    )),
    Migration(5, "ML tables: anomalies, predictions, prediction_errors, ml_status", (
        """CREATE TABLE IF NOT EXISTS anomalies (
            symbol TEXT NOT NULL, window_start TIMESTAMPTZ NOT NULL, detector TEXT NOT NULL,
            score DOUBLE PRECISION, threshold DOUBLE PRECISION, is_anomaly BOOLEAN,
            model_version TEXT, top_features TEXT, scored_at TIMESTAMPTZ,
            PRIMARY KEY (symbol, window_start, detector))""",
        """CREATE TABLE IF NOT EXISTS predictions (
            symbol TEXT NOT NULL, target_window_start TIMESTAMPTZ NOT NULL, model TEXT NOT NULL,
            target TEXT NOT NULL, predicted DOUBLE PRECISION, base_window_start TIMESTAMPTZ,
            base_value DOUBLE PRECISION, made_at TIMESTAMPTZ, model_version TEXT,
            PRIMARY KEY (symbol, target_window_start, model, target))""",
        """CREATE TABLE IF NOT EXISTS prediction_errors (
            symbol TEXT NOT NULL, target_window_start TIMESTAMPTZ NOT NULL, model TEXT NOT NULL,
            target TEXT NOT NULL, predicted DOUBLE PRECISION, actual DOUBLE PRECISION,
            error DOUBLE PRECISION, abs_error DOUBLE PRECISION, pct_error DOUBLE PRECISION,
            direction_correct BOOLEAN, model_version TEXT, scored_at TIMESTAMPTZ,
            PRIMARY KEY (symbol, target_window_start, model, target))""",
        """CREATE TABLE IF NOT EXISTS ml_status (
            symbol TEXT NOT NULL, component TEXT NOT NULL, kind TEXT, state TEXT,
            history BIGINT, needed BIGINT, model_version TEXT, detail TEXT,
            updated_at TIMESTAMPTZ, PRIMARY KEY (symbol, component))""",
    )),
)

LATEST_VERSION = MIGRATIONS[-1].version

#: tables every store has (besides the window tables)
FIXED_TABLES = ("trades", "rejects", "gaps", "pipeline_stats", "reference_prices",
                *ML_TABLES)

_MIGRATIONS_DDL = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), description TEXT)"""


def agg_ddl(table: str) -> sql.Composed:
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(PG_TYPES[t])) for n, t in AGG_COLUMNS
    )
    return sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY (symbol, window_start))"
    ).format(sql.Identifier(table), cols)


def migrate(conn: psycopg.Connection, windows: tuple[WindowSpec, ...]) -> list[int]:
    """Apply the missing migrations, then create missing window tables; returns the versions
    applied now (empty when the schema was up to date). ``conn`` must be in autocommit mode."""
    applied_now = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        conn.execute(_MIGRATIONS_DDL)
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        unknown = sorted(v for v in done if v > LATEST_VERSION)
        if unknown:
            raise SinkError(
                f"the PostgreSQL store has schema version(s) {unknown}, newer than this "
                f"CryptoStream knows (up to {LATEST_VERSION}); upgrade cryptostream, or point "
                "it at another database"
            )
        for m in MIGRATIONS:
            if m.version in done:
                continue
            for stmt in m.statements:
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at, description) "
                "VALUES (%s, now(), %s)",
                [m.version, m.description],
            )
            applied_now.append(m.version)
        for w in windows:
            conn.execute(agg_ddl(w.table))
            # columns added to AGG_COLUMNS after their first release, on older tables
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS complete BOOLEAN")
                         .format(sql.Identifier(w.table)))
        expected = [n for n, _ in AGG_COLUMNS]
        cols = columns(conn, tuple(w.table for w in windows))
        for w in windows:
            have = [n for n, _ in cols.get(w.table, [])]
            if have != expected:
                raise SinkError(
                    f"table {w.table} exists in PostgreSQL with other columns than a window "
                    f"table ({have[:5]}...); rename the window (--window NAME=SECONDS) or drop "
                    "that table"
                )
    return applied_now


def columns(conn: psycopg.Connection, tables: tuple[str, ...]) -> dict[str, list[tuple[str, str]]]:
    """``{table: [(column, type), ...]}`` in stored order, for the tables of the current
    schema (types as ``format_type`` spells them, e.g. ``double precision``)."""
    rows = conn.execute(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(%s) "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum",
        [list(tables)],
    ).fetchall()
    out: dict[str, list[tuple[str, str]]] = {}
    for table, col, typ in rows:
        out.setdefault(table, []).append((col, typ))
    return out


def applied_versions(conn: psycopg.Connection) -> list[tuple[int, str]]:
    """``[(version, description)]`` recorded in ``schema_migrations``, in order."""
    return [tuple(r) for r in conn.execute(
        "SELECT version, description FROM schema_migrations ORDER BY version")]
