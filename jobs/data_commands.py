"""``churn data ...``: synthetic data generation and the validation gate."""

import logging
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from churn_common import privacy
from churn_common.errors import ChurnError, ConfigurationError, DataError
from churn_common.settings import Settings
from jobs.options import CatalogOption, settings_for
from products import GeneratorConfig, generator_for
from transformations.validation import validate

logger = logging.getLogger(__name__)

app = typer.Typer(no_args_is_help=True)


def _fail(exc: ChurnError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)


def _parse_date(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a YYYY-MM-DD date", param_hint=option) from exc


@app.command("generate")
def generate_command(
    users: Annotated[int | None, typer.Option(help="Number of users (default: settings n_users).")] = None,
    days: Annotated[int | None, typer.Option(help="Days of events from --start (default: settings).")] = None,
    start: Annotated[
        str | None, typer.Option(help="First day of events, YYYY-MM-DD (default: the period ends yesterday).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; the same seed gives identical files.")] = None,
    late_events: Annotated[
        float, typer.Option(help="Share of events ingested 1-5 days after they happened, e.g. 0.05.")
    ] = 0.0,
    drift: Annotated[
        str | None,
        typer.Option(help="YYYY-MM-DD from which behaviour drifts (what drifts: the product's generator's docstring)."),
    ] = None,
    dirty: Annotated[
        bool, typer.Option(help="Inject every bad-row class in known counts (raw/dirty_manifest.json).")
    ] = False,
    catalog: CatalogOption = None,
) -> None:
    """Generate the catalogue's product's synthetic raw users, events and hidden truth under the data directory."""
    settings = settings_for(catalog)
    try:
        n_days = days if days is not None else settings.n_days
        config = GeneratorConfig(
            n_users=users if users is not None else settings.n_users,
            start=_parse_date(start, "--start") or settings.generated_start(n_days),
            n_days=n_days,
            seed=seed if seed is not None else settings.seed,
            late_share=late_events,
            drift_date=_parse_date(drift, "--drift"),
            dirty=dirty,
        )
        began = time.perf_counter()
        summary = generator_for(settings.catalog)(settings.paths, config)
    except ConfigurationError as exc:
        raise _fail(exc) from exc
    last_day = config.start + timedelta(days=config.n_days - 1)
    typer.echo(
        f"generated {summary.n_users} users ({summary.n_churners} churn in the period {config.start}..{last_day}), "
        f"{summary.n_events} events in {summary.n_partitions} daily drops in {time.perf_counter() - began:.1f}s "
        f"-> {settings.paths.raw}"
    )


def _parse_now(text: str | None, settings: Settings) -> pd.Timestamp:
    if text is None:
        return pd.Timestamp(settings.clock())
    try:
        return pd.Timestamp(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not an ISO-8601 instant", param_hint="--now") from exc


@app.command("validate")
def validate_command(
    now: Annotated[
        str | None,
        typer.Option(help="Events after this instant are 'future' (ISO-8601, UTC; default: CHURN_NOW, else now)."),
    ] = None,
    max_quarantine_share: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Fail above this share of bad rows (default: settings)."),
    ] = None,
    catalog: CatalogOption = None,
    events: Annotated[Path | None, typer.Option(help="Raw events: a Parquet file or directory.")] = None,
    users: Annotated[Path | None, typer.Option(help="Raw users Parquet file.")] = None,
    batch: Annotated[
        str | None,
        typer.Option(
            help="Batch of event files outside a date=YYYY-MM-DD directory, and of the users' history "
            "(default: the file's stem or the directory's name)."
        ),
    ] = None,
) -> None:
    """Validate raw users and events; quarantine bad rows; publish this run's batches if within threshold.

    Each batch (a daily drop raw/events/date=YYYY-MM-DD/, or a named file) replaces only its own validated
    files; an input without rows publishes nothing."""
    settings = settings_for(catalog)
    try:
        report = validate(
            settings.paths,
            now=_parse_now(now, settings),
            max_quarantine_share=(
                settings.max_quarantine_share if max_quarantine_share is None else max_quarantine_share
            ),
            catalog=settings.event_catalog(),
            users_source=users,
            events_source=events,
            batch=batch,
            late_data_days=settings.late_data_days,
            erased=privacy.erased(settings),
        )
    except DataError as exc:
        raise _fail(exc) from exc
    typer.echo(report.summary())
