"""Log setup of every command: human or JSON lines on stderr, secrets redacted.

``configure(fmt, secrets)`` is called once by the CLI. ``cryptostream.*`` loggers log from
INFO, everything else from WARNING. JSON lines carry ``ts``, ``level``, ``logger``,
``message`` and the record's context (``extra=``) fields; human lines show the context as
``key=value``. Every line passes ``redact``: DSN passwords (URL and ``password=`` forms)
and the registered secrets (PostgreSQL passwords, ``$COINGECKO_API_KEY``) become ``***``.

>>> redact("postgresql://bob:s3cret@db/cs")
'postgresql://bob:***@db/cs'
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import time

_SECRETS: set[str] = set()
_DSN_PASSWORD = re.compile(r"((?:postgres(?:ql)?)://[^:@/?#\s]*):[^@/?#\s]*@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&'\"]*)", re.IGNORECASE)
#: attributes every LogRecord has: the rest came with ``extra=`` and is context
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime",
                                                                       "taskName"}
_HANDLER_NAME = "cryptostream"
API_KEY_ENV = "COINGECKO_API_KEY"


def add_secret(value: str | None) -> None:
    """Never let ``value`` appear in a log line (ignored when too short to be a secret)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` without DSN passwords and registered secrets."""
    text = _DSN_PASSWORD.sub(r"\1:***@", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    for s in _SECRETS:
        if s in text:
            text = text.replace(s, "***")
    return text


def secrets_of(settings) -> list[str]:
    """The secrets a run could leak: PostgreSQL passwords of its sinks, the CoinGecko key."""
    out = [os.environ.get(API_KEY_ENV, "").strip()]
    for spec in getattr(settings, "sinks", ()):
        if spec.startswith(("postgres://", "postgresql://")):
            m = re.match(r"^postgres(?:ql)?://[^:@/?#]*:([^@/?#]*)@", spec)
            if m:
                out.append(m.group(1))
            m = re.search(r"[?&]password=([^&]*)", spec)
            if m:
                out.append(m.group(1))
    return [s for s in out if s]


def _context(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, context."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc = {"ts": f"{ts}.{int(record.msecs):03d}Z", "level": record.levelname,
               "logger": record.name, "message": redact(record.getMessage())}
        for k, v in _context(record).items():
            if isinstance(v, (list, tuple, dict)):
                v = json.loads(redact(json.dumps(v, default=str)))
            elif not isinstance(v, (int, float, bool, type(None))):
                v = redact(str(v))
            doc[k] = v
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """``2026-01-01 12:00:00,000 WARNING cryptostream.x: message  key=value ...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = _context(record)
        if ctx:
            line += "  " + " ".join(f"{k}={v}" for k, v in ctx.items())
        return redact(line)


def configure(fmt: str = "human", secrets: list[str] = (), stream=None) -> None:
    """Install the handler on the root logger (once: a second call replaces it)."""
    if fmt not in ("human", "json"):
        raise ValueError(f"log format {fmt!r}: use human or json")
    for s in secrets:
        add_secret(s)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == _HANDLER_NAME:
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("cryptostream").setLevel(logging.INFO)
    if fmt == "json":
        previous = sys.excepthook

        def hook(kind, value, tb):
            if issubclass(kind, KeyboardInterrupt):
                return previous(kind, value, tb)
            logging.getLogger("cryptostream").critical("uncaught %s", kind.__name__,
                                                       exc_info=(kind, value, tb))
            return None

        sys.excepthook = hook


class LogLines(io.TextIOBase):
    """A text stream whose lines become log records (the CLI's console in JSON mode):
    ``error: ...`` lines at ERROR, ``warning: ...`` at WARNING, the rest at INFO."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self._buf = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        self._buf += s
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            line = line.rstrip()
            if not line.strip():
                continue
            low = line.lstrip().lower()
            level = logging.ERROR if low.startswith("error:") else \
                logging.WARNING if low.startswith("warning:") else logging.INFO
            self.logger.log(level, line.strip())
        return len(s)

    def flush(self) -> None:
        if self._buf.strip():
            line, self._buf = self._buf, ""
            self.write(line + "\n")


def json_console(logger: logging.Logger):
    """A rich ``Console`` for JSON mode: each printed line becomes a log record, and each
    row of a printed table one record with the row as a ``row`` object (numbers as numbers)."""
    from rich.console import Console
    from rich.table import Table

    class LogConsole(Console):
        def print(self, *objects, **kw) -> None:
            rest = [o for o in objects if not isinstance(o, Table)]
            for table in (o for o in objects if isinstance(o, Table)):
                names = [str(c.header) for c in table.columns]
                title = str(table.title or "table")
                for row in zip(*(list(c.cells) for c in table.columns)):
                    logger.info(title, extra={"row": {n: _number(str(v))
                                                      for n, v in zip(names, row)}})
            if rest:
                super().print(*rest, **kw)

    return LogConsole(file=LogLines(logger), no_color=True, width=200, soft_wrap=True,
                      highlight=False)


def _number(text: str):
    """``"1,267"`` -> 1267, ``"2.51"`` -> 2.51, anything else unchanged."""
    try:
        return int(text.replace(",", ""))
    except ValueError:
        try:
            return float(text.replace(",", ""))
        except ValueError:
            return text
