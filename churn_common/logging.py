"""Logging setup for entry points only; library modules just call ``logging.getLogger(__name__)``."""

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes, not the one there at setup: a caller that swaps
    and closes it (typer's CliRunner) must not leave a handler on a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: ANN201 - logging.StreamHandler's attribute
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass


def configure_logging(level: str | int = "INFO", handler: logging.Handler | None = None) -> None:
    """Plain text lines on stderr, or what ``handler`` writes (the API's JSON lines)."""
    level = level.upper() if isinstance(level, str) else level
    if handler is None:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter(_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Feast and MLflow are chatty at INFO; their warnings still come through.
    for noisy in ("feast", "mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
