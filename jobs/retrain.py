"""``churn retrain``: retrain when the platform's own findings call for it, and let the promotion gate decide.

Triggers, each with what it saw:

* ``drift``: the latest scoring snapshot's features (or scores) drifted from the champion's training reference
  (monitoring.drift, its thresholds);
* ``decay``: the champion's latest judged date shows decay (matured ROC-AUC, else a trusted estimate, below its
  test ROC-AUC by more than the threshold) or drifted calibration (monitoring.performance);
* ``schedule``: the champion is older than ``retrain_max_age_days``;
* ``manual``: ``--force``.

Without a trigger nothing is trained. Within ``retrain_cooldown_days`` of the last retrain, a trigger other than
``manual`` waits: a drift the new challenger could not fix would otherwise retrain every day. With one, a challenger
is trained through the training pipeline and the gate (training.registry.promote) compares it with the champion
on the same recent window, each through its own FeatureService, and promotes it only if it is non-inferior. The
decision (triggers, figures, outcome) is recorded on the challenger's version (``retrain.*`` tags) and run
(``retrain_decision.json``), and in ``reports/retrain/date=D.json``.
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities.model_registry import ModelVersion

from churn_common.champion import all_versions, registry_client, version_by_alias
from churn_common.errors import DataError, ModelNotFound
from churn_common.files import write_text_atomically
from churn_common.names import CHAMPION_ALIAS, REGISTERED_MODEL
from churn_common.settings import DataPaths, Settings

if TYPE_CHECKING:
    from monitoring.drift import DriftReport
    from monitoring.performance import PerformanceReport

logger = logging.getLogger(__name__)

RETRAINED_AT_TAG = "retrain.at"


@dataclass(frozen=True)
class Trigger:
    kind: str
    detail: str


@dataclass
class RetrainDecision:
    at: datetime
    champion_version: str | None
    triggers: list[Trigger] = field(default_factory=list)
    outcome: str = "not retrained"
    """``not retrained``, ``waiting`` (cooldown), ``promoted`` or ``refused``."""
    reason: str = ""
    challenger_version: str | None = None
    promotion: dict[str, Any] | None = None
    training: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "champion_version": self.champion_version,
            "triggers": [asdict(trigger) for trigger in self.triggers],
            "outcome": self.outcome,
            "reason": self.reason,
            "challenger_version": self.challenger_version,
            "promotion": self.promotion,
            "training": self.training,
        }


def retrain_report_file(paths: DataPaths, at: datetime) -> Path:
    return paths.reports / "retrain" / f"date={at.date().isoformat()}.json"


def _drift_trigger(settings: Settings, report: "DriftReport | None") -> Trigger | None:
    from monitoring.drift import PREDICTION, drift_report

    try:
        report = report or drift_report(settings)
    except DataError as exc:  # no scoring snapshot yet, or one from the training days: nothing to judge
        logger.info("drift not judged: %s", exc)
        return None
    scores = report.prediction.as_dict()
    drifted = report.drifted + ([PREDICTION] if scores.get("drifted") else [])
    if not drifted:
        return None
    worst = f"worst {report.worst.name} PSI {report.worst.psi:.3f}"
    return Trigger("drift", f"{report.day}: {', '.join(drifted)} over threshold ({worst})")


def _decay_trigger(settings: Settings, champion: ModelVersion, report: "PerformanceReport | None") -> Trigger | None:
    from monitoring.performance import performance_report

    try:
        report = report or performance_report(settings)
    except DataError as exc:  # no prediction log yet
        logger.info("performance not judged: %s", exc)
        return None
    rows = [row for row in report.rows if row.model_version == str(champion.version)]
    judged = [row for row in rows if row.decay.decayed is not None or row.calibration_drift]
    if not judged:
        return None
    latest = max(judged, key=lambda row: row.day)
    if latest.decay.decayed:
        auc, source = latest.decay.roc_auc, latest.decay.source
        return Trigger("decay", f"{latest.day}: {source} ROC-AUC {auc:.3f} against test {latest.decay.reference:.3f}")
    if latest.calibration_drift:
        return Trigger("decay", f"{latest.day}: calibration drifted (ECE {latest.matured.calibration.ece:.3f})")
    return None


def _created(version: ModelVersion) -> datetime:
    return datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)


def _schedule_trigger(settings: Settings, champion: ModelVersion) -> Trigger | None:
    age = settings.clock() - _created(champion)
    if age < timedelta(days=settings.retrain_max_age_days):
        return None
    return Trigger("schedule", f"champion version {champion.version} is {age.days} days old")


def find_triggers(
    settings: Settings,
    champion: ModelVersion | None,
    force: bool,
    drift: "DriftReport | None" = None,
    performance: "PerformanceReport | None" = None,
) -> list[Trigger]:
    """What calls for a retrain; ``drift`` and ``performance``: reports already made today (else made here)."""
    if champion is None:
        return [Trigger("no champion", "no champion yet: the first model is trained")]
    found = [
        _drift_trigger(settings, drift),
        _decay_trigger(settings, champion, performance),
        _schedule_trigger(settings, champion),
    ]
    if force:
        found.append(Trigger("manual", "churn retrain --force"))
    return [trigger for trigger in found if trigger is not None]


def _last_retrain(settings: Settings) -> datetime | None:
    stamps = [
        v.tags[RETRAINED_AT_TAG]
        for v in all_versions(registry_client(settings.tracking_uri))
        if RETRAINED_AT_TAG in v.tags
    ]
    return max((datetime.fromisoformat(stamp) for stamp in stamps), default=None)


def _cooling_down(settings: Settings, triggers: list[Trigger]) -> str | None:
    last = _last_retrain(settings)
    if last is None or any(trigger.kind == "manual" for trigger in triggers):
        return None
    if settings.clock() - last < timedelta(days=settings.retrain_cooldown_days):
        return f"last retrain at {last.isoformat()}, within retrain_cooldown_days={settings.retrain_cooldown_days}"
    return None


def _optional_champion(settings: Settings) -> ModelVersion | None:
    try:
        return version_by_alias(registry_client(settings.tracking_uri), CHAMPION_ALIAS)
    except ModelNotFound:
        return None


def retrain(
    settings: Settings,
    force: bool = False,
    *,
    drift: "DriftReport | None" = None,
    performance: "PerformanceReport | None" = None,
) -> RetrainDecision:
    """Decide, train if called for, let the gate promote or refuse; record the decision."""
    champion = _optional_champion(settings)
    decision = RetrainDecision(settings.clock(), None if champion is None else str(champion.version))
    decision.triggers = find_triggers(settings, champion, force, drift, performance)
    waiting = _cooling_down(settings, decision.triggers) if decision.triggers else None
    if not decision.triggers:
        decision.reason = "no trigger: no drift, no decay, champion within retrain_max_age_days"
    elif waiting:
        decision.outcome, decision.reason = "waiting", waiting
    else:
        _train_and_decide(settings, decision)
    _write_report(settings, decision)
    logger.info("retrain decision: %s (%s)", decision.outcome, decision.reason)
    return decision


def _train_and_decide(settings: Settings, decision: RetrainDecision) -> None:
    from jobs.model_commands import run_training

    summary = run_training(settings, settings.event_catalog().feature_service, promote=True)
    promotion = summary.pop("promotion")
    decision.training, decision.promotion = summary, promotion
    decision.challenger_version = str(summary["registered_version"])
    decision.outcome, decision.reason = promotion["decision"], promotion["reason"]
    _record(settings, decision)


def _record(settings: Settings, decision: RetrainDecision) -> None:
    client = registry_client(settings.tracking_uri)
    version = decision.challenger_version
    tags = {
        RETRAINED_AT_TAG: decision.at.isoformat(),
        "retrain.triggers": ",".join(trigger.kind for trigger in decision.triggers),
        "retrain.outcome": decision.outcome,
    }
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, value)
    run_id = client.get_model_version(REGISTERED_MODEL, version).run_id
    client.log_dict(run_id, decision.as_dict(), "retrain_decision.json")


def _write_report(settings: Settings, decision: RetrainDecision) -> None:
    payload = json.dumps(decision.as_dict(), indent=2, default=str) + "\n"
    write_text_atomically(retrain_report_file(settings.paths, decision.at), payload)
