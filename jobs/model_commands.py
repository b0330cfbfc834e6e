"""``churn train`` and ``churn model promote|rollback``: train and register a challenger, move the champion."""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import pandas as pd
import typer

from churn_common.catalog import Label
from churn_common.errors import ChurnError
from churn_common.settings import Settings
from jobs.options import CatalogOption, settings_for

# Training modules (Feast, MLflow, scikit-learn) are imported inside the commands so that `churn --help` and the
# other stages' commands do not pay for loading them.

logger = logging.getLogger(__name__)

model_app = typer.Typer(no_args_is_help=True)


@contextmanager
def _exit_on_error() -> Iterator[None]:
    """A platform error ends the command with its message and exit code 1, not a traceback."""
    try:
        yield
    except ChurnError as exc:
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(code=1) from exc


def _print_json(payload: dict[str, Any]) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def train(
    promote: Annotated[bool, typer.Option(help="Promote the new version to champion if it passes the gate.")] = False,
    feature_service: Annotated[
        str | None, typer.Option(help="FeatureService to train on (default: the catalogue's).")
    ] = None,
    catalog: CatalogOption = None,
    label: Annotated[
        Label | None,
        typer.Option(
            help="Churn label: no activity in the horizon, or the account closes in it (default: CHURN_LABEL, "
            "else the catalogue's)."
        ),
    ] = None,
) -> None:
    """Label, build the point-in-time training set, train, and register the model as the challenger."""
    with _exit_on_error():
        settings = settings_for(catalog)
        if label is not None:
            settings = settings.model_copy(update={"label": label})
        summary = run_training(settings, feature_service or settings.event_catalog().feature_service, promote)
    _print_json(summary)


def run_training(settings: Settings, feature_service: str, promote: bool) -> dict[str, Any]:
    """Labels -> point-in-time training set of the scored population -> model -> MLflow version (challenger),
    optionally promoted. The label kind is recorded on the run (param ``label``) and in the summary ``churn train``
    prints."""
    from churn_common.labels import LabelSpec
    from churn_common.population import PopulationRule
    from churn_common.store import feature_store
    from training import registry
    from training.dataset import get_training_set
    from training.labels import build_labels
    from training.split import require_history
    from training.train import require_both_classes, train_churn_model

    # Fail before hours of work when the tracking server is down or the labels cannot train a model.
    registry.connect(settings)
    label = LabelSpec.of(settings).kind
    labels = build_labels(settings)
    require_both_classes(labels, f"the {label} labels")
    require_history(
        labels["event_timestamp"],
        settings.label_horizon_days,
        settings.observation_cadence_days,
        settings.active_window_days,
    )
    rule = PopulationRule(settings.active_window_days)
    training_set = get_training_set(feature_store(settings), labels, feature_service, rule)
    # The first observation time leaves the active window of data behind it; the longest window needs more.
    longest = max(settings.event_catalog().windows) - settings.active_window_days
    result = train_churn_model(
        training_set.frame,
        settings.label_horizon_days,
        _ground_truth(settings),
        training_set.population,
        reference_from=labels["event_timestamp"].min() + pd.Timedelta(days=longest),
    )
    version = registry.log_and_register(settings, result, feature_service)
    logger.info("run %s: %s", version.run_id, registry.run_name(result, feature_service))
    summary = {
        "run_id": version.run_id,
        "registered_version": version.version,
        "label": label,
        "model": {"family": result.family, "params": result.params},
        "test_window": registry.observation_window(result.split.test),
        "test_metrics": _test_metrics(result.metrics),
        "population": {status.value: count for status, count in training_set.population.counts.items()},
    }
    if promote:
        summary["promotion"] = registry.promote(settings)
    return summary


def _ground_truth(settings: Settings) -> pd.DataFrame | None:
    """The generator's hidden propensity, for the oracle comparison only; absent on real data."""
    if not settings.paths.ground_truth.exists():
        logger.info("no ground truth at %s: the oracle AUC is not computed", settings.paths.ground_truth)
        return None
    return pd.read_parquet(settings.paths.ground_truth, columns=["user_id", "churn_propensity"])


def _test_metrics(metrics: dict[str, float]) -> dict[str, Any]:
    """The headline test metrics, rounded; ROC-AUC and PR-AUC with their bootstrap 95 % interval."""
    summary: dict[str, Any] = {
        name: {
            "value": round(metrics[name], 4),
            "ci95": [round(metrics[f"{name}_ci_{end}"], 4) for end in ("low", "high")],
        }
        for name in ("roc_auc", "pr_auc")
    }
    for name in ("positives", "rows"):
        summary[name] = int(metrics[name])
    for name in ("brier", "lift_top_decile", "recall_top_decile", "roc_auc_oracle_ratio"):
        if name in metrics:
            summary[name] = round(metrics[name], 4)
    return summary


@model_app.command("promote")
def promote() -> None:
    """Make the challenger the champion if it is non-inferior to the champion on the same recent window (the
    challenger's test window, each model through its own FeatureService); a refusal is recorded on the version."""
    from training import registry

    with _exit_on_error():
        decision = registry.promote(Settings())
    _print_json(decision)


@model_app.command("rollback")
def rollback() -> None:
    """Give the champion alias back to the previous champion."""
    from training import registry

    with _exit_on_error():
        outcome = registry.rollback(Settings())
    _print_json(outcome)


def register_top_level(root: typer.Typer) -> None:
    """Mount ``churn train``."""
    root.command("train")(train)


@model_app.command("list")
def list_versions(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every registered version, newest first: aliases, FeatureService, label, test ROC-AUC, test window."""
    from jobs.model_views import version_rows

    with _exit_on_error():
        rows = version_rows(Settings())
    if as_json:
        _print_json({"versions": rows})
        return
    if not rows:
        typer.echo("no registered versions: run `churn train`")
        return
    columns = ("version", "aliases", "feature_service", "label", "test_roc_auc", "test_window", "created")
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in columns}
    for line in ([dict(zip(columns, columns, strict=True))], rows):
        for row in line:
            typer.echo("  ".join(str(row[c]).ljust(widths[c]) for c in columns).rstrip())


@model_app.command("show")
def show_version(
    version: Annotated[str | None, typer.Argument(help="Version number (default: the champion).")] = None,
    alias: Annotated[str, typer.Option(help="Alias to show when no version is given.")] = "champion",
) -> None:
    """One version in full: tags, aliases, the run's parameters and test metrics, and its model card."""
    from jobs.model_views import version_detail

    with _exit_on_error():
        detail = version_detail(Settings(), version, alias)
    card = detail.pop("model_card", None)
    _print_json(detail)
    if card:
        typer.echo("\n" + card)
