"""``churn score``: batch scoring, the prediction log and the high-risk list."""

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from jobs.options import CatalogOption, settings_for


def score_command(
    at: Annotated[
        datetime | None, typer.Option(help="Score as of this instant (UTC). Default: now (CHURN_NOW if set).")
    ] = None,
    catalog: CatalogOption = None,
) -> None:
    """Score every user the population rule scores at the instant, with the champion; write the prediction log, the
    scored features and the ranked high-risk list for that date (re-scoring a date replaces them)."""
    from monitoring.scoring import score_batch

    moment = at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at
    report = score_batch(settings_for(catalog), moment)
    typer.echo(json.dumps(report.as_dict(), indent=2))


def register_top_level(root: typer.Typer) -> None:
    root.command("score")(score_command)
