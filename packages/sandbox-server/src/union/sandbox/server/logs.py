"""Structured logs: one JSON object per line on stderr.

Every record carries ``ts`` (RFC 3339, UTC), ``level``, ``logger`` and ``msg``, plus the
fields passed with ``extra={"fields": {...}}``. Tokens and payloads are never logged.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

__all__ = ["JsonFormatter", "configure", "log_event"]

LOGGER = logging.getLogger("union.sandbox.server")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure(level: str = "info", stream: Any = None) -> None:
    """Send the server's (and hypercorn's) logs to ``stream`` as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("union.sandbox", "hypercorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def log_event(msg: str, level: int = logging.INFO, **fields: Any) -> None:
    LOGGER.log(level, msg, extra={"fields": fields})
