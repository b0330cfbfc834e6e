"""``churn features apply|plan`` and ``churn materialize``: the Feast side of the feature pipeline."""

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from churn_common.settings import Settings
from jobs.options import CatalogOption, settings_for

# Stage modules (Feast, DuckDB) are imported inside the commands: `churn --help` and unrelated commands
# should not pay for loading Feast.


def apply_command(catalog: CatalogOption = None) -> None:
    """Register the feature repo's entities, sources, views and services (like `feast apply`), derived from the
    catalogue."""
    from churn_common.store import apply_repo

    settings = settings_for(catalog)
    store = apply_repo(settings)
    typer.echo(f"applied feature repo {settings.feature_repo} to project {store.project}")


def plan_command(catalog: CatalogOption = None) -> None:
    """List what the feature repo defines, without changing the registry."""
    from churn_common.store import load_definitions

    contents = load_definitions(settings_for(catalog))
    for kind in ("entities", "data_sources", "feature_views", "feature_services"):
        typer.echo(f"{kind}: {', '.join(sorted(o.name for o in getattr(contents, kind)))}")


def materialize_command(
    end: Annotated[
        datetime | None, typer.Option(help="Load rows up to this instant (UTC). Default: now (CHURN_NOW if set).")
    ] = None,
) -> None:
    """Bring the online store up to the newest feature build (refilling it when it lost its data), then check it."""
    from jobs.materialize import export_metrics, materialize

    settings = Settings()
    report = materialize(settings, end=_utc(end))
    export_metrics(report, settings.paths.metrics / "materialize.prom", settings.pushgateway_url)
    typer.echo(json.dumps(report.as_dict(), indent=2))


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def register(features_app: typer.Typer, root: typer.Typer) -> None:
    """Mount ``apply``/``plan`` under ``churn features`` and ``materialize`` at the top level."""
    features_app.command("apply")(apply_command)
    features_app.command("plan")(plan_command)
    root.command("materialize")(materialize_command)
