"""The dashboard in a real browser while a paced replay writes the store.

``cryptostream run --source replay --speed 10`` replays the real BTCUSDT/ETHUSDT recordings
(~6 minutes of trades in ~35 s) into a fresh store; ``cryptostream dashboard --db … --port N
--refresh 2`` serves it on a free loopback port; Debian's Chromium (headless, driven by
Selenium through ``/usr/bin/chromedriver``) opens the page once and never reloads it. The
test waits for the candlestick chart, checks the KPIs are filled, that the auto-refresh
brings in new windows, that the page ends with the store's final numbers, and saves a
screenshot of every tab into the test's output folder (and into ``docs/img/`` when
``CRYPTOSTREAM_UPDATE_SCREENSHOTS=1``).

Chromium missing is a failure (``make test`` installs it), unless ``CRYPTOSTREAM_NO_BROWSER=1``
asks to skip the test.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-quic",
                "--no-first-run", "--disable-dev-shm-usage", "--window-size=1400,1500")
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
TABS = {"Aggregations": "aggregations", "ML predictions": "ml-predictions",
        "Anomalies": "anomalies", "Raw data": "raw-data", "Pipeline health": "pipeline-health"}
WINDOWS_RE = re.compile(r"([\d,]+) one-minute windows")


def _browser_paths() -> tuple[str, str]:
    if os.environ.get("CRYPTOSTREAM_NO_BROWSER") == "1":
        pytest.skip("CRYPTOSTREAM_NO_BROWSER=1: the browser test is skipped on request")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install Debian's browser with `make browser` "
                    "(apt-get install chromium chromium-driver), or set CRYPTOSTREAM_NO_BROWSER=1 "
                    "to skip this test", pytrace=False)
    return CHROMIUM, CHROMEDRIVER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def _wait(what: str, check, timeout: float, diagnose=lambda: ""):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnose()}", pytrace=False)


def _start(cs, log: Path, *args) -> subprocess.Popen:
    """``cryptostream ARGS`` in the background (in the log's folder), output to ``log``."""
    with open(log, "w") as out:
        return cs.start_cli(*args, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def _chrome(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver, log_output=str(tmp_path / "chromedriver.log")),
                            options=opts)


def test_dashboard_follows_a_running_replay_in_a_real_browser(cs, tmp_path):
    from selenium.webdriver.common.by import By

    _browser_paths()  # fail or skip before starting anything
    db, lake = tmp_path / "live.duckdb", tmp_path / "lake"
    port = _free_port()
    replay = dash = driver = None

    def diagnose() -> str:
        return "\n".join(f"--- {n}.log ---\n{(tmp_path / f'{n}.log').read_text()[-3000:]}"
                         for n in ("replay", "dashboard") if (tmp_path / f"{n}.log").exists())

    try:
        replay = _start(cs, tmp_path / "replay.log", *cs.replay_args(
            db, lake, cs.real.btc_csv, cs.real.eth_csv, speed="10"))
        # the dashboard starts once the pipeline owns the store and serves queries
        _wait("the pipeline's query endpoint", lambda: db.with_name(db.name + ".query.json")
              .exists() or replay.poll() is not None, 60, diagnose)
        assert replay.poll() is None, f"the replay ended before the dashboard started\n{diagnose()}"
        dash = _start(cs, tmp_path / "dashboard.log", "dashboard", "--db", db, "--port", port,
                      "--refresh", "2")
        _wait("/_stcore/health to answer ok", lambda: _health(port) == "ok" or dash.poll(), 60,
              diagnose)
        assert dash.poll() is None, f"the dashboard exited {dash.returncode}\n{diagnose()}"

        driver = _chrome(tmp_path)
        driver.get(f"http://127.0.0.1:{port}/")

        def css(selector):
            return driver.find_elements(By.CSS_SELECTOR, selector)

        def window_count() -> int | None:
            boxes = css(".st-key-window-counts")
            m = WINDOWS_RE.search(boxes[0].text) if boxes else None
            return int(m.group(1).replace(",", "")) if m else None

        _wait("the candlestick chart", lambda: css(".st-key-candles g.trace.boxes path"), 90,
              diagnose)
        kpis = _wait("filled KPIs", lambda: [e.text for e in css(
            ".st-key-kpi-BTCUSDT [data-testid='stMetricValue']")], 30, diagnose)
        assert len(kpis) == 6 and all(k.strip() for k in kpis), kpis
        assert re.fullmatch(r"[\d,]+\.\d{2}", kpis[0]), f"last price {kpis[0]!r}"
        assert re.fullmatch(r"[\d,]+", kpis[2]) and int(kpis[2].replace(",", "")) > 0, kpis
        status = css(".st-key-status-line")[0].text
        assert "replay (not live)" in status, status
        first = window_count()
        assert first, "no window count shown"
        # the page is never reloaded: only its auto-refresh can bring the next windows
        grown = _wait("auto-refresh to show new windows", lambda: (window_count() or 0) > first
                      and window_count(), 40, diagnose)
        assert grown > first

        assert replay.wait(timeout=120) == 0, diagnose()
        final = cs.query_json(db, "SELECT count(*) AS n, sum(trade_count)::BIGINT AS trades, "
                                  "(sum(trade_count) FILTER (WHERE symbol = 'BTCUSDT'))::BIGINT "
                                  "AS btc FROM agg_1m", cwd=tmp_path)[0]
        assert final["n"] == 14 and final["trades"] == 9757 + 6106
        _wait("the final numbers", lambda: window_count() == final["n"], 30, diagnose)
        _wait("the final BTCUSDT trade count", lambda: css(
            ".st-key-kpi-BTCUSDT [data-testid='stMetricValue']")[2].text == f"{final['btc']:,}",
            30, diagnose)
        assert _health(port) == "ok"

        shots = _screenshots(driver, css, tmp_path, diagnose)
        print("screenshots:", *shots, sep="\n  ")
        if os.environ.get("CRYPTOSTREAM_UPDATE_SCREENSHOTS") == "1":
            DOCS_IMG.mkdir(parents=True, exist_ok=True)
            for shot in shots:
                shutil.copy(shot, DOCS_IMG / shot.name)
    finally:
        if driver is not None:
            driver.quit()
        _stop(dash)
        _stop(replay)


def _screenshots(driver, css, out: Path, diagnose) -> list[Path]:
    """Open every tab (a click, as a user would) and save what it shows."""
    ready = {  # something each tab renders once its data arrived
        "Aggregations": ".st-key-candles g.trace.boxes path",
        "ML predictions": "[data-testid='stAlert'], .stPlotlyChart",
        "Anomalies": "[data-testid='stAlert'], .stPlotlyChart",
        "Raw data": "[data-testid='stDataFrame']",
        "Pipeline health": ".stPlotlyChart",
    }
    shots = []
    for label, slug in TABS.items():
        _open_tab(css, label, diagnose)
        _wait(f"the {label} tab's content", lambda sel=ready[label]: css(
            f"[role='tabpanel'] {sel.replace(', ', ', [role=tabpanel] ')}"), 30, diagnose)
        time.sleep(1.5)  # let plotly finish drawing
        driver.execute_script("window.scrollTo(0, 0)")
        path = out / f"dashboard-{slug}.png"
        assert driver.save_screenshot(str(path)), f"could not save {path}"
        shots.append(path)
    return shots


def _legend(css) -> set[str]:
    return {e.text for e in css("[role='tabpanel'] .stPlotlyChart .legendtext")}


def test_ml_panels_of_a_simulated_market_in_a_real_browser(cs, tmp_path):
    """Two hours of simulated market: past the models' warm-up, so the ML tabs have
    predictions, errors, skill and anomaly scores to draw (the pipeline's own ML stage)."""
    from selenium.webdriver.common.by import By

    _browser_paths()
    db = tmp_path / "sim.duckdb"
    cs.run_cli("run", "--source", "simulate", "--symbols", "BTCUSDT,ETHUSDT", "--duration", "2h",
               "--speed", "max", "--seed", "7", "--db", db, "--lake", "off", cwd=tmp_path,
               timeout=300)
    models = {r["model"] for r in cs.query_json(
        db, "SELECT DISTINCT model FROM prediction_errors WHERE target = 'vwap'", cwd=tmp_path)}
    assert "naive" in models and len(models) >= 2, f"models scored: {models}"
    detectors = {r["detector"] for r in cs.query_json(
        db, "SELECT DISTINCT detector FROM anomalies WHERE symbol = 'BTCUSDT'", cwd=tmp_path)}
    assert detectors, "no window was scored by an anomaly detector"
    port = _free_port()
    dash = driver = None

    def diagnose() -> str:
        return (tmp_path / "dashboard.log").read_text()[-3000:]

    try:
        dash = _start(cs, tmp_path / "dashboard.log", "dashboard", "--db", db, "--port", port,
                      "--refresh", "0")
        _wait("/_stcore/health to answer ok", lambda: _health(port) == "ok" or dash.poll(), 60,
              diagnose)
        driver = _chrome(tmp_path)
        driver.get(f"http://127.0.0.1:{port}/")

        def css(selector):
            return driver.find_elements(By.CSS_SELECTOR, selector)

        _wait("the candlestick chart", lambda: css(".st-key-candles g.trace.boxes path"), 90,
              diagnose)
        assert "simulated (not live)" in css(".st-key-status-line")[0].text
        shots = []
        for label, slug, want in (
                ("ML predictions", "ml-predictions", {"actual vwap", *models}),
                ("Anomalies", "anomalies", {f"{d} score" for d in detectors})):
            _open_tab(css, label, diagnose)
            legend = _wait(f"the {label} charts", lambda w=want: w <= _legend(css)
                           and _legend(css), 30, diagnose)
            assert want <= legend, legend
            if label == "ML predictions":  # the skill table is there too
                assert css("[role='tabpanel'] [data-testid='stDataFrame']"), "no skill table"
            time.sleep(1.5)
            path = tmp_path / f"dashboard-{slug}-simulated.png"
            assert driver.save_screenshot(str(path))
            shots.append(path)
        print("screenshots:", *shots, sep="\n  ")
        if os.environ.get("CRYPTOSTREAM_UPDATE_SCREENSHOTS") == "1":
            DOCS_IMG.mkdir(parents=True, exist_ok=True)
            for shot in shots:
                shutil.copy(shot, DOCS_IMG / shot.name)
    finally:
        if driver is not None:
            driver.quit()
        _stop(dash)


def test_dashboard_of_a_postgres_store_keeps_the_dsn_off_the_command_line(cs, tmp_path, pg_dsn):
    from selenium.webdriver.common.by import By

    _browser_paths()
    cs.run_cli("run", "--source", "replay", "--speed", "max", "--sink", pg_dsn, "--lake", "off",
               "--replay", cs.real.btc_csv, cwd=tmp_path)
    port = _free_port()
    dash = driver = None
    try:
        dash = _start(cs, tmp_path / "dashboard.log", "dashboard", "--postgres", pg_dsn,
                      "--port", port)
        _wait("/_stcore/health to answer ok", lambda: _health(port) == "ok" or dash.poll(), 60,
              lambda: (tmp_path / "dashboard.log").read_text()[-3000:])
        # the CLI process became the server: its command line must not carry the DSN
        cmdline = Path(f"/proc/{dash.pid}/cmdline").read_bytes().decode().split("\0")
        assert any("streamlit" in a for a in cmdline), cmdline
        assert not any("postgres" in a for a in cmdline), cmdline
        driver = _chrome(tmp_path)
        driver.get(f"http://127.0.0.1:{port}/")
        _wait("the candlestick chart", lambda: driver.find_elements(
            By.CSS_SELECTOR, ".st-key-candles g.trace.boxes path"), 90)
        trades = driver.find_elements(
            By.CSS_SELECTOR, ".st-key-kpi-BTCUSDT [data-testid='stMetricValue']")[2].text
        assert trades == "9,757"
        assert "PostgreSQL 127.0.0.1:5432" in driver.find_element(
            By.CSS_SELECTOR, "[data-testid='stSidebar']").text
    finally:
        if driver is not None:
            driver.quit()
        _stop(dash)


def _open_tab(css, label: str, diagnose) -> None:
    tab = _wait(f"the {label} tab", lambda: [t for t in css("[role='tab']") if t.text == label],
                20, diagnose)[0]
    tab.click()
    _wait(f"the {label} tab to be selected", lambda: any(
        t.text == label and t.get_attribute("aria-selected") == "true"
        for t in css("[role='tab']")), 20, diagnose)


def test_dashboard_command_refuses_a_busy_port_with_a_message(cs, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = cs.run_cli("dashboard", "--db", tmp_path / "x.duckdb", "--port", port,
                         cwd=tmp_path, check=False, timeout=60)
    assert res.returncode == 2
    assert f"127.0.0.1:{port}" in res.stderr and "--port" in res.stderr
    assert "Traceback" not in res.stderr


def test_dashboard_help_names_its_flags(cs, tmp_path):
    res = cs.run_cli("dashboard", "--help", cwd=tmp_path)
    for flag in ("--db", "--port", "--host", "--postgres", "--refresh"):
        assert flag in res.stdout, flag
