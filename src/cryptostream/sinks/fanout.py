"""Several sinks as one: every write goes to each (DuckDB and/or PostgreSQL), in order.

Each sink commits its own transaction; a failure in any raises (the caller does not commit
its source offsets, so the write is retried after a restart, and upserts make the retry
harmless). Checkpoints are read from the first sink, the authoritative one.
"""

from __future__ import annotations

from pathlib import Path

from cryptostream.errors import ConfigError
from cryptostream.model import WindowSpec
from cryptostream.processing.engine import Output
from cryptostream.sinks.base import Checkpoint
from cryptostream.sinks.duckdb_sink import DuckDBSink


class FanoutSink:
    def __init__(self, sinks: list):
        if not sinks:
            raise ConfigError("at least one sink is needed (--sink duckdb or a postgres:// DSN)")
        self.sinks = sinks

    @property
    def duckdb(self) -> DuckDBSink | None:
        return next((s for s in self.sinks if isinstance(s, DuckDBSink)), None)

    def open(self) -> None:
        for s in self.sinks:
            s.open()

    def write(self, output: Output, stats: list[dict], now_us: int = 0,
              checkpoints: list[Checkpoint] = ()) -> None:
        for s in self.sinks:
            s.write(output, stats, now_us, checkpoints=checkpoints)

    def load_checkpoint(self, group: str, topic: str, partition: int) -> Checkpoint | None:
        return self.sinks[0].load_checkpoint(group, topic, partition)

    def prune_trades(self, before_us: dict[str, int]) -> int:
        return sum(s.prune_trades(before_us) for s in self.sinks)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def build_sinks(specs: tuple[str, ...], db: Path, windows: tuple[WindowSpec, ...],
                duckdb_threads: int | None = None,
                duckdb_memory_mb: int | None = None) -> FanoutSink:
    """``duckdb`` -> the ``db`` file; ``postgres://…`` -> a PostgreSQL sink."""
    sinks = []
    for spec in specs:
        if spec == "duckdb":
            sinks.append(DuckDBSink(db, windows, threads=duckdb_threads,
                                    memory_mb=duckdb_memory_mb))
        else:
            from cryptostream.sinks.postgres_sink import PostgresSink

            sinks.append(PostgresSink(spec, windows))
    return FanoutSink(sinks)
