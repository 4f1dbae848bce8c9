"""Every forecaster and anomaly detector honours the same contract (ml/base.py, persistence).

One suite, parametrized over every model: the protocol, cold start, NaN inputs, seeded
reproducibility, the save/load round trip and the refusal of damaged or foreign files.
"""

from __future__ import annotations

import hashlib
import json
import math

import joblib
import numpy as np
import pytest

from cryptostream.errors import ModelError
from cryptostream.ml import persistence
from cryptostream.ml.base import AnomalyDetector, Forecaster
from cryptostream.ml.detectors import DETECTOR_NAMES, build_detectors
from cryptostream.ml.features import (
    ANOMALY_FEATURES,
    FORECAST_FEATURES,
    Bars,
    compute,
    matrix,
    next_log_return,
    row,
)
from cryptostream.ml.forecasters import FORECASTER_NAMES, build_forecasters, torch_available

NO_TORCH = pytest.mark.skipif(not torch_available(), reason="torch extra not installed")
MODELS = [pytest.param(("forecaster", n), id=n, marks=[NO_TORCH] if n == "lstm" else [])
          for n in FORECASTER_NAMES] + [pytest.param(("detector", n), id=n)
                                        for n in DETECTOR_NAMES]
N_FIT = 700  # rows fitted before the checks
N_CHECK = 40  # rows streamed through the model in the checks


def _bars(n: int = N_FIT + N_CHECK + 1, seed: int = 11) -> Bars:
    """A mean-reverting VWAP with noisy volume and trade counts (enough to fit every model)."""
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    for i in range(1, n):
        x[i] = 0.6 * x[i - 1] + 5e-4 * rng.normal()
    vwap = 2000.0 * np.exp(x)
    count = np.round(np.exp(np.log(500) + 0.4 * rng.normal(size=n)))
    volume = count * np.exp(np.log(0.2) + 0.3 * rng.normal(size=n))
    close = vwap * (1 + 1e-4 * rng.normal(size=n))
    open_ = np.concatenate([[vwap[0]], close[:-1]])
    wick = 1 + 2e-4 + np.abs(rng.normal(size=n)) * 2e-4
    return Bars.from_columns("SYNUSDT", {
        "start_ms": 1_700_000_000_000 + 60_000 * np.arange(n), "open": open_,
        "high": np.maximum(open_, close) * wick, "low": np.minimum(open_, close) / wick,
        "close": close, "volume": volume, "quote_volume": volume * vwap, "trade_count": count,
        "buy_volume": volume * rng.uniform(0.3, 0.7, n)})


@pytest.fixture(scope="module")
def data():
    bars = _bars()
    f = compute(bars)
    return {"X": matrix(f, FORECAST_FEATURES), "y": next_log_return(bars),
            "A": matrix(f, ANOMALY_FEATURES),
            "fx": [row(f, i, FORECAST_FEATURES) for i in range(len(bars))],
            "ax": [row(f, i, ANOMALY_FEATURES) for i in range(len(bars))]}


def _new(spec, seed: int = 0):
    kind, name = spec
    if kind == "forecaster":
        return build_forecasters([name], seed=seed)[0]
    return build_detectors([name], seed=seed)[0]


def _fitted(spec, data, seed: int = 0):
    m = _new(spec, seed)
    if spec[0] == "forecaster":
        m.fit(data["X"][:N_FIT], data["y"][:N_FIT])
    else:
        m.fit(data["A"][:N_FIT])
    return m


def _stream(spec, m, data) -> list:
    """The model's outputs on the next rows, learning each row once it is revealed."""
    out = []
    for i in range(N_FIT, N_FIT + N_CHECK):
        if spec[0] == "forecaster":
            out.append(m.predict_one(data["fx"][i]))
            m.learn_one(data["fx"][i], float(data["y"][i]))
        else:
            s = m.score_one(data["ax"][i])
            out.append((s, None if s is None else bool(m.is_anomaly(s))))
            m.learn_one(data["ax"][i])
    return out


def _with_nan(x: dict, key: str) -> dict:
    return {**x, key: math.nan}


@pytest.mark.parametrize("spec", MODELS)
def test_implements_the_protocol(spec):
    m = _new(spec)
    proto = Forecaster if spec[0] == "forecaster" else AnomalyDetector
    assert isinstance(m, proto)
    assert m.name == spec[1]
    assert isinstance(m.batch, bool)


@pytest.mark.parametrize("spec", MODELS)
def test_cold_start_is_as_documented(spec, data):
    m = _new(spec)
    if spec[0] == "forecaster":
        # persistence needs no history; every other forecaster cannot predict yet
        expected = 0.0 if spec[1] == "naive" else None
        assert m.predict_one(data["fx"][N_FIT]) == expected
    else:
        assert m.score_one(data["ax"][N_FIT]) is None
        assert m.is_anomaly(1e9) is False  # no calibrated threshold yet
        assert m.is_anomaly(None) is False


@pytest.mark.parametrize("spec", MODELS)
def test_nan_or_missing_features_give_none_not_an_exception(spec, data):
    m = _fitted(spec, data)
    if spec[0] == "forecaster":
        x = data["fx"][N_FIT]
        assert m.predict_one(x) is not None  # ready after the fit ...
        expected = 0.0 if spec[1] == "naive" else None  # ... persistence ignores features
        for key in FORECAST_FEATURES:
            assert m.predict_one(_with_nan(x, key)) == expected
        assert m.predict_one({}) == expected
        m.learn_one(_with_nan(x, "ret_log"), 0.001)  # never raises
        m.learn_one(x, math.nan)
    else:
        a = data["ax"][N_FIT]
        assert m.score_one(a) is not None
        for key in ANOMALY_FEATURES:
            assert m.score_one(_with_nan(a, key)) is None
        assert m.score_one({}) is None
        m.learn_one(_with_nan(a, "ret_z"))
        assert [k for k, _ in m.top_features(a, k=2)] == sorted(
            ANOMALY_FEATURES, key=lambda k: -abs(a[k]))[:2]


@pytest.mark.parametrize("spec", MODELS)
def test_same_seed_gives_identical_outputs(spec, data):
    a = _stream(spec, _fitted(spec, data, seed=3), data)
    b = _stream(spec, _fitted(spec, data, seed=3), data)
    assert a == b
    assert any(v is not None and (not isinstance(v, tuple) or v[0] is not None) for v in a)


@pytest.mark.parametrize("spec", MODELS)
def test_save_load_round_trip_gives_identical_outputs(spec, data, tmp_path):
    m = _fitted(spec, data)
    path = persistence.save_to(tmp_path, m, {"symbol": "SYNUSDT", "train_first_ms": 1,
                                             "train_last_ms": 2, "metrics": {"mae": 0.5}})
    assert path.parent == tmp_path / "SYNUSDT" / spec[1]
    assert persistence.latest(tmp_path, spec[1], "SYNUSDT") == path
    loaded, meta = persistence.load(path)
    assert type(loaded) is type(m)
    assert meta["name"] == spec[1] and meta["kind"] == spec[0]
    assert meta["symbol"] == "SYNUSDT" and meta["metrics"] == {"mae": 0.5}
    assert meta["features"] == (FORECAST_FEATURES if spec[0] == "forecaster"
                                else ANOMALY_FEATURES)
    assert meta["version"].startswith(f"{spec[1]}-") and path.stem == meta["version"]
    for key in ("trained_at", "train_first_ms", "train_last_ms", "n_train",
                "cryptostream_version"):
        assert key in meta
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["version"] == meta["version"]
    assert _stream(spec, loaded, data) == _stream(spec, m, data)


def _rewrite_header(path, change) -> None:
    """Re-sign a saved file after editing its metadata (a file from another version)."""
    data = path.read_bytes()
    magic_end = len(persistence.MAGIC)
    body = data[magic_end + 65:]
    header, _, payload = body.partition(b"\n")
    meta = json.loads(header)
    change(meta)
    body = json.dumps(meta).encode() + b"\n" + payload
    path.write_bytes(persistence.MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n"
                     + body)


@pytest.mark.parametrize("spec", MODELS)
def test_damaged_foreign_or_incompatible_files_raise_model_error(spec, data, tmp_path):
    m = _fitted(spec, data)
    good = persistence.save_to(tmp_path, m, {"symbol": "SYNUSDT"})
    raw = good.read_bytes()
    cases = {
        "truncated": raw[: len(raw) // 2],
        "garbled": raw[:-200] + bytes(b ^ 0x5A for b in raw[-200:-100]) + raw[-100:],
        "garbled-header": raw.replace(b'"SYNUSDT"', b'"SYNUSDX"', 1),
        "empty": b"",
        "text": b"this is not a model\n",
    }
    for label, content in cases.items():
        p = tmp_path / f"{label}.joblib"
        p.write_bytes(content)
        with pytest.raises(ModelError, match="cryptostream train") as exc:
            persistence.load(p)
        assert str(p) in str(exc.value), label
    foreign = tmp_path / "foreign.joblib"
    joblib.dump(m, foreign)  # a plain joblib file, as another tool would write it
    with pytest.raises(ModelError, match="not a CryptoStream model file"):
        persistence.load(foreign)
    _rewrite_header(good, lambda meta: meta.update(features=["ret_z", "something_else"]))
    with pytest.raises(ModelError, match="features"):
        persistence.load(good)
    with pytest.raises(ModelError, match="cannot be read"):
        persistence.load(tmp_path / "missing.joblib")
