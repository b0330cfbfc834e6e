"""The daily monitoring numbers as Prometheus metrics: written as a textfile beside the reports and pushed to the
Pushgateway when one is configured (job ``churn-monitoring``; the pipeline's own success metric is job
``churn-pipeline``, so a failed monitoring step can never look like a successful run).

The same numbers as the daily report, latest values only (one series per feature, never per date): what the alert
rules in k8s/monitoring/alerts.yaml read."""

import calendar
import time
from collections.abc import Mapping
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


def _gauge(registry: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    return Gauge(name, doc, list(labels), registry=registry)


def _drift_metrics(registry: CollectorRegistry, drift: "DriftReport") -> None:
    psi = _gauge(registry, "churn_drift_psi", "PSI of the feature against the champion's reference", ("feature",))
    for feature in drift.features:
        psi.labels(feature.name).set(feature.psi)
    _gauge(registry, "churn_drift_features_drifted", "Features whose PSI is over their threshold").set(
        len(drift.drifted)
    )
    scores = drift.prediction.as_dict()
    if scores.get("available"):
        _gauge(registry, "churn_prediction_drift_psi", "PSI of the scores against the training scores").set(
            scores["psi"]
        )
    _gauge(registry, "churn_drift_scoring_date_seconds", "The scoring date the drift figures are of").set(
        calendar.timegm(drift.day.timetuple())
    )


def _performance_metrics(registry: CollectorRegistry, performance: "PerformanceReport", version: str) -> None:
    rows = sorted((row for row in performance.rows if row.model_version == version), key=lambda row: row.day)
    auc = _gauge(registry, "churn_performance_roc_auc", "The champion's ROC-AUC, latest date of each kind", ("kind",))
    if rows and rows[-1].estimated.values["roc_auc"] is not None:
        auc.labels("estimated").set(rows[-1].estimated.values["roc_auc"])
    matured = [row for row in rows if row.matured is not None]
    if matured and matured[-1].matured.metrics.values["roc_auc"] is not None:
        auc.labels("matured").set(matured[-1].matured.metrics.values["roc_auc"])
    flags = {
        "churn_performance_decayed": ("The latest judged date shows decay (1) or not (0)", lambda r: r.decay.decayed),
        "churn_performance_calibration_drifted": (
            "The latest matured date's calibration drifted (1) or not (0)",
            lambda r: r.calibration_drift,
        ),
    }
    for name, (doc, flag) in flags.items():
        judged = [flag(row) for row in rows if flag(row) is not None]
        if judged:
            _gauge(registry, name, doc).set(1.0 if judged[-1] else 0.0)


def _retrain_metrics(registry: CollectorRegistry, decision: "RetrainDecision") -> None:
    outcome = _gauge(registry, "churn_retrain_outcome", "The last retrain decision (1 for its outcome)", ("outcome",))
    for name in OUTCOMES:
        outcome.labels(name).set(1.0 if decision.outcome == name else 0.0)
    triggers = _gauge(registry, "churn_retrain_triggers", "Triggers the last decision saw, per kind", ("kind",))
    for kind in ("drift", "decay", "schedule", "manual"):
        triggers.labels(kind).set(sum(trigger.kind == kind for trigger in decision.triggers))


def export_monitoring(
    textfile: Path,
    pushgateway: str,
    *,
    champion_version: str,
    drift: "DriftReport | None",
    performance: "PerformanceReport | None",
    retrain: "RetrainDecision | None",
) -> CollectorRegistry:
    registry = CollectorRegistry()
    _gauge(registry, "churn_monitoring_champion_version", "The model version the figures are of").set(
        float(champion_version)
    )
    if drift is not None:
        _drift_metrics(registry, drift)
    if performance is not None:
        _performance_metrics(registry, performance, champion_version)
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
