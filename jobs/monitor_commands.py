"""``churn score``: batch scoring, the prediction log and the high-risk list. ``churn monitor drift``: the scoring
snapshot against the champion's training reference. ``churn monitor performance``: the batch log's performance per
scoring date, estimated and, once labels matured, measured. ``churn monitor report``: the day's HTML page of them.
``churn retrain``: retrain when those findings call for it, behind the promotion gate."""

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from churn_common.errors import ChurnError
from jobs.options import CatalogOption, settings_for

monitor_app = typer.Typer(no_args_is_help=True)


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


@monitor_app.command("drift")
def drift_command(
    day: Annotated[
        datetime | None,
        typer.Option("--date", formats=["%Y-%m-%d"], help="The scoring date to check. Default: the latest scored."),
    ] = None,
    catalog: CatalogOption = None,
) -> None:
    """Per-feature PSI (and Jensen-Shannon distance) of a date's scored features against the champion's training
    reference, and the same for its scores; writes reports/drift/date=D.json. Drift is a finding: exit 0."""
    from monitoring.drift import drift_report

    try:
        report = drift_report(settings_for(catalog), day.date() if day else None)
    except ChurnError as exc:
        # No champion, no reference or no snapshot: nothing was measured, which is a failure, unlike drift.
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(json.dumps(report.summary(), indent=2))


@monitor_app.command("performance")
def performance_command(
    day: Annotated[
        datetime | None,
        typer.Option("--date", formats=["%Y-%m-%d"], help="Only this scoring date. Default: every one up to now."),
    ] = None,
    catalog: CatalogOption = None,
) -> None:
    """ROC-AUC, PR-AUC, top-decile lift and calibration per batch scoring date: estimated from the probabilities
    (CBPE) and, once the labels matured, measured, side by side; flags calibration drift and decay. Writes
    reports/performance/date=D.json per date. Drift or decay is a finding: exit 0."""
    from monitoring.performance import performance_report

    try:
        report = performance_report(settings_for(catalog), day.date() if day else None)
    except ChurnError as exc:
        # No champion or no prediction log: nothing was measured, which is a failure, unlike a finding.
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(json.dumps(report.summary(), indent=2))


@monitor_app.command("report")
def report_command(
    day: Annotated[
        datetime | None,
        typer.Option("--date", formats=["%Y-%m-%d"], help="The scoring date. Default: the latest scored."),
    ] = None,
    catalog: CatalogOption = None,
) -> None:
    """Draw the day's HTML report (drift per feature with its distributions, the scores, estimated and matured
    performance over time, the retraining decision) from the reports the monitoring steps wrote."""
    from monitoring.drift import latest_scoring_day
    from monitoring.report import write_daily_report

    settings = settings_for(catalog)
    try:
        target = write_daily_report(settings, day.date() if day else latest_scoring_day(settings.paths))
    except ChurnError as exc:
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(str(target))


def retrain_command(
    force: Annotated[bool, typer.Option(help="Retrain even without a trigger or within the cooldown.")] = False,
    catalog: CatalogOption = None,
) -> None:
    """Retrain when drift, decay or the champion's age calls for it (or --force), and let the promotion gate
    promote the challenger only if it is non-inferior to the champion. Prints the decision; exit 0 whatever it is
    (a refused challenger is the gate working), 1 when the decision could not be made."""
    from jobs.retrain import retrain

    decision = retrain(settings_for(catalog), force=force)
    typer.echo(json.dumps(decision.as_dict(), indent=2, default=str))


def register_top_level(root: typer.Typer) -> None:
    root.command("score")(score_command)
    root.command("retrain")(retrain_command)
    root.add_typer(
        monitor_app,
        name="monitor",
        help="Watch the platform: drift of the scored features, performance of the scores, the daily report.",
    )
