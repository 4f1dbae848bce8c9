"""One exception hierarchy for everything CryptoStream raises on purpose.

Every message says what went wrong and what to do next. Bad *records* are never raised:
they become rejects with a reason code. These exceptions are for conditions that stop a
command (bad configuration, unreadable input, unwritable store, missing optional extra).
"""

from __future__ import annotations


class CryptoStreamError(Exception):
    """Base class: ``cryptostream`` commands print the message and exit with status 2."""

    exit_code = 2


class ConfigError(CryptoStreamError):
    """Settings that cannot work together, an unknown key, or a malformed value."""


class SourceError(CryptoStreamError):
    """A source cannot go on at all (missing file, unreadable archive, refused connection)."""


class SinkError(CryptoStreamError):
    """A store cannot be written (locked by another writer, disk full, bad path)."""


class QueryError(CryptoStreamError):
    """A query was refused (not read-only) or failed."""


class MissingDependency(CryptoStreamError, ImportError):
    """An optional extra is not installed; the message names the ``pip install`` to run."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"{module} is not installed; install it with: pip install 'cryptostream[{extra}]'"
        )
        self.module = module
        self.extra = extra


class ModelError(CryptoStreamError):
    """A saved model cannot be used (corrupted or foreign file, incompatible features)."""
