"""Logging setup for entry points only; library modules just call ``logging.getLogger(__name__)``."""

import logging

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(), format=_FORMAT, force=True)
    # Feast and MLflow are chatty at INFO; their warnings still come through.
    for noisy in ("feast", "mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
