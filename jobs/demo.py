"""``churn demo``: the whole main job on the embedded default profile, ending with the API serving.

The synthetic period ends yesterday by the settings clock, so the newest snapshots are fresh when the API starts and
`/predict` answers instead of reporting stale features. The data goes through the daily pipeline as the CronJob runs
it: the first run validates every daily drop, builds and materialises.
"""

import json
import logging
from datetime import timedelta
from typing import Annotated

import typer

from churn_common.settings import Settings

logger = logging.getLogger(__name__)


def _step(title: str) -> None:
    typer.secho(f"\n== {title}", fg=typer.colors.CYAN, bold=True)


def _generate(settings: Settings, users: int, days: int) -> None:
    from products import GeneratorConfig, generator_for

    generate = generator_for(settings.catalog)
    start = settings.generated_start(days)
    _step(f"generate {users} users x {days} days ({start} .. {start + timedelta(days=days - 1)})")
    summary = generate(settings.paths, GeneratorConfig(users, start, days, settings.seed, late_share=0.02))
    typer.echo(f"{summary.n_events} events in {summary.n_partitions} daily drops -> {settings.paths.raw}")


def _apply(settings: Settings) -> None:
    from churn_common.store import apply_repo

    _step("feast apply")
    store = apply_repo(settings)
    typer.echo(f"project {store.project}: {len(store.list_feature_views())} feature views registered")


def _daily_pipeline(settings: Settings) -> None:
    from jobs.pipeline import run_daily

    _step("daily pipeline: validate every drop, build feature snapshots, materialise")
    report = run_daily(settings)
    validation, build = report.validation or {}, report.build or {}
    events = validation.get("events", {})
    typer.echo(f"validated {len(report.validated)} drops: {events.get('rows_accepted')} events accepted")
    typer.echo(f"build {build.get('seq')}: {build.get('rows')} snapshot rows ({build.get('later_versions')} later)")
    materialization = report.materialization or {}
    typer.echo(f"online store: {materialization.get('users_written')} users written ({materialization.get('mode')})")


def _train(settings: Settings) -> None:
    from jobs.model_commands import run_training

    service = settings.event_catalog().feature_service
    _step(f"train on {service}, register in MLflow ({settings.tracking_uri}), promote")
    summary = run_training(settings, service, promote=True)
    typer.echo(json.dumps(summary, indent=2, default=str))


def _a_scored_user(settings: Settings) -> int:
    """A user of the newest snapshot who is active in the population rule's window (a snapshot means open)."""
    import duckdb

    from churn_common.population import PopulationRule

    activity = PopulationRule(settings.active_window_days).activity_feature
    newest = sorted(settings.paths.snapshots.glob("date=*/*.parquet"))[-1]
    with duckdb.connect() as con:
        query = f"SELECT min(user_id) FROM read_parquet(?) WHERE {activity} > 0"
        (user_id,) = con.execute(query, [str(newest)]).fetchone()
    return int(user_id)


def _serve(settings: Settings) -> None:
    from jobs.serve_commands import serve

    base = f"http://{settings.api_host}:{settings.api_port}"
    _step(f"serve on {base}  (Ctrl-C to stop)")
    typer.echo(f"try:  curl '{base}/predict?user_id={_a_scored_user(settings)}'")
    typer.echo(f"      curl {base}/ready ; open {base}/docs")
    serve(access_log=False)


def _require_trainable(settings: Settings, days: int) -> None:
    """Stop before generating anything when training could not split ``days`` of history soundly."""
    from training.split import minimum_history_days

    needed = minimum_history_days(
        settings.label_horizon_days, settings.observation_cadence_days, settings.active_window_days
    )
    if days < needed:
        raise typer.BadParameter(
            f"{days} days are too short to train: a time split with purged CV needs at least {needed} days of "
            f"history with these settings ({settings.active_window_days} d active window, "
            f"{settings.label_horizon_days} d label horizon, observations every {settings.observation_cadence_days} d)",
            param_hint="--days",
        )


def demo_command(
    users: Annotated[int, typer.Option(help="Synthetic users to generate.")] = 5_000,
    days: Annotated[
        int, typer.Option(help="Days of history, ending yesterday (training needs ~4.5 months: 138 by default).")
    ] = 240,
    serve: Annotated[bool, typer.Option(help="Start the API at the end (--no-serve to stop before).")] = True,
) -> None:
    """Run the whole pipeline on the embedded profile: data, validation, features, Feast, training, serving."""
    settings = Settings()
    _require_trainable(settings, days)
    _generate(settings, users, days)
    _apply(settings)
    _daily_pipeline(settings)
    _train(settings)
    if serve:
        _serve(settings)
