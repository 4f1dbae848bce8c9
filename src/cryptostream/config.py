"""One frozen settings object: defaults < TOML file < environment (``CRYPTOSTREAM_*``) < CLI.

Unknown keys are refused in every layer, so a typo never silently falls back to a default.

>>> s = Settings(source="replay", replay=["BTCUSDT=x.csv"], speed="max", duration_s="10m")
>>> (s.pace, s.duration_s, s.window_specs()[1].table)
(None, 600.0, 'agg_5m_1m')
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cryptostream.errors import ConfigError
from cryptostream.model import SYMBOL_RE, US_PER_S, WindowSpec

DEFAULT_CONFIG_FILE = "cryptostream.toml"
ENV_PREFIX = "CRYPTOSTREAM_"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from ``90``, ``"90s"``, ``"10m"``, ``"1.5h"``; None stays None.

    >>> parse_duration("10m"), parse_duration(2.5), parse_duration("250ms")
    (600.0, 2.5, 0.25)
    """
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (examples: 30, 30s, 10m, 1.5h)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


class Settings(BaseSettings):
    """Every setting of every command, validated once."""

    model_config = SettingsConfigDict(
        env_prefix="CRYPTOSTREAM_", extra="forbid", frozen=True
    )

    # sources
    #: one trade source (binance | replay | simulate), optionally with coingecko beside it
    #: ("binance,coingecko"), or coingecko alone
    source: str = "binance"
    symbols: Annotated[tuple[str, ...], NoDecode] = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
    replay: Annotated[tuple[str, ...], NoDecode] = ()
    speed: float | Literal["max"] | None = Field(
        None, description="N x real time, 'max' = unpaced; unset = the source's default")
    duration_s: float | None = None
    seed: int = 0
    sim_trades_per_s: float = 30.0
    #: combined trades/s of all simulated symbols (``--rate``), instead of ``sim_trades_per_s``
    #: per symbol; paces the simulation in real time unless ``speed`` is given, so that a
    #: ``duration`` lasts that long in wall time
    sim_rate: float | None = Field(None, gt=0)
    binance_url: str = "wss://stream.binance.com:9443"
    #: unset: https://api.binance.com, or the stream's own host when that is a local stand-in
    binance_rest_url: str | None = None
    binance_stream: Literal["trade", "aggTrade"] = "trade"
    stale_after_s: float = 30.0
    max_connection_age_s: float = 23.5 * 3600
    backfill_wait_s: float = 30.0
    ws_buffer_messages: int = Field(200_000, ge=1)
    #: longest WebSocket frame, recorded line or CSV row; a longer one is rejected as
    #: ``oversize`` without being read whole
    max_message_bytes: int = Field(1 << 20, ge=1024)
    coingecko_url: str = "https://api.coingecko.com"
    coingecko_interval_s: float = 60.0
    # Kafka scale-out
    broker: str | None = None
    group: str = "cryptostream"
    partitions: int = Field(6, ge=1)
    retention_s: float = 7 * 86400
    until_idle_s: float | None = None
    publish_raw: bool = True
    session_timeout_ms: int = Field(10_000, ge=1000)
    #: where results go: "duckdb" (the --db file) and/or PostgreSQL DSNs (postgres://…)
    sinks: Annotated[tuple[str, ...], NoDecode] = ("duckdb",)
    # processing
    windows: Annotated[tuple[str, ...], NoDecode] = ("agg_1m=60", "agg_5m_1m=300/60")
    allowed_lateness_s: float = 2.0
    #: unset: 0.5 s for the live Binance source (a quiet symbol's windows close about
    #: ``allowed_lateness`` after their end while the connection carries other trades), else 10 s
    idle_timeout_s: float | None = None
    max_clock_skew_s: float = 5.0
    spike_threshold_pct: float = 2.0
    max_open_gaps: int = 10_000
    # storage
    db: Path = Path("data/cryptostream.duckdb")
    lake: Path | None = Path("data/lake")
    #: unset: 25 ms for the live Binance source (trades queryable at once), 1 s otherwise
    flush_interval_s: float | None = None
    flush_max_trades: int = 500_000
    lake_interval_s: float = 60.0
    #: prune raw trades older than this many days before each symbol's newest trade (event
    #: time) from the store and the lake; windows are kept. None keeps every trade.
    retain_trades_days: float | None = Field(None, gt=0)
    serve_queries: bool = True
    #: statement timeout of `cryptostream query` and the dashboard's reads (docs/architecture.md 17)
    query_timeout_s: float = 30.0
    #: most rows a query may return; a bigger result is refused (0: no limit)
    query_max_rows: int = Field(100_000, ge=0)
    #: DuckDB worker threads of the store; 1 measured fastest end to end (docs/benchmarks.md)
    duckdb_threads: int = Field(1, ge=1)
    #: cap of DuckDB's buffer pool in the writing process (MB); larger data spills to disk
    duckdb_memory_mb: int = Field(128, ge=16)
    # machine learning on closed agg_1m windows (cryptostream.ml.live)
    ml: bool = True
    ml_models: Annotated[tuple[str, ...], NoDecode] = ("naive", "linear", "online_linear")
    ml_detectors: Annotated[tuple[str, ...], NoDecode] = ("isolation_forest", "half_space_trees")
    ml_warmup: int = Field(60, ge=3, description="closed windows per symbol before scoring")
    ml_retrain_every: int = Field(60, ge=1)
    ml_history: int = Field(1440, ge=10)
    contamination: float = Field(0.05, gt=0.0, lt=0.5)
    models_dir: Path | None = None
    #: seed of the models' randomness (separate from the simulator's ``seed``: the same
    #: windows get the same scores whatever produced them)
    ml_seed: int = 0
    # operation
    #: SIGINT/SIGTERM: stop gracefully, or exit (status 3) if that takes longer than this
    shutdown_timeout_s: float = Field(10.0, ge=0.0)
    progress: bool | None = None
    queue_batches: int = 8
    #: Prometheus /metrics, /healthz, /readyz on 127.0.0.1:N; 0 turns them off; unset: 9108,
    #: skipped with a warning when another process holds that port
    metrics_port: int | None = Field(None, ge=0, le=65535)
    log_format: Literal["human", "json"] = "human"

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: Any) -> Any:
        parts = [p for p in str(v).replace(" ", "").lower().split(",") if p]
        unknown = [p for p in parts if p not in ("binance", "replay", "simulate", "coingecko")]
        if unknown or not parts:
            raise ValueError(f"unknown source {unknown or v!r}: use binance, replay, simulate, "
                             "coingecko, or a trade source with coingecko (binance,coingecko)")
        if sum(p != "coingecko" for p in parts) > 1:
            raise ValueError("at most one trade source (binance, replay or simulate) per run")
        return ",".join(dict.fromkeys(parts))

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s for s in v.replace(" ", "").split(",") if s]
        bad = [s for s in v if not SYMBOL_RE.match(s)]
        if bad:
            raise ValueError(f"symbols must look like BTCUSDT (upper case), got {bad}")
        return tuple(v)

    @field_validator("sinks", mode="before")
    @classmethod
    def _sinks(cls, v: Any) -> Any:
        v = tuple(x for x in v.split(",") if x) if isinstance(v, str) else tuple(v)
        bad = [x for x in v if x != "duckdb" and not x.startswith(("postgres://", "postgresql://"))]
        if bad or not v:
            raise ValueError(f"a sink is 'duckdb' or a postgres:// DSN, got {bad or v}")
        return v

    @field_validator("replay", "windows", "ml_models", "ml_detectors", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return tuple(x.strip() for x in v.split(",") if x.strip()) if isinstance(v, str) else v

    @field_validator("ml_models")
    @classmethod
    def _ml_models(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        known = ("naive", "linear", "online_linear", "lstm")
        bad = [m for m in v if m not in known]
        if bad:
            raise ValueError(f"unknown model(s) {bad}; choose from {', '.join(known)}")
        return v if "naive" in v else ("naive", *v)  # the baseline is always on

    @field_validator("ml_detectors")
    @classmethod
    def _ml_detectors(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        known = ("isolation_forest", "half_space_trees")
        bad = [m for m in v if m not in known]
        if bad:
            raise ValueError(f"unknown detector(s) {bad}; choose from {', '.join(known)}")
        return v

    def ml_config(self):
        """The live ML stage's settings (None when ``ml`` is off)."""
        from cryptostream.ml.live import MLConfig

        if not self.ml:
            return None
        return MLConfig(forecasters=self.ml_models, detectors=self.ml_detectors,
                        warmup_windows=self.ml_warmup, retrain_every=self.ml_retrain_every,
                        history_windows=self.ml_history, contamination=self.contamination,
                        models_dir=self.models_dir, seed=self.ml_seed)

    @field_validator("speed", mode="before")
    @classmethod
    def _speed(cls, v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip() == ""):
            return None
        if isinstance(v, str) and v.strip().lower() == "max":
            return "max"
        f = float(v)
        if f <= 0:
            raise ValueError("speed must be 'max' or a positive number")
        return f

    @field_validator("until_idle_s", mode="before")
    @classmethod
    def _until_idle(cls, v: Any) -> Any:
        return parse_duration(v)

    @field_validator("duration_s", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        d = parse_duration(v)
        if d is not None and d <= 0:
            raise ValueError("must be a positive duration")
        return d

    @field_validator("flush_interval_s", "idle_timeout_s", mode="before")
    @classmethod
    def _optional_duration(cls, v: Any) -> Any:
        d = parse_duration(v)
        if d is not None and d < 0:
            raise ValueError("must be a duration >= 0")
        return d

    @field_validator("allowed_lateness_s", "max_clock_skew_s",
                     "lake_interval_s", "stale_after_s", "retention_s", "max_connection_age_s", "backfill_wait_s",
                     "coingecko_interval_s", mode="before")
    @classmethod
    def _durations(cls, v: Any) -> Any:
        d = parse_duration(v)
        if d is None or d < 0:
            raise ValueError("must be a duration >= 0")
        return d

    @field_validator("query_timeout_s", mode="before")
    @classmethod
    def _query_timeout(cls, v: Any) -> Any:
        d = parse_duration(v)
        if d is None or d <= 0:
            raise ValueError("must be a positive duration")
        return d

    @field_validator("lake", mode="before")
    @classmethod
    def _lake(cls, v: Any) -> Any:
        return None if v in ("", "none", "off", False) else v

    def window_specs(self) -> tuple[WindowSpec, ...]:
        try:
            specs = tuple(WindowSpec.parse(w) for w in self.windows)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if len({s.table for s in specs}) != len(specs):
            raise ConfigError("window tables must have distinct names")
        return specs

    @property
    def idle_after_s(self) -> float:
        if self.idle_timeout_s is not None:
            return self.idle_timeout_s
        # live exchange data: trade times follow the wall clock, so a symbol quiet for a tenth
        # of a second may already advance with it (its windows then close at end + lateness
        # instead of at its next trade); lateness is unchanged (decision 19)
        return 0.1 if self.trade_source == "binance" else 10.0

    @property
    def flush_every_s(self) -> float:
        if self.flush_interval_s is not None:
            return self.flush_interval_s
        return 0.025 if self.trade_source == "binance" else 1.0

    @property
    def trade_source(self) -> str | None:
        """binance | replay | simulate, or None when only CoinGecko runs."""
        return next((p for p in self.source.split(",") if p != "coingecko"), None)

    @property
    def coingecko(self) -> bool:
        return "coingecko" in self.source.split(",")

    @property
    def rest_url(self) -> str:
        """Binance REST base: as given, else the stream's host when it is a local stand-in."""
        if self.binance_rest_url:
            return self.binance_rest_url
        u = urlsplit(self.binance_url)
        if u.hostname in ("127.0.0.1", "localhost", "::1"):
            return urlunsplit(("https" if u.scheme == "wss" else "http", u.netloc, "", "", ""))
        return "https://api.binance.com"

    @property
    def pace(self) -> float | None:
        """Event time per wall time, None = as fast as possible.

        Replays default to 'max'; the simulator defaults to real time unless it has a
        ``duration`` (an endless simulation at full speed would only fill the disk) and no
        ``sim_rate`` (a rate is trades per wall-clock second).
        """
        if self.speed == "max":
            return None
        if self.speed is None:
            real_time = self.duration_s is None or self.sim_rate is not None
            return 1.0 if self.trade_source == "simulate" and real_time else None
        return float(self.speed)

    @property
    def sim_trades_per_symbol(self) -> float:
        """Mean simulated trades/s of each symbol: ``sim_rate`` shared out, else
        ``sim_trades_per_s``."""
        if self.sim_rate is not None:
            return self.sim_rate / max(1, len(self.symbols))
        return self.sim_trades_per_s

    @property
    def allowed_lateness_us(self) -> int:
        return round(self.allowed_lateness_s * US_PER_S)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # highest priority first: CLI (init) > environment > TOML file (model_config toml_file)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: str | Path | None = None, **cli: Any) -> Settings:
    """Build the settings from the layers; ``cli`` values of None are "not given".

    The TOML file is ``config_file``, else ``$CRYPTOSTREAM_CONFIG``, else a
    ``cryptostream.toml`` in the working directory when there is one.
    Raises ``ConfigError`` with every problem listed.
    """
    config_file = config_file or os.environ.get("CRYPTOSTREAM_CONFIG")
    if config_file is None and Path(DEFAULT_CONFIG_FILE).exists():
        config_file = DEFAULT_CONFIG_FILE
    cls: type[Settings] = Settings
    if config_file is not None:
        if not Path(config_file).exists():
            raise ConfigError(f"config file {config_file} does not exist")
        cls = type("FileSettings", (Settings,), {
            "model_config": SettingsConfigDict(**{**Settings.model_config,
                                                  "toml_file": str(config_file)})
        })
    unknown = sorted(
        k for k in os.environ
        if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in Settings.model_fields
        and k != ENV_PREFIX + "CONFIG"
    )
    if unknown:
        raise ConfigError(
            f"unknown environment setting(s) {', '.join(unknown)}; known: "
            + ", ".join(ENV_PREFIX + f.upper() for f in Settings.model_fields)
        )
    try:
        given = {k: v for k, v in cli.items() if v is not None and v != ()}
        return cls(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
