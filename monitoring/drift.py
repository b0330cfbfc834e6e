"""Drift monitoring (``churn monitor drift``): the latest (or a given) date's scored feature matrix against the frozen
reference logged with the champion's training run.

The reference (``reference_distributions.json``, training.train) describes the champion's fit rows: per numeric
feature the decile edges with open outer edges (-inf/+inf, so values beyond the training range land in the end bins
and count), the share of values per bin and the missing share; per categorical feature the share of each category.
It is compared with ``scoring/date=D/features.parquet``, the vectors batch scoring scored on D, never with a table
that holds the training rows: a snapshot dated on or before the champion's last training day is refused.

Per feature, on the same buckets (numeric: the reference bins plus a ``missing`` bucket weighted by its
missing share; categorical: the reference categories plus ``other/new``, so a category never seen in training
counts):

* PSI = sum((a - e) * ln(a / e)), the decision: drifted when PSI > the feature's threshold (``drift_thresholds``,
  else ``drift_psi_threshold``). An empty bucket on one side is given the share ``EPSILON`` = 1e-4 (one in ten
  thousand) so the logarithm stays finite; a bucket empty on both sides adds nothing. A bucket the reference never
  filled that now holds a share s adds about s * ln(s / 1e-4): 0.05 at 1 %, 0.7 at 10 %.
* the Jensen-Shannon distance (base 2, in [0, 1]): a bounded, symmetric second opinion that needs no epsilon.

A feature of the reference missing from the snapshot is a DataError naming it (never skipped). A snapshot column
the reference does not describe cannot drift against it: it is reported under ``not_comparable``.

Prediction drift compares the batch scores of D (the prediction log's rows of the champion's version) with the
champion's scores on its fit rows (``reference_predictions.json``), binned the same way. Versions logged before
that reference existed report prediction drift as unavailable, which is not an error.
"""

import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from scipy.spatial.distance import jensenshannon

from churn_common.champion import registry_client, version_by_alias
from churn_common.errors import ConfigurationError, DataError, EmptyInput, ModelRegistryError
from churn_common.files import write_text_atomically
from churn_common.names import CHAMPION_ALIAS, JOIN_KEY
from churn_common.prediction_log import log_file
from churn_common.settings import DataPaths, Settings
from monitoring.scoring import scoring_features_file

logger = logging.getLogger(__name__)

EPSILON = 1e-4
MISSING_BUCKET = "missing"
NEW_BUCKET = "other/new"
PREDICTION = "churn_probability"
"""The prediction log's score column; also its key in ``drift_thresholds``."""
REFERENCE_ARTIFACT = "reference_distributions.json"
PREDICTION_REFERENCE_ARTIFACT = "reference_predictions.json"
# Set by training.registry on every version: "<first day>..<last day>" of its test rows, the newest training rows.
TEST_WINDOW_TAG = "test_window"
_PREDICTION_SUMMARY = ("available", "reason", "psi", "drifted")


@dataclass(frozen=True)
class Buckets:
    """The reference's and the snapshot's share per bucket, in the same order."""

    labels: list[str]
    expected: np.ndarray
    actual: np.ndarray

    def psi(self) -> float:
        expected, actual = np.clip(self.expected, EPSILON, None), np.clip(self.actual, EPSILON, None)
        return float(np.sum((actual - expected) * np.log(actual / expected)))

    def js_distance(self) -> float:
        return float(jensenshannon(self.expected, self.actual, base=2))


@dataclass(frozen=True)
class Drift:
    """One distribution's comparison with its reference."""

    name: str
    kind: str
    psi: float
    js_distance: float
    threshold: float
    buckets: Buckets
    new_categories: dict[str, int]
    """Categorical only: each value the reference never saw, with its count in the snapshot."""

    @property
    def drifted(self) -> bool:
        return self.psi > self.threshold

    def as_dict(self) -> dict[str, Any]:
        shares = zip(self.buckets.labels, self.buckets.expected, self.buckets.actual, strict=True)
        return {
            "kind": self.kind,
            "psi": round(self.psi, 6),
            "js_distance": round(self.js_distance, 6),
            "threshold": self.threshold,
            "drifted": self.drifted,
            "buckets": [{"bucket": b, "reference": round(e, 6), "snapshot": round(a, 6)} for b, e, a in shares],
            **({"new_categories": self.new_categories} if self.kind == "categorical" else {}),
        }


def _bucket_label(low: float, high: float) -> str:
    return f"[{low:g}, {high:g})"


def numeric_buckets(reference: dict[str, Any], values: pd.Series) -> Buckets:
    """The reference bins (np.histogram's, as training cut them) weighted by the present share, plus ``missing``."""
    edges = np.array([float(edge) for edge in reference["bin_edges"]])
    present_share = 1.0 - reference["missing_share"]
    expected = np.append(np.asarray(reference["proportions"], dtype=float) * present_share, reference["missing_share"])
    numbers = pd.to_numeric(values, errors="raise").astype("float64")
    present = numbers.dropna().to_numpy()
    counts = np.histogram(present, bins=edges)[0]
    actual = np.append(counts, len(numbers) - len(present)) / len(numbers)
    labels = [_bucket_label(low, high) for low, high in zip(edges[:-1], edges[1:], strict=True)]
    return Buckets([*labels, MISSING_BUCKET], expected, actual)


def categorical_buckets(reference: dict[str, Any], values: pd.Series) -> tuple[Buckets, dict[str, int]]:
    """The reference categories plus ``other/new``; and the new values with their counts."""
    shares: dict[str, float] = reference["proportions"]
    # The spelling training used: a missing value is the category "None".
    counts = values.astype(object).astype(str).value_counts()
    known = counts.reindex(list(shares), fill_value=0)
    new = counts.drop(index=list(shares), errors="ignore").sort_index()
    actual = np.append(known.to_numpy(), new.sum()) / len(values)
    expected = np.append(np.asarray(list(shares.values()), dtype=float), 0.0)
    return Buckets([*shares, NEW_BUCKET], expected, actual), {str(k): int(v) for k, v in new.items()}


def compare(name: str, reference: dict[str, Any], values: pd.Series, threshold: float) -> Drift:
    """PSI and Jensen-Shannon distance of ``values`` against one entry of a reference."""
    if values.empty:
        raise EmptyInput(f"no values of {name!r} to compare with the reference")
    kind = reference["kind"]
    try:
        if kind == "numeric":
            buckets, new = numeric_buckets(reference, values), {}
        elif kind == "categorical":
            buckets, new = categorical_buckets(reference, values)
        else:
            raise ConfigurationError(f"the reference of {name!r} has an unknown kind {kind!r}")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{name!r} cannot be compared with its {kind} reference: {exc}") from exc
    return Drift(name, kind, buckets.psi(), buckets.js_distance(), threshold, buckets, new)


def compare_features(
    references: dict[str, dict[str, Any]], snapshot: pd.DataFrame, thresholds: dict[str, float], default: float
) -> tuple[list[Drift], list[str]]:
    """Every reference feature's drift, and the snapshot columns the reference does not describe."""
    missing = [name for name in references if name not in snapshot.columns]
    if missing:
        raise DataError(f"the scoring snapshot lacks features the reference describes: {missing}")
    unknown = sorted(set(thresholds) - set(references) - {PREDICTION})
    if unknown:
        raise ConfigurationError(f"drift_thresholds names features the champion's reference lacks: {unknown}")
    drifts = [compare(name, ref, snapshot[name], thresholds.get(name, default)) for name, ref in references.items()]
    not_comparable = [column for column in snapshot.columns if column != JOIN_KEY and column not in references]
    return drifts, not_comparable


@dataclass(frozen=True)
class PredictionDrift:
    """The scores' drift, or why it is unavailable."""

    drift: Drift | None
    rows: int
    unavailable: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.drift is None:
            return {"available": False, "reason": self.unavailable}
        return {"available": True, "rows": self.rows, **self.drift.as_dict()}


@dataclass(frozen=True)
class DriftReport:
    day: date
    model_name: str
    model_version: str
    snapshot: Path
    rows: int
    features: list[Drift]
    not_comparable: list[str]
    prediction: PredictionDrift
    default_threshold: float

    @property
    def drifted(self) -> list[str]:
        return [drift.name for drift in self.features if drift.drifted]

    @property
    def worst(self) -> Drift:
        return max(self.features, key=lambda drift: drift.psi)

    def summary(self) -> dict[str, Any]:
        """What the command prints: which features drifted, the worst one, and the scores."""
        prediction = self.prediction.as_dict()
        return {
            "date": self.day.isoformat(),
            "model_version": self.model_version,
            "rows": self.rows,
            "features_compared": len(self.features),
            "features_drifted": self.drifted,
            "worst_feature": self.worst.name,
            "worst_psi": round(self.worst.psi, 6),
            "prediction_drift": {key: prediction[key] for key in _PREDICTION_SUMMARY if key in prediction},
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "model_name": self.model_name,
            "snapshot": str(self.snapshot),
            "default_psi_threshold": self.default_threshold,
            "epsilon": EPSILON,
            "features": {drift.name: drift.as_dict() for drift in self.features},
            "not_comparable": self.not_comparable,
            "prediction": self.prediction.as_dict(),
        }


def drift_report_file(paths: DataPaths, day: date) -> Path:
    return paths.reports / "drift" / f"date={day.isoformat()}.json"


def drift_report(settings: Settings, day: date | None = None) -> DriftReport:
    """Compare the scoring snapshot of ``day`` (default: the latest) with the champion's reference; write the report
    to ``reports/drift/date=D.json`` (replaced whole) and return it."""
    client = registry_client(settings.tracking_uri)
    version = version_by_alias(client, CHAMPION_ALIAS)
    day = day or latest_scoring_day(settings.paths)
    _require_after_training(version, day)
    snapshot_path = scoring_features_file(settings.paths, day.isoformat())
    snapshot = _read_snapshot(snapshot_path)
    references = _feature_reference(client, version)
    features, not_comparable = compare_features(
        references, snapshot, settings.drift_thresholds, settings.drift_psi_threshold
    )
    report = DriftReport(
        day=day,
        model_name=version.name,
        model_version=str(version.version),
        snapshot=snapshot_path,
        rows=len(snapshot),
        features=features,
        not_comparable=not_comparable,
        prediction=_prediction_drift(settings, client, version, day),
        default_threshold=settings.drift_psi_threshold,
    )
    _write_json(report.as_dict(), drift_report_file(settings.paths, day))
    logger.info("drift on %s against version %s: %s drifted", day, version.version, report.drifted or "nothing")
    return report


def latest_scoring_day(paths: DataPaths) -> date:
    days = sorted(path.parent.name.removeprefix("date=") for path in paths.scoring.glob("date=*/features.parquet"))
    if not days:
        raise DataError(f"no scoring snapshot under {paths.scoring}; run `churn score` first")
    return date.fromisoformat(days[-1])


def _require_after_training(version: ModelVersion, day: date) -> None:
    """A snapshot of a day the champion trained on could hold its training rows: comparing it proves nothing."""
    window = version.tags.get(TEST_WINDOW_TAG)
    if not window:
        raise ModelRegistryError(f"champion version {version.version} has no {TEST_WINDOW_TAG!r} tag")
    last_training_day = date.fromisoformat(window.split("..")[-1])
    if day <= last_training_day:
        raise DataError(
            f"the scoring snapshot of {day} is not after the champion's training data (up to {last_training_day}); "
            "drift is measured on days the model never trained on"
        )


def _read_snapshot(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"no scoring snapshot at {path}; run `churn score` for that date")
    snapshot = pd.read_parquet(path)
    if snapshot.empty:
        raise EmptyInput(f"the scoring snapshot {path} has no rows: nothing to compare")
    return snapshot


def _feature_reference(client: MlflowClient, version: ModelVersion) -> dict[str, dict[str, Any]]:
    references = _reference(client, version, REFERENCE_ARTIFACT)
    if not references:
        raise ModelRegistryError(f"champion version {version.version} has no {REFERENCE_ARTIFACT} in its run")
    return references


def _reference(client: MlflowClient, version: ModelVersion, artifact: str) -> dict[str, Any] | None:
    """An artifact of the version's run as JSON; None when the run has no such artifact."""
    if artifact not in {entry.path for entry in _artifacts(client, version)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path=artifact, dst_path=tmp, tracking_uri=client.tracking_uri
            )
        except MlflowException as exc:
            raise ModelRegistryError(f"cannot download {artifact} of version {version.version}: {exc.message}") from exc
        return json.loads(Path(local).read_text())


def _artifacts(client: MlflowClient, version: ModelVersion) -> list:
    try:
        return client.list_artifacts(version.run_id)
    except MlflowException as exc:
        raise ModelRegistryError(f"cannot list the artifacts of version {version.version}: {exc.message}") from exc


def _prediction_drift(settings: Settings, client: MlflowClient, version: ModelVersion, day: date) -> PredictionDrift:
    """The champion's batch scores of ``day`` against its scores on its fit rows."""
    reference = _reference(client, version, PREDICTION_REFERENCE_ARTIFACT)
    if reference is None:
        return PredictionDrift(None, 0, f"version {version.version} was logged without {PREDICTION_REFERENCE_ARTIFACT}")
    path = log_file(settings.prediction_log_root, day.isoformat(), "batch")
    if not path.exists():
        return PredictionDrift(None, 0, f"no batch prediction log at {path}")
    log = pd.read_parquet(path, columns=[PREDICTION, "model_version"])
    scores = log.loc[log["model_version"] == str(version.version), PREDICTION]
    if scores.empty:
        return PredictionDrift(None, 0, f"the batch log of {day} holds no scores of version {version.version}")
    threshold = settings.drift_thresholds.get(PREDICTION, settings.drift_psi_threshold)
    return PredictionDrift(compare(PREDICTION, reference, scores, threshold), len(scores))


def _write_json(payload: dict[str, Any], target: Path) -> None:
    write_text_atomically(target, json.dumps(payload, indent=2))
