"""``churn pipeline daily``: validate the day's drop, build, materialise."""

import json
from datetime import datetime
from typing import Annotated

import typer

from churn_common.settings import Settings

app = typer.Typer(no_args_is_help=True)


@app.command("daily")
def daily(
    day: Annotated[
        datetime | None,
        typer.Option(
            "--date", formats=["%Y-%m-%d"], help="The day whose drop to process (default: yesterday, UTC; CHURN_NOW)."
        ),
    ] = None,
) -> None:
    """Validate the day's raw drop (and any missed before it), build features, bring the online store up to date."""
    from jobs.pipeline import run_daily

    report = run_daily(Settings(), day.date() if day else None)
    typer.echo(json.dumps(report.as_dict(), indent=2, default=str))
