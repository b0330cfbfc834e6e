"""Logging setup for entry points only; library modules just call ``logging.getLogger(__name__)``."""

import logging

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str | int = "INFO", handler: logging.Handler | None = None) -> None:
    """Plain text lines on stderr, or what ``handler`` writes (the API's JSON lines)."""
    level = level.upper() if isinstance(level, str) else level
    if handler is None:
        logging.basicConfig(level=level, format=_FORMAT, force=True)
    else:
        logging.basicConfig(level=level, handlers=[handler], force=True)
    # Feast and MLflow are chatty at INFO; their warnings still come through.
    for noisy in ("feast", "mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
