"""MLflow tracking and the model registry: log a training run, register its model as the challenger, and move
the ``champion`` alias forward (promotion, gated on the same test window) or back (rollback).

Every version keeps its own record: a ``feature_service`` tag (serving resolves features through it), the
test ROC-AUC with its interval, and after a promotion attempt the decision with both numbers.

The logged model is self-contained: it ships the churn_common modules its class needs (``MODEL_CODE``, as code
paths) and pins the packages its pickle was written with, so ``mlflow.pyfunc.load_model`` and ``mlflow models
serve`` work in an environment holding only those requirements, without this project installed.
"""

import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from sklearn.metrics import brier_score_loss, roc_auc_score

from churn_common.champion import download_version, load_version, registry_client
from churn_common.errors import ModelNotFound, ModelRegistryError, TrackingServerUnavailable
from churn_common.labels import LabelSpec
from churn_common.model import ChurnModel
from churn_common.names import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    FEATURE_SERVICE_TAG,
    JOIN_KEY,
    REGISTERED_MODEL,
    TIMESTAMP_FIELD,
)
from churn_common.settings import PROJECT_ROOT, Settings
from churn_common.signing import sign_version
from churn_common.store import feature_store
from training.dataset import get_training_frame
from training.evaluate import paired_roc_auc_difference, save_plots
from training.model_card import MODEL_CARD_ARTIFACT, model_card
from training.train import KEY_COLUMNS, TrainingResult

logger = logging.getLogger(__name__)

EXPERIMENT = "churn"
MODEL_ARTIFACT = "model"
TEST_SET_ARTIFACT = "evaluation/test_set.parquet"
PREVIOUS_CHAMPION_ALIAS = "previous_champion"
# On a version that became champion: the version it replaced, so rollbacks can walk back more than one step.
PREVIOUS_CHAMPION_TAG = "previous_champion_version"
_NOT_FOUND = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}
_HEALTH_TIMEOUT_S = 5.0
GIT_COMMIT_TAG, CATALOG_TAG = "git_commit", "catalog"
# What unpickling a ChurnModel imports from churn_common (churn_common/model.py and its own imports); shipped with
# the model under a bare package, without churn_common/__init__.py's imports for the platform's processes.
MODEL_CODE = ("model.py", "errors.py")
# The packages whose objects the pickled model holds (or that unpickle it), pinned to the versions that wrote it.
MODEL_REQUIREMENTS = ("mlflow", "cloudpickle", "numpy", "pandas", "scikit-learn", "scipy")


def connect(settings: Settings) -> MlflowClient:
    """Point MLflow at ``settings.tracking_uri``; a server must answer its health check first, because the
    MLflow client would otherwise retry for minutes before failing."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        _check_health(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _check_health(uri: str) -> None:
    try:
        response = httpx.get(f"{uri.rstrip('/')}/health", timeout=_HEALTH_TIMEOUT_S)
    except httpx.TransportError as exc:
        raise TrackingServerUnavailable(f"MLflow tracking server at {uri} is unreachable: {exc}") from exc
    if response.status_code != 200:
        raise TrackingServerUnavailable(f"MLflow tracking server at {uri} is unhealthy: HTTP {response.status_code}")


@contextmanager
def _registry_errors(settings: Settings) -> Iterator[None]:
    try:
        yield
    except MlflowException as exc:
        raise ModelRegistryError(f"MLflow at {settings.tracking_uri} failed: {exc.message}") from exc


def log_and_register(settings: Settings, result: TrainingResult, feature_service: str) -> ModelVersion:
    """Log the run and register its model as a new version of ``churn`` with alias ``challenger``."""
    client = connect(settings)
    tags = {FEATURE_SERVICE_TAG: feature_service, GIT_COMMIT_TAG: git_commit(), CATALOG_TAG: settings.catalog}
    with _registry_errors(settings):
        experiment_id = _experiment_id(client, settings)
        with mlflow.start_run(
            experiment_id=experiment_id,
            run_name=run_name(result, feature_service),
            description=describe(settings, result, feature_service),
            tags=tags,
        ):
            _log_run(result)
            label = LabelSpec.of(settings)
            mlflow.log_params({"label": label.kind, "label_horizon_days": label.horizon_days})
            mlflow.log_text(model_card(settings, result, feature_service), MODEL_CARD_ARTIFACT)
            model_uri = _log_model(result.model, result.split.test).model_uri
        version = _register(client, model_uri, tags | _version_tags(result))
        if settings.model_signing_key is not None:
            digest = sign_version(client, version, download_version(client, version), settings.model_signing_key)
            logger.info("signed version %s (artifact digest %s)", version.version, digest[:12])
    logger.info("registered %s version %s as %s", REGISTERED_MODEL, version.version, CHALLENGER_ALIAS)
    return version


def run_name(result: TrainingResult, feature_service: str) -> str:
    return f"{result.family} {feature_service} {observation_window(result.split.test)}"


def describe(settings: Settings, result: TrainingResult, feature_service: str) -> str:
    """The run's description (``mlflow.note.content``): data window, population, label, test metrics with CI."""
    split, metrics = result.split, result.metrics
    lines = [
        f"{result.family} {result.params} on {feature_service} (catalogue {settings.catalog}).",
        f"Label: {LabelSpec.of(settings).kind} within {settings.label_horizon_days} days of each observation "
        f"time (every {settings.observation_cadence_days} days).",
        f"Training: {len(split.train)} rows at {split.train['event_timestamp'].nunique()} observation times "
        f"{observation_window(split.train)}, {len(split.folds)} purged CV folds (CV ROC-AUC "
        f"{metrics['cv_roc_auc']:.4f}).",
        f"Test window {observation_window(split.test)}: {len(split.test)} rows, {int(metrics['positives'])} churners.",
    ]
    if result.population is not None:
        counts = ", ".join(f"{status.value} {count}" for status, count in result.population.counts.items())
        lines.append(f"Population (active window {result.population.active_window_days} d): {counts}.")
    lines.append(
        f"Test ROC-AUC {_with_interval(metrics, 'roc_auc')}, PR-AUC {_with_interval(metrics, 'pr_auc')}, "
        f"Brier {metrics['brier']:.4f} (uncalibrated {metrics['brier_uncalibrated']:.4f}), "
        f"lift at the top decile {metrics['lift_top_decile']:.2f}."
    )
    return "\n\n".join(lines)


def _with_interval(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4f} (95 % CI {metrics[f'{name}_ci_low']:.4f}..{metrics[f'{name}_ci_high']:.4f})"


def git_commit() -> str:
    """The project checkout's HEAD, or "unknown" where there is none (an installed image, no git)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def _experiment_id(client: MlflowClient, settings: Settings) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    # The local default keeps artifacts beside the SQLite file; a server decides its own artifact store.
    location = None if settings.mlflow_tracking_uri else settings.paths.mlflow_artifacts.as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=location)


def _log_run(result: TrainingResult) -> None:
    population = result.population
    mlflow.log_params(
        {"model_family": result.family, **{f"{result.family}.{k}": v for k, v in result.params.items()}}
        | {f"risk_threshold.{k}": v for k, v in result.model.risk_thresholds.as_dict().items()}
        | {"n_features": len(result.model.feature_names), **_split_sizes(result)}
        | (population.params() if population else {})
    )
    counts = population.metrics() if population else {}
    mlflow.log_metrics(_finite(result.metrics | _slice_metrics(result.slices) | counts))
    mlflow.set_tag("training_set_sha256", result.fingerprint["sha256"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        save_plots(result.split.test["label"].to_numpy(), result.test_scores, out / "plots")
        mlflow.log_artifacts(str(out / "plots"), "plots")
        mlflow.log_dict(result.fingerprint, "training_set_fingerprint.json")
        mlflow.log_dict(result.reference_distributions, "reference_distributions.json")
        mlflow.log_dict(result.reference_predictions, "reference_predictions.json")
        mlflow.log_dict(json.loads(result.slices.to_json(orient="records")), "evaluation/slice_metrics.json")
        # Promotion re-scores the champion on exactly these rows; keep them with the run.
        result.split.test[[*KEY_COLUMNS, *result.model.feature_names]].to_parquet(out / "test_set.parquet")
        mlflow.log_artifact(str(out / "test_set.parquet"), "evaluation")


def _split_sizes(result: TrainingResult) -> dict[str, Any]:
    split = result.split
    return {
        "rows_train": len(split.train),
        "rows_test": len(split.test),
        "cv_folds": len(split.folds),
        "train_window": observation_window(split.train),
        "train_observation_times": split.train["event_timestamp"].nunique(),
        "test_window": observation_window(split.test),
    }


def observation_window(frame: pd.DataFrame) -> str:
    """First..last observation time of ``frame``, as dates."""
    times = frame["event_timestamp"]
    return f"{times.min():%Y-%m-%d}..{times.max():%Y-%m-%d}"


def _slice_metrics(slices: pd.DataFrame) -> dict[str, float]:
    metric_columns = [c for c in slices.columns if c not in ("slice", "value")]
    return {
        f"slice.{row['slice']}.{row['value']}.{metric}": row[metric]
        for row in slices.to_dict(orient="records")
        for metric in metric_columns
    }


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items() if np.isfinite(value)}


def _log_model(model: ChurnModel, test: pd.DataFrame):
    example = test[model.feature_names].head(5).copy()
    numeric = example.select_dtypes("number").columns
    # Serving sends float64 for every number (NaN when missing); integer columns in the schema would refuse it.
    example[numeric] = example[numeric].astype("float64")
    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=model,
            signature=infer_signature(example, model.predict(None, example)),
            input_example=example,
            code_paths=[str(_model_code(Path(tmp)))],
            pip_requirements=model_requirements(),
        )


def model_requirements() -> list[str]:
    return [f"{name}=={package_version(name)}" for name in MODEL_REQUIREMENTS]


def _model_code(tmp: Path) -> Path:
    """A bare ``churn_common`` package holding ``MODEL_CODE``, to ship as the model's code path."""
    source = Path(sys.modules[ChurnModel.__module__].__file__).parent
    package = tmp / source.name
    package.mkdir()
    (package / "__init__.py").write_text('"""What a logged churn model imports at load time."""\n')
    for name in MODEL_CODE:
        shutil.copyfile(source / name, package / name)
    return package


def _version_tags(result: TrainingResult) -> dict[str, str]:
    metrics = result.metrics
    return {
        "test_roc_auc": f"{metrics['roc_auc']:.6f}",
        "test_roc_auc_ci": f"{metrics['roc_auc_ci_low']:.6f}..{metrics['roc_auc_ci_high']:.6f}",
        "test_positives": str(int(metrics["positives"])),
        "test_window": observation_window(result.split.test),
        "training_set_sha256": result.fingerprint["sha256"],
    }


def _register(client: MlflowClient, model_uri: str, tags: dict[str, str]) -> ModelVersion:
    """A new version with its tags and the challenger alias, or no version at all."""
    version = mlflow.register_model(model_uri, REGISTERED_MODEL, tags=tags)
    try:
        client.set_registered_model_alias(REGISTERED_MODEL, CHALLENGER_ALIAS, version.version)
    except MlflowException:
        client.delete_model_version(REGISTERED_MODEL, version.version)
        raise
    return client.get_model_version(REGISTERED_MODEL, version.version)


def promote(settings: Settings) -> dict[str, Any]:
    """Make the challenger the champion unless its test window holds fewer than ``promotion_min_positives``
    churners (too few to tell two models apart, or to trust one), or it trails the champion's ROC-AUC, both scored
    on the challenger's test window (the most recent labelled data), by more than ``promotion_tolerance``."""
    client = connect(settings)
    with _registry_errors(settings):
        challenger = version_by_alias(client, CHALLENGER_ALIAS)
        champion = _optional_version(client, CHAMPION_ALIAS)
        decision = _decide(settings, challenger, champion)
        _record(client, challenger, decision)
        if decision["promoted"] and champion is not None and champion.version != challenger.version:
            client.set_registered_model_alias(REGISTERED_MODEL, PREVIOUS_CHAMPION_ALIAS, champion.version)
            client.set_model_version_tag(REGISTERED_MODEL, challenger.version, PREVIOUS_CHAMPION_TAG, champion.version)
        if decision["promoted"]:
            client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, challenger.version)
    logger.info("promotion of version %s: %s (%s)", challenger.version, decision["decision"], decision["reason"])
    return decision


def _decide(settings: Settings, challenger: ModelVersion, champion: ModelVersion | None) -> dict[str, Any]:
    """Both models on the challenger's test window (the most recent labelled data, which neither was fitted on),
    each through its own FeatureService: promoted when the challenger is non-inferior, i.e. the 95 % interval of
    its ROC-AUC minus the champion's (paired, users resampled) stays above ``-promotion_tolerance``."""
    test = _test_set(challenger)
    positives = int(test["label"].sum())
    decision = {
        "challenger_version": str(challenger.version),
        "champion_version": None if champion is None else str(champion.version),
        "tolerance": settings.promotion_tolerance,
        "min_positives": settings.promotion_min_positives,
        "test_window": observation_window(test),
        "test_rows": len(test),
        "test_positives": positives,
    }
    if positives < settings.promotion_min_positives:
        reason = (
            f"the test window {decision['test_window']} has {positives} churners, fewer than "
            f"promotion_min_positives={settings.promotion_min_positives}: too few to tell models apart"
        )
        return decision | _verdict(False, reason, None, None)
    challenger_scores = load_model(challenger, settings).predict_proba(test)
    if champion is None:
        return decision | _verdict(True, "no champion yet", _auc(test, challenger_scores), None)
    champion_scores = _scores_on(settings, champion, challenger.tags.get(FEATURE_SERVICE_TAG), test)
    return decision | _compared(test, challenger_scores, champion_scores, settings.promotion_tolerance)


def _compared(test: pd.DataFrame, challenger: np.ndarray, champion: np.ndarray, tolerance: float) -> dict[str, Any]:
    """The non-inferiority verdict on the same rows, with both models' figures."""
    paired = paired_roc_auc_difference(test["label"], challenger, champion, test[JOIN_KEY])
    promoted = paired["ci_low"] >= -tolerance
    interval = f"[{paired['ci_low']:+.4f}, {paired['ci_high']:+.4f}]"
    reason = (
        f"challenger minus champion ROC-AUC {paired['difference']:+.4f}, 95 % interval {interval}: "
        + ("non-inferior" if promoted else "not shown non-inferior")
        + f" at a margin of {tolerance}"
    )
    verdict = _verdict(promoted, reason, _auc(test, challenger), _auc(test, champion))
    # Not part of the rule (ranking is what retention campaigns act on), but recorded: after a change in the churn
    # process a retrained model may rank no better while its probabilities are far closer to the observed rate.
    calibration = {
        "challenger_brier": float(brier_score_loss(test["label"], challenger)),
        "champion_brier": float(brier_score_loss(test["label"], champion)),
    }
    return verdict | calibration | {"roc_auc_difference": paired}


def _auc(test: pd.DataFrame, scores: np.ndarray) -> float:
    return float(roc_auc_score(test["label"], scores))


def _scores_on(settings: Settings, version: ModelVersion, test_service: str | None, test: pd.DataFrame) -> np.ndarray:
    """The version's probabilities for the test rows, from its own FeatureService's point-in-time features (the test
    set's own columns when it was trained on the same service)."""
    model = load_model(version, settings)
    service = version.tags.get(FEATURE_SERVICE_TAG)
    if service == test_service and set(model.feature_names) <= set(test.columns):
        return model.predict_proba(test)
    if not service:
        raise ModelRegistryError(f"version {version.version} has no {FEATURE_SERVICE_TAG!r} tag to read features by")
    entities = test[[JOIN_KEY, TIMESTAMP_FIELD]]
    return model.predict_proba(get_training_frame(feature_store(settings), entities, service))


def _verdict(promoted: bool, reason: str, challenger_auc: float | None, champion_auc: float | None) -> dict[str, Any]:
    return {
        "decision": "promoted" if promoted else "refused",
        "promoted": promoted,
        "reason": reason,
        "challenger_roc_auc": challenger_auc,
        "champion_roc_auc": champion_auc,
    }


def _test_set(version: ModelVersion) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=TEST_SET_ARTIFACT, dst_path=tmp)
        return pd.read_parquet(path)


def load_model(version: ModelVersion, settings: Settings | None = None) -> ChurnModel:
    """The version's model; through ``settings``' tracking server and signing key when given (verified before it
    is unpickled), else through the process-wide MLflow URIs."""
    if settings is None:
        return mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}").unwrap_python_model()
    return load_version(registry_client(settings.tracking_uri), version, settings.model_signing_key)


def _record(client: MlflowClient, challenger: ModelVersion, decision: dict[str, Any]) -> None:
    keys = ("decision", "reason", "challenger_roc_auc", "champion_roc_auc", "champion_version", "tolerance")
    tags = {key: decision[key] for key in (*keys, "test_positives", "min_positives")}
    tags |= {key: decision[key] for key in ("challenger_brier", "champion_brier") if key in decision}
    if "roc_auc_difference" in decision:
        tags |= {f"roc_auc_difference.{k}": v for k, v in decision["roc_auc_difference"].items()}
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, challenger.version, f"promotion.{key}", str(value))
    client.set_model_version_tag(REGISTERED_MODEL, challenger.version, "promotion.decided_at", _now())


def rollback(settings: Settings) -> dict[str, Any]:
    """Give ``champion`` back to the previous champion; the version before that becomes the new previous."""
    client = connect(settings)
    with _registry_errors(settings):
        current = version_by_alias(client, CHAMPION_ALIAS)
        previous = version_by_alias(client, PREVIOUS_CHAMPION_ALIAS)
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, previous.version)
        client.set_model_version_tag(REGISTERED_MODEL, current.version, "rolled_back_at", _now())
        before = previous.tags.get(PREVIOUS_CHAMPION_TAG)
        if before:
            client.set_registered_model_alias(REGISTERED_MODEL, PREVIOUS_CHAMPION_ALIAS, before)
        else:
            client.delete_registered_model_alias(REGISTERED_MODEL, PREVIOUS_CHAMPION_ALIAS)
    logger.info("rolled back champion from version %s to %s", current.version, previous.version)
    return {
        "champion_version": str(previous.version),
        "rolled_back_version": str(current.version),
        "previous_champion": before,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def version_by_alias(client: MlflowClient, alias: str) -> ModelVersion:
    version = _optional_version(client, alias)
    if version is None:
        raise ModelNotFound(f"no version of model {REGISTERED_MODEL!r} has alias {alias!r}")
    return version


def _optional_version(client: MlflowClient, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(REGISTERED_MODEL, alias)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND:
            return None
        # Unreachable, refused (a server behind basic auth without credentials), or failing: ours from here on.
        raise TrackingServerUnavailable(f"MLflow failed reading alias {alias!r}: {exc.message}") from exc
