"""Metrics, health and logs of a running `cryptostream run`, as external checks see them.

The contract command (simulate, --rate, --duration, --metrics-port) scraped while it runs;
`cryptostream health` when ready, not ready and when nothing answers; --metrics-port 0;
--log-format json; and no secret (PostgreSQL password, CoinGecko key) in logs or metrics.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
COUNTERS = ("cryptostream_messages_received_total", "cryptostream_trades_accepted_total",
            "cryptostream_trades_rejected_total", "cryptostream_trades_duplicate_total",
            "cryptostream_trades_late_total", "cryptostream_messages_ignored_total",
            "cryptostream_gaps_total")
FAMILIES = (*COUNTERS, "cryptostream_windows_emitted_total", "cryptostream_open_windows",
            "cryptostream_queue_depth", "cryptostream_source_state",
            "cryptostream_source_connected", "cryptostream_last_trade_age_seconds",
            "cryptostream_end_to_end_latency_seconds_bucket",
            "cryptostream_batch_processing_seconds_bucket",
            "cryptostream_sink_flush_seconds_bucket", "process_resident_memory_bytes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    """(HTTP status, body) of GET 127.0.0.1:port/path; (0, "") when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def total(m: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in m.items() if n == name and want <= lab)


def wait_for(cond, timeout_s: float, proc: subprocess.Popen, log: Path, what: str):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        result = cond()
        if result:
            return result
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {timeout_s} s:\n{log.read_text()[-3000:]}")


def start(cs, tmp_path: Path, *args) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "stderr.log"
    proc = cs.start_cli(*map(str, args), cwd=tmp_path, stdout=subprocess.DEVNULL,
                        stderr=log.open("w"))
    return proc, log


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_contract_command_serves_metrics_and_health_while_it_runs(cs, tmp_path):
    port, db = free_port(), tmp_path / "store.duckdb"
    t0 = time.monotonic()
    proc, log = start(cs, tmp_path, "run", "--source", "simulate", "--symbols", ",".join(SYMBOLS),
                      "--rate", "300", "--duration", "8", "--metrics-port", port, "--db", db,
                      "--lake", tmp_path / "lake")
    try:
        wait_for(lambda: get(port, "/healthz")[0] == 200, 60, proc, log, "/healthz 200")
        wait_for(lambda: get(port, "/readyz")[0] == 200, 30, proc, log, "/readyz 200")

        def stored():  # at least one flush: the latency histogram has counts
            m = samples(get(port, "/metrics")[1])
            return m if total(m, "cryptostream_end_to_end_latency_seconds_count") > 0 else None

        m = wait_for(stored, 30, proc, log, "a stored trade in /metrics")
        health = cs.run_cli("health", "--port", port, cwd=tmp_path, check=False)
        ready = json.loads(get(port, "/readyz")[1])
        live = json.loads(get(port, "/healthz")[1])
        rc = proc.wait(60)
    finally:
        stop(proc)
    elapsed = time.monotonic() - t0
    assert rc == 0, log.read_text()[-3000:]

    names = {n for n, _ in m}
    assert not [f for f in FAMILIES if f not in names], sorted(names)
    for name in COUNTERS:
        labelled = {dict(lab).get("symbol") for n, lab in m if n == name}
        assert labelled == set(SYMBOLS), (name, labelled)
    for sym in SYMBOLS:
        received = total(m, "cryptostream_messages_received_total", symbol=sym)
        assert received > 0
        assert received == sum(total(m, n, symbol=sym) for n in (
            "cryptostream_trades_accepted_total", "cryptostream_trades_rejected_total",
            "cryptostream_trades_duplicate_total", "cryptostream_messages_ignored_total"))
        assert total(m, "cryptostream_windows_emitted_total", symbol=sym, table="agg_1m") >= 0
        assert ("cryptostream_windows_emitted_total",
                frozenset({("symbol", sym), ("table", "agg_1m")})) in m
    count = total(m, "cryptostream_end_to_end_latency_seconds_count")
    # the paced simulation plays "now" (the mean includes the start-up before the source runs)
    assert 0 < total(m, "cryptostream_end_to_end_latency_seconds_sum") / count < 60.0
    assert total(m, "cryptostream_source_state", source="simulate", state="simulated") == 1
    assert total(m, "process_resident_memory_bytes") > 10e6

    assert health.returncode == 0, health.stdout + health.stderr
    assert "ready" in health.stdout and "source:simulate" in health.stdout
    assert ready["status"] == "ready" and all(c["ok"] for c in ready["checks"].values())
    assert live["status"] == "alive"

    # --rate is the combined rate, paced in real time: --duration 8 lasts 8 s of wall time
    assert elapsed >= 8.0
    with cs.connect_ro(db) as con:
        accepted = con.execute("SELECT count(*) FROM trades").fetchone()[0]
    assert 300 * 8 / 4 <= accepted <= 300 * 8 * 4, accepted

    gone = cs.run_cli("health", "--port", port, cwd=tmp_path, check=False)
    assert gone.returncode == 2 and "nothing answers" in gone.stderr, gone.stderr


def test_health_is_not_ready_while_the_live_source_cannot_connect(cs, tmp_path):
    port, nobody = free_port(), free_port()
    proc, log = start(cs, tmp_path, "run", "--source", "binance", "--symbols", "BTCUSDT",
                      "--binance-url", f"ws://127.0.0.1:{nobody}", "--duration", "20",
                      "--metrics-port", port, "--no-ml", "--lake", "off",
                      "--db", tmp_path / "store.duckdb")
    try:
        wait_for(lambda: get(port, "/healthz")[0] == 200, 60, proc, log, "/healthz 200")

        def unready():
            code, body = get(port, "/readyz")
            doc = json.loads(body) if code == 503 else {}
            started = doc.get("checks", {}).get("loop", {}).get("ok")
            return doc if started and "source:binance" in doc["checks"] else None

        body = wait_for(unready, 30, proc, log, "/readyz 503 naming the source")
        res = cs.run_cli("health", "--port", port, cwd=tmp_path, check=False)
        as_json = cs.run_cli("health", "--port", port, "--format", "json", cwd=tmp_path,
                             check=False)
    finally:
        stop(proc)
    assert body["checks"]["source:binance"]["ok"] is False
    assert body["checks"]["sinks"]["ok"] is True
    assert res.returncode == 1, res.stdout + res.stderr
    assert "NOT READY" in res.stdout and "FAIL source:binance" in res.stdout
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["ready"] is False
    assert "binance stream: connect_failed" in log.read_text()  # reconnects are logged


def test_json_logs_and_metrics_port_zero_serves_nothing(cs, tmp_path):
    default_free = get(9108, "/healthz")[0] == 0
    proc, log = start(cs, tmp_path, "run", "--source", "simulate", "--symbols", "BTCUSDT,ETHUSDT",
                      "--rate", "200", "--duration", "3", "--metrics-port", "0",
                      "--log-format", "json", "--no-ml", "--lake", "off",
                      "--db", tmp_path / "store.duckdb")
    try:
        seen_default = []
        while proc.poll() is None:
            if default_free:
                seen_default.append(get(9108, "/healthz")[0])
            time.sleep(0.3)
        rc = proc.wait(60)
    finally:
        stop(proc)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert all(code == 0 for code in seen_default)
    docs = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert docs and all({"ts", "level", "logger", "message"} <= d.keys() for d in docs)
    assert not [d for d in docs if d.get("event") == "metrics_on"]
    rows = [d["row"] for d in docs if "row" in d]  # the summary table, a record per row
    assert rows and rows[0]["received"] == rows[0]["accepted"] > 0


def test_an_explicit_metrics_port_that_is_taken_is_an_error(cs, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = cs.run_cli("run", "--source", "simulate", "--rate", "100", "--duration", "1",
                         "--metrics-port", port, "--no-ml", "--lake", "off",
                         "--db", tmp_path / "store.duckdb", cwd=tmp_path, check=False)
    assert res.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in res.stderr
    assert "--metrics-port" in res.stderr and "Traceback" not in res.stderr


def test_no_secret_reaches_logs_or_metrics(cs, tmp_path, monkeypatch, request):
    key, password = "CG-k3yS3cr3t-9876", "Pw-S3cr3t-4711"
    monkeypatch.setenv("COINGECKO_API_KEY", key)
    sinks: list[str] = []
    with socket.socket() as s:
        pg_up = s.connect_ex(("127.0.0.1", 5432)) == 0
    if pg_up:  # the local PostgreSQL trusts 127.0.0.1: the password is carried, not checked
        dsn = request.getfixturevalue("pg_dsn").replace("postgres@", f"postgres:{password}@", 1)
        sinks = ["--sink", "duckdb", "--sink", dsn]
    port, nobody = free_port(), free_port()
    proc, log = start(cs, tmp_path, "run", "--source", "simulate,coingecko",
                      "--coingecko-url", f"http://127.0.0.1:{nobody}", "--symbols",
                      "BTCUSDT,ETHUSDT", "--rate", "200", "--duration", "4", "--metrics-port",
                      port, "--no-ml", "--lake", "off", "--db", tmp_path / "store.duckdb", *sinks)
    try:
        def stored():
            text = get(port, "/metrics")[1]
            return text if total(samples(text), "cryptostream_sink_flush_seconds_count") else None

        metrics = wait_for(stored, 60, proc, log, "a sink write in /metrics")
        bodies = get(port, "/readyz")[1] + get(port, "/healthz")[1]
        rc = proc.wait(60)
    finally:
        stop(proc)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    for secret in (key, password):
        assert secret not in text and secret not in metrics and secret not in bodies
    if pg_up:
        assert "postgres:***@" in text  # the DSN was logged, redacted
