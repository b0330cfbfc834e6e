"""``churn serve``: the prediction API."""

from typing import Annotated

import typer

from churn_common.settings import Settings


def serve(
    access_log: Annotated[bool, typer.Option(help="Log every request (costs latency under load).")] = False,
) -> None:
    """Serve the prediction API on settings.api_host:api_port (one process; scale with replicas)."""
    import uvicorn

    from serving.app import create_app

    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=access_log,
    )


def register_top_level(root: typer.Typer) -> None:
    """Mount ``churn serve``."""
    root.command("serve")(serve)
