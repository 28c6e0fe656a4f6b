"""Log output for ``shelf serve``: uvicorn-like text or one JSON object per line.

The library only logs, on ``modelshelf.serve`` (lifecycle, refusals, errors) and
``modelshelf.serve.access`` (one record per answer); it never configures logging, so an
application that embeds the server decides where records go.  :func:`configure` is what the
``shelf`` command uses.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
ACCESS = "modelshelf.serve.access"
_SILENT = logging.CRITICAL + 10  # above every level: the access logger says nothing
_MARK = "_modelshelf_handler"  # on the handler configure() installs, so a second call replaces it
# What every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class TextFormatter(logging.Formatter):
    """``INFO:     message``, uvicorn's layout (no timestamp: journald and container runtimes
    stamp each line), then the traceback when there is one."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return f"{record.levelname + ':':<9} {record.message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
    ``logger``, ``message``, ``exc`` (the formatted traceback, or null) and every ``extra``
    field given to the record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "exc": (self.formatException(record.exc_info)
                    if record.exc_info and record.exc_info[0] is not None else None),
        }
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        try:
            return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int beyond 64 bits in an extra
            return orjson.dumps({k: v if _encodes(v) else repr(v) for k, v in out.items()}).decode()


def _encodes(value: Any) -> bool:
    try:
        orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True


def configure(fmt: str = "text", access_log: bool = False, level: int | str = logging.INFO,
              stream: IO[str] | None = None) -> None:
    """Send log records to ``stream`` in ``fmt``; what the ``shelf`` command calls, never the library.

    modelshelf's loggers log at ``level`` and up; other libraries' (and Python warnings) at
    WARNING and up, through the same handler, so with ``json`` every line is JSON.  Calling it
    again replaces the handler it installed.

    Args:
        fmt: ``"text"`` (``INFO:     message``) or ``"json"`` (one object per line).
        access_log: let ``modelshelf.serve.access`` log one record per answer; silent otherwise.
        level: a :mod:`logging` level or its name (``"info"``, ``"debug"``, ...).
        stream: where lines go; standard error by default.

    Raises:
        ValueError: an unknown format or level.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")
    if isinstance(level, str):
        named = logging.getLevelName(level.upper())
        if not isinstance(named, int):
            raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
        level = named
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("modelshelf").setLevel(level)
    logging.getLogger(ACCESS).setLevel(logging.INFO if access_log else _SILENT)
    logging.captureWarnings(True)
