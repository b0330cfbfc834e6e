"""The daily monitoring numbers as Prometheus metrics: written as a textfile beside the reports and pushed to the
Pushgateway when one is configured (job ``churn-monitoring``; the pipeline's own success metric is job
``churn-pipeline``, so a failed monitoring step can never look like a successful run).

The same numbers as the daily report, latest values only (one series per feature, never per date): what the alert
rules in k8s/monitoring/alerts.yaml read."""

import calendar
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

if TYPE_CHECKING:
    from jobs.retrain import RetrainDecision
    from monitoring.drift import DriftReport
    from monitoring.performance import PerformanceReport

MONITORING_JOB = "churn-monitoring"
PIPELINE_JOB = "churn-pipeline"
OUTCOMES = ("not retrained", "waiting", "promoted", "refused")
TRIGGER_KINDS = ("drift", "decay", "schedule", "manual")


def _gauge(registry: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    return Gauge(name, doc, list(labels), registry=registry)


@dataclass(frozen=True)
class ChampionPerformance:
    """The champion's latest figures of the performance report: what the decay alerts read."""

    estimated_roc_auc: float | None = None
    matured_roc_auc: float | None = None
    decayed: bool | None = None
    """The latest date with a judgement (matured, or a trusted estimate)."""
    calibration_drifted: bool | None = None
    """The latest matured date."""

    @classmethod
    def of(cls, performance: "PerformanceReport", version: str) -> "ChampionPerformance":
        rows = sorted((row for row in performance.rows if row.model_version == version), key=lambda row: row.day)
        matured = [row for row in rows if row.matured is not None]
        decays = [row.decay.decayed for row in rows if row.decay.decayed is not None]
        calibrations = [row.calibration_drift for row in rows if row.calibration_drift is not None]
        return cls(
            estimated_roc_auc=rows[-1].estimated.values["roc_auc"] if rows else None,
            matured_roc_auc=matured[-1].matured.metrics.values["roc_auc"] if matured else None,
            decayed=decays[-1] if decays else None,
            calibration_drifted=calibrations[-1] if calibrations else None,
        )


def _drift_metrics(registry: CollectorRegistry, drift: "DriftReport") -> None:
    psi = _gauge(registry, "churn_drift_psi", "PSI of the feature against the champion's reference", ("feature",))
    threshold = _gauge(registry, "churn_drift_psi_threshold", "The feature's drift threshold", ("feature",))
    for feature in drift.features:
        psi.labels(feature.name).set(feature.psi)
        threshold.labels(feature.name).set(feature.threshold)
    _gauge(registry, "churn_drift_features_drifted", "Features whose PSI is over their threshold").set(
        len(drift.drifted)
    )
    scores = drift.prediction.drift
    if scores is not None:
        _gauge(registry, "churn_prediction_drift_psi", "PSI of the scores against the training scores").set(scores.psi)
        _gauge(registry, "churn_prediction_drift_psi_threshold", "The scores' drift threshold").set(scores.threshold)
    _gauge(registry, "churn_drift_scoring_date_seconds", "The scoring date the drift figures are of").set(
        calendar.timegm(drift.day.timetuple())
    )


def _performance_metrics(registry: CollectorRegistry, figures: ChampionPerformance) -> None:
    auc = _gauge(registry, "churn_performance_roc_auc", "The champion's ROC-AUC, latest date of each kind", ("kind",))
    for kind, value in (("estimated", figures.estimated_roc_auc), ("matured", figures.matured_roc_auc)):
        if value is not None:
            auc.labels(kind).set(value)
    flags = {
        "churn_performance_decayed": ("The latest judged date shows decay (1) or not (0)", figures.decayed),
        "churn_performance_calibration_drifted": (
            "The latest matured date's calibration drifted (1) or not (0)",
            figures.calibration_drifted,
        ),
    }
    for name, (doc, flag) in flags.items():
        if flag is not None:
            _gauge(registry, name, doc).set(1.0 if flag else 0.0)


def _retrain_metrics(registry: CollectorRegistry, decision: "RetrainDecision") -> None:
    outcome = _gauge(registry, "churn_retrain_outcome", "The last retrain decision (1 for its outcome)", ("outcome",))
    for name in OUTCOMES:
        outcome.labels(name).set(1.0 if decision.outcome == name else 0.0)
    triggers = _gauge(registry, "churn_retrain_triggers", "Triggers the last decision saw, per kind", ("kind",))
    for kind in TRIGGER_KINDS:
        triggers.labels(kind).set(sum(trigger.kind == kind for trigger in decision.triggers))


def export_monitoring(
    textfile: Path,
    pushgateway: str,
    *,
    champion_version: str,
    drift: "DriftReport | None",
    performance: ChampionPerformance | None,
    retrain: "RetrainDecision | None",
) -> CollectorRegistry:
    registry = CollectorRegistry()
    _gauge(registry, "churn_monitoring_champion_version", "The model version the figures are of").set(
        float(champion_version)
    )
    if drift is not None:
        _drift_metrics(registry, drift)
    if performance is not None:
        _performance_metrics(registry, performance)
    if retrain is not None:
        _retrain_metrics(registry, retrain)
    _write(registry, textfile, pushgateway, MONITORING_JOB)
    return registry


def export_pipeline_success(
    textfile: Path, pushgateway: str, steps: Mapping[str, float], pipeline: str = "daily"
) -> CollectorRegistry:
    """Written last, only when every step of the run succeeded: a missing daily run is an old timestamp."""
    registry = CollectorRegistry()
    success = _gauge(
        registry, "churn_pipeline_last_success_timestamp_seconds", "When the run last succeeded", ("pipeline",)
    )
    success.labels(pipeline).set(time.time())
    duration = _gauge(registry, "churn_pipeline_step_duration_seconds", "Wall time of each step", ("pipeline", "step"))
    for step, seconds in steps.items():
        duration.labels(pipeline, step).set(seconds)
    _write(registry, textfile, pushgateway, PIPELINE_JOB)
    return registry


def _write(registry: CollectorRegistry, textfile: Path, pushgateway: str, job: str) -> None:
    textfile.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(textfile), registry)
    if pushgateway:
        push_to_gateway(pushgateway, job=job, registry=registry)
