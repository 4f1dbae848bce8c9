"""Signal handling with a bounded stop: SIGINT/SIGTERM stop gracefully, or exit in time.

The first SIGINT or SIGTERM asks the role to stop (sources stop, queues drain, final windows
and checkpoints are written, sinks close). If it has not exited ``timeout_s`` later — a
store or broker that hangs — the process exits with status 3 and says why; a second signal
exits at once. Everything committed before stays: every flush is one transaction, and
offsets/checkpoints are only ever written with the rows they cover.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("cryptostream.shutdown")

FORCED_EXIT = 3


def install(stop: Callable[[], None], timeout_s: float = 10.0) -> dict | None:
    """Route SIGINT/SIGTERM to ``stop`` (main thread only); returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return None
    state = {"signalled": False}

    def force(reason: str) -> None:
        msg = f"cryptostream: {reason}; exiting now (every committed flush is kept)"
        log.error(msg)
        print(msg, file=sys.stderr, flush=True)
        os._exit(FORCED_EXIT)

    def handler(signum, frame) -> None:
        if state["signalled"]:
            force(f"second {signal.Signals(signum).name}")
        state["signalled"] = True
        if timeout_s > 0:
            timer = threading.Timer(timeout_s, force,
                                    [f"did not stop within {timeout_s:g} s of the signal"])
            timer.daemon = True
            timer.start()
        stop()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore(old: dict | None) -> None:
    for sig, h in (old or {}).items():
        signal.signal(sig, h)
