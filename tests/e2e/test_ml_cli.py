"""End to end: `cryptostream evaluate` / `train` on real klines, ML inside a replayed run.

The evaluation's naive baseline is recomputed here independently (csv module + plain
Python over the kline file): the report must score exactly the windows it says it scores,
with VWAP = quote volume / volume, predicted from the window before.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import math
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KLINES = Path(__file__).parents[1] / "fixtures" / "real" / "klines"
ETH_ZIP = KLINES / "ETHUSDT-1m-2022-08-14.original.zip"
BTC21 = KLINES / "binance-spot-BTCUSDT-1m-2021-04-24_to_2021-04-27.csv.gz"
HAS_TORCH = importlib.util.find_spec("torch") is not None
MODELS = {"naive", "linear", "online_linear"} | ({"lstm"} if HAS_TORCH else set())
DETECTORS = {"isolation_forest", "half_space_trees"}


def _vwaps(path: Path) -> tuple[list[int], list[float]]:
    with gzip.open(path, "rt") as fh:
        rows = [r for r in csv.reader(fh) if r and r[0].isdigit()]
    return [int(r[0]) for r in rows], [float(r[7]) / float(r[5]) for r in rows]


@pytest.fixture(scope="module")
def report(tmp_path_factory, cs) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    cs.run_cli("evaluate", "--from", ETH_ZIP, "--from", BTC21, "--report", out, "--no-progress",
            timeout=600)
    return out, json.loads((out / "metrics.json").read_text())


def test_metrics_follow_the_contract(report):
    out, m = report
    assert set(m["forecast"]) == set(m["anomaly"]) == {"ETHUSDT", "BTCUSDT"}
    for sym, f in m["forecast"].items():
        assert f["first_target_ms"] < f["last_target_ms"]
        assert set(f["models"]) == MODELS, sym
        ns = {v["n"] for v in f["models"].values()}
        assert len(ns) == 1, "every model is scored on the same targets"
        for name, v in f["models"].items():
            assert set(v) == {"mae", "rmse", "mape", "directional_accuracy", "skill", "n"}
            assert v["rmse"] >= v["mae"] > 0 and 0 <= v["directional_accuracy"] <= 1, name
        assert f["models"]["naive"]["skill"] == 0.0
        for det in DETECTORS:
            a = m["anomaly"][sym][det]
            assert set(a) == {"precision", "recall", "fpr", "n_injected"}
            assert a["n_injected"] > 0 and 0 <= a["fpr"] <= 1 and 0 <= a["recall"] <= 1
    text = (out / "report.md").read_text()
    assert "skill" in text and "ETHUSDT" in text and "BTCUSDT" in text
    for sym in ("ETHUSDT", "BTCUSDT"):
        assert (out / f"{sym}-forecast.png").stat().st_size > 10_000
        assert (out / f"{sym}-anomalies.png").stat().st_size > 10_000


@pytest.mark.parametrize("sym, path", [("BTCUSDT", BTC21)])
def test_the_naive_baseline_matches_an_independent_computation(report, sym, path):
    """BTCUSDT 2021 holds the real 284-minute exchange halt: the target after it is
    predicted from the last window before it (the window before, in the data)."""
    _, m = report
    f = m["forecast"][sym]
    starts, vwap = _vwaps(path)
    targets = [j for j, s in enumerate(starts) if f["first_target_ms"] <= s <= f["last_target_ms"]]
    assert targets[0] == 120 and targets[-1] == len(starts) - 1  # the default warm-up
    errors = [abs(vwap[j - 1] - vwap[j]) for j in targets]
    mae = sum(errors) / len(errors)
    rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
    naive = f["models"]["naive"]
    assert naive["n"] == len(targets)
    assert naive["mae"] == pytest.approx(mae, rel=1e-9)
    assert naive["rmse"] == pytest.approx(rmse, rel=1e-9)
    for name, v in f["models"].items():  # skill = 1 - MAE / MAE_naive, for every model
        assert v["skill"] == pytest.approx(1 - v["mae"] / mae, rel=1e-9, abs=1e-12), name


def test_train_saves_models_a_run_loads_them_and_survives_a_corrupted_one(tmp_path, cs):
    models = tmp_path / "models"
    cs.run_cli("train", "--from", ETH_ZIP, "--from", f"BTCUSDT={BTC21}", "--models-dir", models,
            "--model", "linear,isolation_forest", "--no-progress", timeout=600)
    saved = sorted(p.relative_to(models).parts[:2] for p in models.rglob("*.joblib"))
    assert saved == [("BTCUSDT", "isolation_forest"), ("BTCUSDT", "linear"),
                     ("ETHUSDT", "isolation_forest"), ("ETHUSDT", "linear")]
    meta = json.loads(next((models / "ETHUSDT" / "linear").glob("*.json")).read_text())
    assert meta["n_train"] == 1440 and meta["train_first_ms"] == 1660435200000
    assert "skill" in meta["metrics"] and meta["features"]
    forest = json.loads(next((models / "ETHUSDT" / "isolation_forest").glob("*.json")).read_text())
    assert {"precision", "recall", "fpr"} <= set(forest["metrics"])
    # corrupt BTCUSDT's isolation forest: the run goes on without it, and says so
    bad = next((models / "BTCUSDT" / "isolation_forest").glob("*.joblib"))
    bad.write_bytes(bad.read_bytes()[:100])
    db = tmp_path / "s.duckdb"
    proc = cs.run_cli(*cs.replay_args(db, "off", cs.real.btc_csv, cs.real.eth_csv),
                      "--models-dir", models,
                   "--ml-warmup", "5", cwd=tmp_path)
    assert f"model isolation_forest for BTCUSDT not used: model file {bad}" in proc.stderr
    assert "cryptostream train" in proc.stderr  # what to do about it
    with cs.connect_ro(db) as con:
        status = {(s, c): (st, d) for s, c, st, d in con.execute(
            "SELECT symbol, component, state, detail FROM ml_status").fetchall()}
        # the broken file was replaced by a fit on the live history; the others were loaded
        assert status[("BTCUSDT", "isolation_forest")][1].startswith("refit on")
        assert status[("BTCUSDT", "linear")][1].startswith("loaded")
        assert status[("ETHUSDT", "isolation_forest")][1].startswith("loaded")
        versions = {r[0] for r in con.execute(
            "SELECT DISTINCT model_version FROM anomalies WHERE symbol = 'ETHUSDT' "
            "AND detector = 'isolation_forest'").fetchall()}
    assert versions == {forest["version"]}  # the saved forest scored the replayed windows


def test_a_replay_fills_the_ml_tables_for_every_closed_window_after_warm_up(tmp_path, cs):
    db = tmp_path / "s.duckdb"
    warmup = 5  # of the 7 windows per symbol in the real recordings
    cs.run_cli(*cs.replay_args(db, "off", cs.real.btc_csv, cs.real.eth_csv),
               "--ml-warmup", str(warmup),
            "--ml-models", "naive,linear,online_linear", cwd=tmp_path)
    with cs.connect_ro(db) as con:
        windows = con.execute("SELECT symbol, epoch_ms(window_start) FROM agg_1m "
                              "ORDER BY 1, 2").fetchall()
        per_sym: dict[str, list[int]] = {}
        for sym, start in windows:
            per_sym.setdefault(sym, []).append(start)
        scored = {(s, d): sorted(t for (t,) in con.execute(
            "SELECT epoch_ms(window_start) FROM anomalies WHERE symbol = ? AND detector = ?",
            [s, d]).fetchall()) for s in per_sym for d in DETECTORS}
        preds = con.execute("SELECT symbol, model, epoch_ms(base_window_start), "
                            "epoch_ms(target_window_start) FROM predictions "
                            "WHERE target = 'vwap'").fetchall()
        errors = con.execute("SELECT symbol, model, epoch_ms(target_window_start), predicted, "
                             "actual, abs_error FROM prediction_errors WHERE target = 'vwap'"
                             ).fetchall()
        vwap = {(s, t): v for s, t, v in con.execute(
            "SELECT symbol, epoch_ms(window_start), vwap FROM agg_1m").fetchall()}
        status = con.execute("SELECT symbol, component, state FROM ml_status").fetchall()
    assert set(per_sym) == {"BTCUSDT", "ETHUSDT"}
    for sym, starts in per_sym.items():
        after = starts[warmup - 1:]
        for det in DETECTORS:
            assert scored[(sym, det)] == after, (sym, det)
        naive_bases = sorted(b for s, m, b, _ in preds if s == sym and m == "naive")
        assert naive_bases == after, sym
    # the learned forecasters read 10-window rolling means: the 7-minute recordings leave
    # them warming up, and ml_status says so; the baseline forecasts from the warm-up on
    assert {m for _, m, _, _ in preds} == {"naive"}
    assert {c: st for _, c, st in status if c in ("linear", "online_linear")} == {
        "linear": "warming_up", "online_linear": "warming_up"}
    # every prediction whose target window closed is scored, against the stored VWAP
    closed = [(s, m, t) for s, m, _, t in preds if (s, t) in vwap]
    assert sorted((s, m, t) for s, m, t, *_ in errors) == sorted(closed)
    for s, m, t, pred, actual, abs_err in errors:
        assert actual == vwap[(s, t)] and abs_err == pytest.approx(abs(pred - actual)), (s, m)
    naive_err = [e for e in errors if e[1] == "naive"]
    assert naive_err, "naive predictions of closed windows must be scored"
    assert {st for s, c, st in status if c in DETECTORS | {"naive"}} == {"ready"}


def test_evaluate_reads_a_store_while_nothing_else_has_it(tmp_path, cs):
    """`--from store.duckdb` evaluates the pipeline's own agg_1m windows."""
    db = tmp_path / "s.duckdb"
    cs.run_cli(*cs.replay_args(db, "off", cs.real.btc_csv, cs.real.eth_csv), "--no-ml",
               cwd=tmp_path)
    out = tmp_path / "rep"
    cs.run_cli("evaluate", "--from", db, "--warmup", "3", "--models", "naive,linear",
               "--report", out, "--no-progress", cwd=tmp_path)
    m = json.loads((out / "metrics.json").read_text())
    with cs.connect_ro(db) as con:
        for sym in ("BTCUSDT", "ETHUSDT"):
            rows = con.execute("SELECT epoch_ms(window_start), quote_volume / volume FROM agg_1m "
                               "WHERE symbol = ? ORDER BY 1", [sym]).fetchall()
            f = m["forecast"][sym]
            assert (f["first_target_ms"], f["last_target_ms"]) == (rows[3][0], rows[-1][0])
            errors = [abs(rows[j - 1][1] - rows[j][1]) for j in range(3, len(rows))]
            assert f["models"]["naive"]["mae"] == pytest.approx(sum(errors) / len(errors),
                                                                rel=1e-12)
            assert f["models"]["naive"]["n"] == f["models"]["linear"]["n"] == len(errors)
