"""Settings: defaults < TOML file < environment (CRYPTOSTREAM_*) < CLI; unknown keys refused;
durations; validation of values."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from cryptostream.config import Settings, load_settings, parse_duration
from cryptostream.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No CRYPTOSTREAM_* variables and no cryptostream.toml from the developer's machine."""
    for k in list(os.environ):
        if k.startswith("CRYPTOSTREAM_") or k in ("DURATION", "duration"):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)


def write_toml(tmp_path, text: str):
    p = tmp_path / "conf.toml"
    p.write_text(text)
    return p


# -- defaults and durations ---------------------------------------------------------------


def test_defaults():
    s = load_settings()
    assert s.allowed_lateness_s == 2.0
    assert s.max_clock_skew_s == 5.0
    assert s.spike_threshold_pct == 2.0
    assert s.symbols == ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    assert [(w.table, w.size_s, w.slide_s) for w in s.window_specs()] == [
        ("agg_1m", 60, 60), ("agg_5m_1m", 300, 60)]
    assert s.allowed_lateness_us == 2_000_000


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m", 600.0), ("90", 90.0), ("90s", 90.0), ("250ms", 0.25), ("1.5h", 5400.0),
     ("2d", 172800.0), (" 3 m ", 180.0), (45, 45.0), (2.5, 2.5)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10 minutes", "abc", "-5s", "5y", "1e3", ""])
def test_parse_duration_refuses_garbage(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_duration_settings_accept_units():
    s = load_settings(duration_s="10m", allowed_lateness_s="1500ms", idle_timeout_s="1m",
                      max_clock_skew_s="0")
    assert (s.duration_s, s.allowed_lateness_s, s.idle_timeout_s, s.max_clock_skew_s) == (
        600.0, 1.5, 60.0, 0.0)
    assert s.allowed_lateness_us == 1_500_000


@pytest.mark.parametrize("field", ["allowed_lateness_s", "idle_timeout_s", "max_clock_skew_s",
                                   "duration_s"])
def test_negative_or_malformed_durations_are_refused(field):
    with pytest.raises(ConfigError):
        load_settings(**{field: "ten minutes"})
    with pytest.raises(ConfigError):
        load_settings(**{field: -5})


# -- layering -----------------------------------------------------------------------------


def test_toml_file_overrides_defaults(tmp_path):
    p = write_toml(tmp_path, 'allowed_lateness_s = "5s"\nspike_threshold_pct = 3.0\n'
                             'symbols = ["SOLUSDT"]\nduration_s = "10m"\nseed = 1\n')
    s = load_settings(p)
    assert (s.allowed_lateness_s, s.spike_threshold_pct, s.symbols, s.duration_s, s.seed) == (
        5.0, 3.0, ("SOLUSDT",), 600.0, 1)


def test_environment_overrides_toml_and_cli_overrides_both(tmp_path, monkeypatch):
    p = write_toml(tmp_path, 'allowed_lateness_s = "5s"\nseed = 1\nspike_threshold_pct = 3.0\n')
    monkeypatch.setenv("CRYPTOSTREAM_SEED", "2")
    monkeypatch.setenv("CRYPTOSTREAM_ALLOWED_LATENESS_S", "1500ms")
    s = load_settings(p)
    assert (s.seed, s.allowed_lateness_s, s.spike_threshold_pct) == (2, 1.5, 3.0)
    s = load_settings(p, seed=3, allowed_lateness_s="250ms")
    assert (s.seed, s.allowed_lateness_s, s.spike_threshold_pct) == (3, 0.25, 3.0)


def test_cli_none_means_not_given(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYPTOSTREAM_SEED", "2")
    s = load_settings(seed=None, allowed_lateness_s=None)
    assert (s.seed, s.allowed_lateness_s) == (2, 2.0)


def test_environment_over_defaults_without_a_file(monkeypatch):
    monkeypatch.setenv("CRYPTOSTREAM_SYMBOLS", "BTCUSDT, ETHUSDT")
    monkeypatch.setenv("CRYPTOSTREAM_WINDOWS", "agg_30s=30,agg_2m_30s=120/30")
    monkeypatch.setenv("CRYPTOSTREAM_SPEED", "max")
    s = load_settings()
    assert s.symbols == ("BTCUSDT", "ETHUSDT")
    assert [(w.table, w.size_s, w.slide_s) for w in s.window_specs()] == [
        ("agg_30s", 30, 30), ("agg_2m_30s", 120, 30)]
    assert s.speed in (None, "max")


def test_duration_from_the_environment_uses_the_prefixed_name(monkeypatch):
    monkeypatch.setenv("CRYPTOSTREAM_DURATION_S", "10m")
    assert load_settings().duration_s == 600.0


def test_unprefixed_environment_variable_is_not_a_setting(monkeypatch):
    # an unrelated DURATION variable of the user's shell must not change the run
    monkeypatch.setenv("DURATION", "1h")
    assert load_settings().duration_s is None


def test_config_file_from_environment_variable(tmp_path, monkeypatch):
    p = write_toml(tmp_path, "seed = 42\n")
    monkeypatch.setenv("CRYPTOSTREAM_CONFIG", str(p))
    assert load_settings().seed == 42


def test_cryptostream_toml_in_working_directory_is_used(tmp_path):
    (tmp_path / "cryptostream.toml").write_text("seed = 7\n")
    assert load_settings().seed == 7


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


# -- unknown keys -------------------------------------------------------------------------


def test_unknown_key_in_toml_is_refused(tmp_path):
    p = write_toml(tmp_path, "alowed_lateness_s = 5\n")
    with pytest.raises(ConfigError, match="alowed_lateness_s"):
        load_settings(p)


def test_unknown_cli_key_is_refused():
    with pytest.raises(ConfigError, match="bogus"):
        load_settings(bogus=1)


def test_unknown_environment_key_is_refused(monkeypatch):
    monkeypatch.setenv("CRYPTOSTREAM_ALOWED_LATENESS_S", "5")
    with pytest.raises(ConfigError, match="(?i)alowed_lateness_s"):
        load_settings()


# -- value validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [{"symbols": "btcusdt"}, {"symbols": "BTC-USDT"}, {"speed": "0"}, {"speed": "-2"},
     {"source": "kafka"}, {"seed": "x"}],
)
def test_bad_values_are_config_errors(kw):
    with pytest.raises(ConfigError):
        load_settings(**kw)


@pytest.mark.parametrize("windows", ["a=60,a=120", "agg=300/70", "agg=abc", "Agg=60"])
def test_bad_windows_are_config_errors(windows):
    with pytest.raises(ConfigError):
        load_settings(windows=windows).window_specs()


def test_speed_and_lake_values():
    assert load_settings(speed="2").speed == 2.0
    assert load_settings(speed="max").speed in (None, "max")
    assert load_settings(lake="off").lake is None


def test_settings_are_frozen():
    s = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.seed = 5  # type: ignore[misc]
    assert s.seed == 0


def test_engine_config_converts_units():
    from cryptostream.pipeline import engine_config

    s = Settings(allowed_lateness_s="3s", max_clock_skew_s="500ms", spike_threshold_pct=2.5,
                 max_open_gaps=7)
    e = engine_config(s)
    assert e.allowed_lateness_us == 3_000_000
    assert e.max_clock_skew_us == 500_000
    assert e.spike_threshold == pytest.approx(0.025)
    assert e.max_open_gaps == 7
    assert [w.table for w in e.windows] == ["agg_1m", "agg_5m_1m"]
