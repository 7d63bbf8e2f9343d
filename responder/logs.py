"""Where log records go and how they look: one line of text each (``RESPONDER_LOG_FORMAT=text``,
the default) or one JSON object each (``json``), for log shippers that would otherwise have to
parse free text — aiohttp's access log included, whose fields (``remote_address``,
``response_status``, …) come along as keys of their own.

The start-up banner is printed, not logged, and stays plain text in both formats.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from types import TracebackType

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "responder"
# What every LogRecord carries; anything else on a record came from a log call's ``extra``.
RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, ``exception`` (the traceback's text, when there is one), ``stack`` (when the
    call asked for it), then the call's extra fields (a value JSON cannot hold as it is is
    written as its ``str``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter_for(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("responder").critical("uncaught exception", exc_info=(kind, exc, tb))


def configure(log_format: str) -> None:
    """Log INFO and above to stderr in ``log_format`` (``text`` or ``json``). Like
    ``logging.basicConfig`` it leaves alone a root logger someone else has given handlers (a
    test harness capturing logs); called again, it only changes the format of its own handler.
    In JSON, Python's warnings and a crash's traceback become records too, not loose text."""
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if handler.get_name() == HANDLER_NAME]
    if root.handlers and not ours:
        return
    if ours:
        handler = ours[0]
    else:
        handler = logging.StreamHandler()
        handler.set_name(HANDLER_NAME)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    handler.setFormatter(formatter_for(log_format))
    logging.captureWarnings(log_format == "json")
    sys.excepthook = _log_uncaught if log_format == "json" else sys.__excepthook__
