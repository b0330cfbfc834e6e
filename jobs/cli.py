"""The ``churn`` command. Each stage's commands live in their own module and are mounted here."""

import os
from typing import Annotated

import typer

from churn_common.errors import ChurnError
from churn_common.logging import configure_logging
from churn_common.settings import Settings
from jobs import (
    data_commands,
    demo,
    feast_commands,
    feature_commands,
    model_commands,
    monitor_commands,
    pipeline_commands,
    privacy_commands,
    push_commands,
    serve_commands,
)

app = typer.Typer(help="Churn prediction platform on Feast.", no_args_is_help=True, add_completion=False)
app.add_typer(data_commands.app, name="data", help="Generate and validate raw events.")
app.add_typer(feature_commands.app, name="features", help="Build feature snapshots; apply the Feast repo.")
app.add_typer(model_commands.model_app, name="model", help="Promote or roll back the served model.")
app.add_typer(pipeline_commands.app, name="pipeline", help="The scheduled jobs: validate, build, materialise.")
feast_commands.register(features_app=feature_commands.app, root=app)
model_commands.register_top_level(app)
serve_commands.register_top_level(app)
monitor_commands.register_top_level(app)
privacy_commands.register_top_level(app)
push_commands.register(features_app=feature_commands.app, root=app)
app.command("demo")(demo.demo_command)


@app.callback()
def configure(
    log_level: Annotated[str, typer.Option(help="Logging level for this run.")] = "",
) -> None:
    configure_logging(log_level or Settings().log_level)
    # MLflow draws a progress bar on stderr for every artifact it downloads (each model load): noise in a job's log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main() -> None:
    """Console entry point: our own errors end the run with their message and exit code 1, no traceback."""
    try:
        app()
    except ChurnError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
