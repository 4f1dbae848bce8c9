"""Start the Streamlit server of ``cryptostream dashboard`` (the process becomes Streamlit).

The command line is ``python -m streamlit run dashboard/app.py`` with the server bound to
``host:port`` (127.0.0.1 by default), headless, without usage statistics or file watching;
the store and refresh interval follow ``--`` as the app's own arguments (a PostgreSQL DSN
travels in the environment instead).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from cryptostream.dashboard import APP_PATH
from cryptostream.errors import CryptoStreamError

#: the environment variable that carries ``--postgres`` to the app (no CRYPTOSTREAM_ prefix:
#: it is not a setting)
DSN_ENV = "_CRYPTOSTREAM_DASHBOARD_DSN"


def streamlit_command(*, db: Path | None, postgres: str | None, host: str, port: int,
                      refresh: float, broker: str | None = None,
                      group: str = "cryptostream") -> list[str]:
    """The argv that serves the dashboard.

    >>> cmd = streamlit_command(db=Path("x.duckdb"), postgres=None, host="127.0.0.1",
    ...                         port=8600, refresh=5)
    >>> cmd[cmd.index("--server.port") + 1], cmd[cmd.index("--") + 1:]
    ('8600', ['--refresh', '5.0', '--db', 'x.duckdb'])
    """
    app_args = ["--refresh", str(float(refresh))]
    if not postgres:  # a PostgreSQL DSN (it may hold a password) goes through the environment
        app_args += ["--db", str(db)]
    if broker:
        app_args += ["--broker", broker, "--group", group]
    return [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.address", host, "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--server.runOnSave", "false",
        "--global.developmentMode", "false", "--client.toolbarMode", "minimal",
        "--theme.base", "light", "--logger.level", "warning",
        "--", *app_args,
    ]


def check_port(host: str, port: int) -> None:
    """Raise a ``CryptoStreamError`` saying what to do when ``host:port`` cannot be bound."""
    if not 1 <= port <= 65535:
        raise CryptoStreamError(f"--port {port} is not a TCP port (1-65535)")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        raise CryptoStreamError(
            f"cannot serve the dashboard on {host}:{port} ({exc.strerror or exc}); another "
            "program probably uses that port: pick a free one with --port N"
        ) from exc


def serve(cmd: list[str], postgres: str | None = None) -> None:
    """Replace this process with Streamlit (signals then reach the server directly); a
    PostgreSQL DSN is handed over in ``DSN_ENV``, never on the command line (``ps`` shows it)."""
    env = dict(os.environ)
    env.pop(DSN_ENV, None)
    if postgres:
        env[DSN_ENV] = postgres
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)
