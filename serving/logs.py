"""The API's logs: one JSON object per line, with the id of the request being handled and no secret in it.

``churn serve`` configures this (``configure_api_logging``); the request id is set per request by serving.gateway
(the client's ``X-Request-ID``, or one of ours) and reaches every line logged while that request is handled.
Messages and tracebacks go through the process's :class:`~serving.redaction.Redactor`, whoever logged them.
"""

import json
import logging
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from pydantic_core import PydanticSerializationError, to_json

from churn_common.logging import configure_logging

REQUEST_ID: ContextVar[str | None] = ContextVar("churn_request_id", default=None)
AUDIT_LOGGER = "churn.audit"


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, request_id (when handling one), the record's ``fields`` (a dict passed as
    ``extra={"fields": ...}``), and the exception, if any."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self._redact = redact
        self._second: int | None = None
        self._stamp = ""

    def _time(self, created: float) -> str:
        # An audit line per request: the second's text is made once per second, not once per line.
        second = int(created)
        if second != self._second:
            self._second, self._stamp = second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._stamp}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self._redact(self.formatException(record.exc_info))
        try:
            return to_json(entry, fallback=str, inf_nan_mode="strings").decode()
        except PydanticSerializationError:  # a lone surrogate, which UTF-8 cannot hold: the stdlib escapes it
            return json.dumps(entry, default=str)


def configure_api_logging(level: str | int, redact: Callable[[str], str]) -> None:
    """JSON lines on stderr for every logger (uvicorn's included: run it with ``log_config=None``). The audit log
    is kept whatever the level: it is a record of who asked what, not diagnostics."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(redact))
    configure_logging(level, handler)
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.INFO)
