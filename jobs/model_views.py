"""What `churn model list` and `churn model show` print: registered versions read back from MLflow."""

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from churn_common.champion import all_versions, registry_client, version_by_alias, version_by_number
from churn_common.errors import TrackingServerUnavailable
from churn_common.names import FEATURE_SERVICE_TAG, REGISTERED_MODEL
from churn_common.settings import Settings
from training.model_card import MODEL_CARD_ARTIFACT as MODEL_CARD


def _created(version: ModelVersion) -> str:
    return datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _run(client: MlflowClient, version: ModelVersion):
    try:
        return client.get_run(version.run_id)
    except MlflowException as exc:
        raise TrackingServerUnavailable(f"MLflow failed reading run {version.run_id}: {exc.message}") from exc


def _aliases(client: MlflowClient) -> dict[str, list[str]]:
    """Version -> its aliases. MLflow's version search leaves ``aliases`` empty; the registered model has them."""
    try:
        model = client.get_registered_model(REGISTERED_MODEL)
    except MlflowException as exc:
        raise TrackingServerUnavailable(f"MLflow failed reading {REGISTERED_MODEL!r}: {exc.message}") from exc
    held: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        held.setdefault(str(version), []).append(alias)
    return held


def version_rows(settings: Settings) -> list[dict[str, Any]]:
    client = registry_client(settings.tracking_uri)
    versions = all_versions(client)
    held = _aliases(client) if versions else {}
    rows = []
    for version in versions:
        run = _run(client, version)
        rows.append(
            {
                "version": version.version,
                "aliases": ",".join(sorted(held.get(str(version.version), []))) or "-",
                "feature_service": version.tags.get(FEATURE_SERVICE_TAG, "-"),
                "label": run.data.params.get("label", "-"),
                "test_roc_auc": version.tags.get("test_roc_auc", "-"),
                "test_window": version.tags.get("test_window", "-"),
                "created": _created(version),
            }
        )
    return rows


def _card(client: MlflowClient, run_id: str) -> str | None:
    if not any(artifact.path == MODEL_CARD for artifact in client.list_artifacts(run_id)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=MODEL_CARD, dst_path=tmp, tracking_uri=client.tracking_uri
        )
        return Path(local).read_text()


def version_detail(settings: Settings, number: str | None, alias: str) -> dict[str, Any]:
    client = registry_client(settings.tracking_uri)
    version = version_by_number(client, number) if number else version_by_alias(client, alias)
    run = _run(client, version)
    return {
        "version": version.version,
        "aliases": sorted(version.aliases),
        "created": _created(version),
        "run_id": version.run_id,
        "tags": dict(sorted(version.tags.items())),
        "params": dict(sorted(run.data.params.items())),
        "test_metrics": {k: v for k, v in sorted(run.data.metrics.items()) if not k.startswith("slice.")},
        "model_card": _card(client, version.run_id),
    }
