"""Reading the store with ``cryptostream query`` while a replay is writing it.

DuckDB lets one process write a file and no other process open it meanwhile; the pipeline
therefore serves read-only queries itself. A user must be able to run ``cryptostream
query`` at any moment while ``cryptostream run`` is alive (from the moment the pipeline
announced its query endpoint until it exits), and must get non-decreasing, growing
counts; afterwards the file is read directly.

The writer replays a few million synthetic trades in the official data.binance.vision
layout at full speed, so that it writes for several seconds in big flushes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TRADES = 3_000_000
FIRST_ID = 5_000_000_000
START_MS = 1_723_161_600_000  # 2024-08-09 00:00:00 UTC
SPAN_MS = 4 * 3600 * 1000
COUNT_SQL = "SELECT count(*) AS n FROM trades"


def write_official_trade_csv(path: Path, n: int, seed: int = 7) -> None:
    """``id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch``, no header, ms times,
    consecutive ids, time-ordered: what data.binance.vision publishes."""
    rng = np.random.default_rng(seed)
    ids = np.arange(FIRST_ID, FIRST_ID + n, dtype=np.int64)
    times = START_MS + np.sort(rng.integers(0, SPAN_MS, n))
    price = np.round(60_000.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-5, n))), 2)
    qty = np.round(rng.uniform(1e-5, 0.5, n), 5)
    maker = np.where(rng.random(n) < 0.5, "True", "False")
    table = pa.table({
        "id": ids, "price": price, "qty": qty, "quoteQty": np.round(price * qty, 8),
        "time": times, "isBuyerMaker": maker, "isBestMatch": np.full(n, "True"),
    })
    pacsv.write_csv(table, path, pacsv.WriteOptions(include_header=False, quoting_style="none"))


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "BTCUSDT-trades-2024-08-09.csv"
    write_official_trade_csv(path, N_TRADES)
    yield path
    path.unlink(missing_ok=True)  # ~200 MB: do not leave it to pytest's tmp retention


@dataclass
class Read:
    started: float
    seconds: float
    alive_before: bool
    alive_after: bool
    returncode: int
    count: int | None
    stderr: str


def endpoint_file(db: Path) -> Path:
    """Where a running pipeline announces its query endpoint (see cryptostream.query)."""
    return db.with_name(db.name + ".query.json")


# A reader that has already paid its start-up (imports) and runs the ``query`` command the
# moment it reads a line on stdin: exactly the CLI's code path, fired at a chosen instant.
WARM_READER = (
    "import sys\n"
    "from cryptostream.cli import main\n"
    "import cryptostream.query  # noqa: F401  (what `query` imports lazily)\n"
    "sys.argv = ['cryptostream', *sys.argv[1:]]\n"
    "print('ready', flush=True)\n"
    "sys.stdin.readline()\n"
    "main()\n"
)


def test_queries_succeed_while_a_replay_writes(cs, big_csv, tmp_path):
    db, lake = tmp_path / "live.duckdb", tmp_path / "lake"
    ep = endpoint_file(db)

    warm = subprocess.Popen(
        [sys.executable, "-c", WARM_READER, "query", COUNT_SQL, "--db", str(db), "--format", "json"],
        cwd=tmp_path, env=cs.clean_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    assert warm.stdout.readline().strip() == "ready", warm.stderr.read()

    with open(tmp_path / "writer.out", "w") as wout, open(tmp_path / "writer.err", "w") as werr:
        writer = cs.start_cli(*cs.replay_args(db, lake, big_csv), cwd=tmp_path,
                              stdout=wout, stderr=werr)
    t_writer = time.monotonic()
    fired_alive = None  # writer alive when the warm reader was fired (None: not fired)
    try:
        # wait until the pipeline announced its query endpoint (it then owns the file)
        deadline = time.monotonic() + 60
        while not ep.exists() and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ep.exists(), f"the writer never announced a query endpoint:\n{_tail(tmp_path)}"

        reads: list[Read] = []
        refused: list[subprocess.CompletedProcess] = []

        def reader() -> None:
            while writer.poll() is None and time.monotonic() < deadline + 120:
                if len(reads) == 2 and not refused:  # a write attempt through the live endpoint
                    refused.append(cs.run_cli("query", "DROP TABLE trades", "--db", db,
                                              cwd=tmp_path, check=False, timeout=60))
                    continue
                reads.append(_read(cs, db, tmp_path, writer))

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        # the riskiest moment: the pipeline has stopped serving queries but may still hold
        # the file; fire the warm reader as soon as the announcement disappears
        while writer.poll() is None and time.monotonic() < deadline + 120:
            if not ep.exists():
                fired_alive = writer.poll() is None
                warm.stdin.write("go\n")
                warm.stdin.flush()
                break
            time.sleep(0.002)
        writer_rc = writer.wait(timeout=180)
        t.join(timeout=120)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        if warm.poll() is None and fired_alive is None:  # not fired yet: read directly now
            warm.stdin.write("go\n")
            warm.stdin.flush()
    warm_out, warm_err = warm.communicate(timeout=60)

    assert writer_rc == 0, f"the replay exited {writer_rc}:\n{_tail(tmp_path)}"
    assert not ep.exists(), "the writer left its query endpoint announced after exiting"

    # every read made while the writer was alive succeeded, including the one fired the
    # moment the pipeline stopped serving queries (it was still running then)
    failed = [
        f"  t+{r.started - t_writer:.2f}s (writer alive: {r.alive_before}->{r.alive_after}) "
        f"exit {r.returncode}: {' '.join(r.stderr.split())[:400]}"
        for r in reads if r.returncode != 0
    ]
    if warm.returncode != 0:
        failed.append(
            f"  query fired when the endpoint disappeared (writer alive: {fired_alive}) "
            f"exit {warm.returncode}: {' '.join(warm_err.split())[:400]}")
    assert not failed, "query failed while the pipeline was running:\n" + "\n".join(failed)
    during = [r for r in reads if r.alive_before and r.alive_after]
    assert len(during) >= 2, (
        f"only {len(during)} read(s) ran entirely while the writer was alive "
        f"(reads: {[(round(r.started - t_writer, 2), r.alive_before, r.alive_after) for r in reads]})")
    counts = [r.count for r in reads]
    assert counts == sorted(counts), f"counts went backwards: {counts}"
    assert counts[-1] > counts[0], f"counts did not grow while the writer ran: {counts}"
    assert all(0 <= c <= N_TRADES for c in counts), counts

    # a write statement sent through the live pipeline is refused
    assert refused, "the write attempt was never made"
    assert refused[0].returncode != 0, "DROP TABLE was accepted by the running pipeline"
    assert "read-only" in " ".join(refused[0].stderr.split()), refused[0].stderr
    assert "Traceback" not in refused[0].stderr

    assert json.loads(warm_out.strip().splitlines()[-1]) == {"n": N_TRADES}

    # after the writer exits: the direct read-only path, with the final count
    rows = cs.query_json(db, "SELECT count(*) AS n, count(DISTINCT trade_id) AS d, "
                         "min(trade_id) AS lo, max(trade_id) AS hi FROM trades", cwd=tmp_path)
    assert rows == [{"n": N_TRADES, "d": N_TRADES, "lo": FIRST_ID, "hi": FIRST_ID + N_TRADES - 1}]
    stats = cs.stats_json(db, cwd=tmp_path)
    assert [(r["symbol"], r["received"], r["accepted"], r["reconciled"]) for r in stats] == [
        ("BTCUSDT", N_TRADES, N_TRADES, True)]
    for f in tmp_path.glob("live.duckdb*"):  # large; only kept when the test fails
        f.unlink()


def _read(cs, db: Path, cwd: Path, writer: subprocess.Popen) -> Read:
    t0 = time.monotonic()
    alive_before = writer.poll() is None
    proc = cs.run_cli("query", COUNT_SQL, "--db", db, "--format", "json", cwd=cwd, check=False,
                      timeout=60)
    alive_after = writer.poll() is None
    count = None
    if proc.returncode == 0:
        count = json.loads(proc.stdout.strip().splitlines()[-1])["n"]
    return Read(t0, time.monotonic() - t0, alive_before, alive_after, proc.returncode, count,
                proc.stderr)


def _tail(tmp_path: Path) -> str:
    err = tmp_path / "writer.err"
    return err.read_text()[-3000:] if err.exists() else ""
