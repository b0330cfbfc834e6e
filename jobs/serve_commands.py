"""``churn serve``: the prediction API."""

import logging
from typing import Annotated

import typer

from churn_common.settings import Settings


def serve(
    access_log: Annotated[bool, typer.Option(help="Log every request (costs latency under load).")] = False,
) -> None:
    """Serve the prediction API on settings.api_host:api_port (one process; scale with replicas). Logs are JSON
    lines with the request id, credentials redacted; every prediction request leaves an audit line
    (logger churn.audit)."""
    import uvicorn

    from serving.app import create_app
    from serving.logs import configure_api_logging
    from serving.redaction import redactor_for
    from serving.server import server_config

    settings = Settings()
    configure_api_logging(logging.getLogger().level, redactor_for(settings))  # the level --log-level set
    config = server_config(settings, create_app(settings), access_log=access_log)
    uvicorn.Server(config).run()


def register_top_level(root: typer.Typer) -> None:
    """Mount ``churn serve``."""
    root.command("serve")(serve)
