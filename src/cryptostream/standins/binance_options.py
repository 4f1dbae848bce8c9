"""The knobs of the Binance stand-in (:class:`FakeOptions`) and what it counts (:class:`FakeStats`)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, fields

from cryptostream.errors import ConfigError


@dataclass(frozen=True)
class FakeOptions:
    """How the stand-in behaves. Every fault knob is off by default.

    Clock and keepalive:
        speed: replay clock rate, exchange ms per wall ms.
        ping_interval_s / pong_timeout_s: a ping (with a payload) every ``ping_interval_s``;
            the connection is closed (1011) when its pong has not come ``pong_timeout_s``
            later. ``None`` disables pings.
        max_connection_age_s: connections older than this are closed (1001).
        shutdown_after_s / shutdown_grace_s: that long after a connection opens it gets
            ``{"e":"serverShutdown","E":<clock ms>}``, and is closed (1001) ``grace`` later.
        rebase_time: shift every E/T by (wall now - first trade time) when the clock starts.
    Faults (per connection unless said):
        drop_every: abort the TCP connection (no close frame) after N market-data messages.
        gap_every / gap_size: per symbol, for every client: after every N trades withhold the
            next ``gap_size`` from the streams (REST still serves them).
        stall_after / stall_s: after N market-data messages send no market data for S
            seconds (what happens meanwhile is skipped); once per connection.
        malformed_every: after every N market-data messages also send one malformed frame.
        rest_fail: ``((count, status), ...)``: answer the next ``count`` REST data requests
            with ``status`` (429 or 418, ``Retry-After: 1``), in order.
    Limits (as Binance): ``max_incoming_per_s`` incoming messages per connection and second,
    ``max_streams_per_connection`` streams, ``max_connections_per_5min`` connection attempts
    per IP, ``weight_limit_per_min`` REST request weight per IP and rolling minute.
    ``seed`` picks where the rotation of malformed-frame kinds starts.
    ``record_send_times`` (benchmarks): stamp each trade event in
    :attr:`FakeBinance.send_times <cryptostream.standins.binance.FakeBinance.send_times>`.
    """

    speed: float = 1.0
    ping_interval_s: float | None = 20
    pong_timeout_s: float = 60
    max_connection_age_s: float = 86400
    shutdown_after_s: float | None = None
    shutdown_grace_s: float = 5
    drop_every: int | None = None
    gap_every: int | None = None
    gap_size: int = 5
    stall_after: int | None = None
    stall_s: float = 0
    malformed_every: int | None = None
    max_incoming_per_s: int = 5
    max_connections_per_5min: int = 300
    weight_limit_per_min: int = 6000
    rebase_time: bool = False
    seed: int = 0
    rest_fail: tuple[tuple[int, int], ...] = ()
    max_streams_per_connection: int = 1024
    record_send_times: bool = False

    def __post_init__(self) -> None:
        def positive(name: str, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if (value is None or isinstance(value, bool) or not math.isfinite(float(value))
                    or value <= 0):
                raise ConfigError(f"fake-binance: {name} must be a positive number, not {value!r}")

        for name in ("speed", "pong_timeout_s", "max_connection_age_s", "max_incoming_per_s",
                     "max_connections_per_5min", "weight_limit_per_min", "gap_size",
                     "max_streams_per_connection"):
            positive(name)
        for name in ("ping_interval_s", "shutdown_after_s", "drop_every", "gap_every",
                     "stall_after", "malformed_every"):
            positive(name, allow_none=True)
        for name in ("shutdown_grace_s", "stall_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fake-binance: {name} must be >= 0, not {getattr(self, name)!r}")
        for count, status in self.rest_fail:
            if count < 0 or status not in (418, 429):
                raise ConfigError(
                    f"fake-binance: rest_fail entries are (count >= 0, 429 or 418), not {(count, status)}"
                )

    @classmethod
    def names(cls) -> list[str]:
        """The option names, in declaration order.

        >>> FakeOptions.names()[:3]
        ['speed', 'ping_interval_s', 'pong_timeout_s']
        """
        return [f.name for f in fields(cls)]


@dataclass
class FakeStats:
    """Counters of one stand-in, updated by its event loop (read them from any thread).

    ``connections_closed`` counts closes by reason: ``drop``, ``rate``, ``age``,
    ``shutdown``, ``pong_timeout``, ``slow`` (a client that cannot keep up), ``error`` (a
    bug in the stand-in, logged), ``client`` (the client closed or went away) and
    ``server_stop``. ``withheld`` holds, per symbol,
    the ``(from_id, to_id)`` ranges the ``gap_every`` fault kept off the streams so far.
    """

    connections_opened: int = 0
    connections_refused: int = 0
    connections_closed: Counter[str] = field(default_factory=Counter)
    pings_sent: int = 0
    pongs_received: int = 0
    trade_messages_sent: int = 0
    malformed_sent: int = 0
    control_messages: int = 0
    rate_violations: int = 0
    stalls: int = 0
    stall_skipped: int = 0
    rest_requests: Counter[str] = field(default_factory=Counter)
    rest_429: int = 0
    rest_418: int = 0
    withheld: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def withheld_ids(self, symbol: str) -> list[int]:
        """Every trade id withheld from ``symbol``'s streams so far (ids consecutive within a
        range, as in every exchange recording)."""
        return [i for lo, hi in list(self.withheld.get(symbol, ())) for i in range(lo, hi + 1)]
