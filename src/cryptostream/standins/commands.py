"""The ``fake-binance`` command: serve recorded trades like Binance spot on a local port."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from cryptostream.errors import ConfigError, SourceError

if TYPE_CHECKING:
    from cryptostream.standins.binance import FakeBinance


def register(app: typer.Typer) -> None:
    """Add the ``fake-binance`` command to ``app``."""
    app.command("fake-binance")(fake_binance)


def fake_binance(
    recording: Annotated[list[str], typer.Option(
        "--recording", help="[SYMBOL=]FILE to replay: WebSocket trade recording (JSON lines, "
                            "hftbacktest) or official trade CSV/ZIP; .gz ok. Repeatable.")],
    port: Annotated[int, typer.Option(help="TCP port for WebSocket and REST; 0 picks a free one.")] = 0,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    speed: Annotated[float, typer.Option(help="Replay clock rate: N x real time.")] = 1.0,
    ping_interval: Annotated[float, typer.Option(
        help="Seconds between the server's pings; 0 disables them.")] = 20.0,
    pong_timeout: Annotated[float, typer.Option(
        help="Seconds a pong may take before the connection is closed.")] = 60.0,
    max_connection_age: Annotated[float, typer.Option(
        help="Seconds after which a connection is closed (Binance: 24 h).")] = 86400.0,
    shutdown_after: Annotated[float | None, typer.Option(
        help="Send serverShutdown this many seconds after a connection opens.")] = None,
    shutdown_grace: Annotated[float, typer.Option(
        help="Seconds from serverShutdown to the close.")] = 5.0,
    drop_every: Annotated[int | None, typer.Option(
        help="Drop each connection (no close frame) after N market-data messages.")] = None,
    gap_every: Annotated[int | None, typer.Option(
        help="After every N trades of a symbol, withhold --gap-size trades from the streams "
             "(REST still has them).")] = None,
    gap_size: Annotated[int, typer.Option(help="Trades withheld per gap.")] = 5,
    stall_after: Annotated[int | None, typer.Option(
        help="After N market-data messages, send a connection nothing for --stall-seconds.")] = None,
    stall_seconds: Annotated[float, typer.Option(help="Length of the stall.")] = 0.0,
    malformed_every: Annotated[int | None, typer.Option(
        help="After every N market-data messages, also send a malformed frame.")] = None,
    rest_fail: Annotated[list[str] | None, typer.Option(
        "--rest-fail", help="COUNT:STATUS: answer the next COUNT REST data requests with "
                            "STATUS (429 or 418). Repeatable.")] = None,
    max_incoming_per_s: Annotated[int, typer.Option(
        help="Incoming messages per second and connection before it is closed.")] = 5,
    max_connections_per_5min: Annotated[int, typer.Option(
        help="Connection attempts per IP and 5 minutes before 429.")] = 300,
    weight_limit: Annotated[int, typer.Option(
        "--weight-limit", help="REST request weight per IP and minute before 429.")] = 6000,
    rebase_time: Annotated[bool, typer.Option(
        "--rebase-time/--recorded-time",
        help="Shift trade times so the replay looks live (else send the recordings verbatim).",
    )] = False,
    seed: Annotated[int, typer.Option(help="Seed of the fault choices.")] = 0,
) -> None:
    """Serve recorded trades like the Binance spot API (WebSocket streams + REST) on one port."""
    from cryptostream.standins.binance import FakeBinance, FakeOptions

    options = FakeOptions(
        speed=speed, ping_interval_s=ping_interval or None, pong_timeout_s=pong_timeout,
        max_connection_age_s=max_connection_age, shutdown_after_s=shutdown_after,
        shutdown_grace_s=shutdown_grace, drop_every=drop_every, gap_every=gap_every,
        gap_size=gap_size, stall_after=stall_after, stall_s=stall_seconds,
        malformed_every=malformed_every, max_incoming_per_s=max_incoming_per_s,
        max_connections_per_5min=max_connections_per_5min, weight_limit_per_min=weight_limit,
        rebase_time=rebase_time, seed=seed, rest_fail=tuple(_rest_fail(s) for s in rest_fail or ()),
    )
    server = FakeBinance(recording, options, host=host, port=port)
    asyncio.run(_serve(server))


def _rest_fail(spec: str) -> tuple[int, int]:
    """``COUNT:STATUS`` -> ``(count, status)``.

    >>> _rest_fail("3:418")
    (3, 418)
    """
    count, _, status = spec.partition(":")
    try:
        return int(count), int(status or 429)
    except ValueError:
        raise ConfigError(f"--rest-fail {spec!r}: write COUNT:STATUS, e.g. 3:429") from None


async def _serve(server: FakeBinance) -> None:
    try:
        await server.start()
    except OSError as exc:
        raise SourceError(
            f"cannot listen on {server.host}:{server.port} ({exc.strerror or exc}); "
            "pick another --port, or 0 for a free one"
        ) from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    n = server.trade_count
    typer.echo(
        f"fake-binance listening on {server.ws_url} (REST {server.rest_url}), "
        f"{len(server.symbols)} symbol{'s' if len(server.symbols) != 1 else ''}, "
        f"{n:,} trade{'s' if n != 1 else ''}"
    )
    streams = "/".join(f"{s.lower()}@trade" for s in server.symbols[:3])
    typer.echo(f"  try: {server.ws_url}/stream?streams={streams}   (Ctrl-C stops)")
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()
