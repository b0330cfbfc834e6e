"""``churn demo``: the whole main job on the embedded default profile, ending with the API serving.

The synthetic period ends yesterday, so the newest snapshots are fresh when the API starts and `/predict`
answers instead of reporting stale features.
"""

import json
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

import typer

from churn_common.settings import Settings

logger = logging.getLogger(__name__)


def _step(title: str) -> None:
    typer.secho(f"\n== {title}", fg=typer.colors.CYAN, bold=True)


def _generate_and_validate(settings: Settings, users: int, days: int) -> None:
    from transformations.synthetic import GeneratorConfig, generate
    from transformations.validation import validate

    start = date.today() - timedelta(days=days)
    _step(f"generate {users} users x {days} days ({start} .. {date.today() - timedelta(days=1)})")
    summary = generate(settings.paths, GeneratorConfig(users, start, days, settings.seed, late_share=0.02))
    typer.echo(f"{summary.n_events} events, {summary.n_churners} users churn in the period -> {settings.paths.raw}")
    _step("validate")
    report = validate(settings.paths, now=datetime.now(UTC), max_quarantine_share=settings.max_quarantine_share)
    typer.echo(report.summary())


def _features(settings: Settings) -> None:
    from churn_common.store import apply_repo
    from transformations.features import build_features

    _step("build feature snapshots")
    summary = build_features(settings)
    typer.echo(
        f"{summary.rows} snapshot rows for {summary.users} users, days {summary.first_day} .. {summary.last_day}, "
        f"{summary.columns} columns -> {summary.snapshots}"
    )
    _step("feast apply")
    store = apply_repo(settings)
    typer.echo(f"project {store.project}: {len(store.list_feature_views())} feature views registered")


def _train(settings: Settings) -> None:
    from churn_common.names import FEATURE_SERVICE
    from jobs.model_commands import run_training

    _step(f"train on {FEATURE_SERVICE}, register in MLflow ({settings.tracking_uri}), promote")
    summary = run_training(settings, FEATURE_SERVICE, promote=True)
    typer.echo(json.dumps(summary, indent=2, default=str))


def _materialize(settings: Settings) -> None:
    from jobs.materialize import export_metrics, materialize

    _step("materialise to the online store")
    report = materialize(settings)
    export_metrics(report, settings.paths.metrics / "materialize.prom")
    typer.echo(f"{report.rows_written} users, newest snapshot {report.newest_feature_timestamp}")


def _a_scorable_user(settings: Settings) -> int:
    import duckdb

    newest = sorted(settings.paths.snapshots.glob("date=*/*.parquet"))[-1]
    with duckdb.connect() as con:
        (user_id,) = con.execute("SELECT min(user_id) FROM read_parquet(?)", [str(newest)]).fetchone()
    return int(user_id)


def _serve(settings: Settings) -> None:
    from jobs.serve_commands import serve

    base = f"http://{settings.api_host}:{settings.api_port}"
    _step(f"serve on {base}  (Ctrl-C to stop)")
    typer.echo(f"try:  curl '{base}/predict?user_id={_a_scorable_user(settings)}'")
    typer.echo(f"      curl {base}/ready ; open {base}/docs")
    serve(access_log=False)


def demo_command(
    users: Annotated[int, typer.Option(help="Synthetic users to generate.")] = 5_000,
    days: Annotated[int, typer.Option(help="Days of history, ending yesterday.")] = 240,
    serve: Annotated[bool, typer.Option(help="Start the API at the end (--no-serve to stop before).")] = True,
) -> None:
    """Run the whole pipeline on the embedded profile: data, validation, features, Feast, training, serving."""
    settings = Settings()
    _generate_and_validate(settings, users, days)
    _features(settings)
    _train(settings)
    _materialize(settings)
    if serve:
        _serve(settings)
