"""``churn features build``: the rolling feature snapshots."""

from datetime import date, datetime
from typing import Annotated

import typer

from jobs.options import CatalogOption, settings_for
from transformations.features import build_features

app = typer.Typer(no_args_is_help=True)

_DAY = ["%Y-%m-%d"]


def _day(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


@app.command("build")
def build(
    start: Annotated[
        datetime | None,
        typer.Option(formats=_DAY, help="First day to rebuild (late_data_days before it are rebuilt too)."),
    ] = None,
    end: Annotated[
        datetime | None, typer.Option(formats=_DAY, help="Last day to rebuild (default: last event day).")
    ] = None,
    catalog: CatalogOption = None,
) -> None:
    """Build the daily per-user snapshots of rolling-window features (all days with events by default)."""
    summary = build_features(settings_for(catalog), _day(start), _day(end))
    typer.echo(f"build {summary.seq}: rebuilt days {summary.first_day} .. {summary.last_day}")
    typer.echo(f"  {summary.rows:,} snapshot rows written ({summary.later_versions:,} later versions)")
    typer.echo(f"snapshots: {summary.snapshots}")
    days = f"days {summary.data_first_day} .. {summary.data_last_day}"
    typer.echo(f"  {summary.users:,} users, {summary.columns} columns, {days}")
    typer.echo(f"accounts: {summary.accounts:,} history rows")
