"""``churn pipeline daily``: the job a CronJob runs once a day, after the day's raw drop has landed.

For day D it validates D's drop (``raw/events/date=D``) and every earlier drop no run has validated yet (a missed
day), builds the features of those days plus the late-data window before them, rewrites the offline side of the
today view for every event day those drops touched (the push path fills its online side during the day), and brings
the online store up to that build. Once there is a champion it then watches itself: batch scoring, drift,
performance, the retraining decision (which may train and promote a challenger) and the day's HTML report, each
pushing its metrics. Each step also runs alone (``churn data validate``, ``churn features build``, ``churn features
today``, ``churn materialize``, ``churn score``, ``churn monitor drift|performance|report``, ``churn retrain``). The
success metric is written last. A failing step stops the chain with its message and a non-zero exit; the outputs of
earlier steps stay as they are (each writes atomically), so the next run starts from them.

The drops are validated in one gate run as of the settings clock (``CHURN_NOW`` in a simulation), against the
accounts export as it is then (``raw/users.parquet``, replaced by each day's export). Re-running a day with the same
inputs and clock gives byte-identical outputs; with a later clock only the first-seen time of an account attribute
change (its valid-from) can differ.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from churn_common import privacy
from churn_common.champion import registry_client, version_by_alias
from churn_common.errors import DataError, ModelNotFound
from churn_common.names import CHAMPION_ALIAS
from churn_common.settings import Settings
from jobs.materialize import MaterializationReport, export_metrics, materialize
from monitoring.metrics import ChampionPerformance, export_monitoring, export_pipeline_success
from transformations.features import BuildSummary, build_features
from transformations.today import TodaySummary, build_today_table
from transformations.validation import ValidationReport, validate

if TYPE_CHECKING:
    from monitoring.drift import DriftReport
    from monitoring.performance import PerformanceReport

logger = logging.getLogger(__name__)

DROP_PREFIX = "date="


@dataclass
class DailyReport:
    day: date
    validated: list[str] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    build: dict[str, Any] | None = None
    today: list[dict[str, Any]] = field(default_factory=list)
    """The today tables rewritten: one per event day the validated drops touched."""
    materialization: dict[str, Any] | None = None
    scoring: dict[str, Any] | None = None
    drift: dict[str, Any] | None = None
    performance: dict[str, Any] | None = None
    retrain: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    """Steps not run, and why (monitoring before there is a champion, drift on a training day)."""
    report: str | None = None
    """The day's HTML report."""
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "validated": self.validated,
            "validation": self.validation,
            "build": self.build,
            "today": self.today,
            "materialization": self.materialization,
            "scoring": self.scoring,
            "drift": self.drift,
            "performance": self.performance,
            "retrain": self.retrain,
            "skipped": self.skipped,
            "report": self.report,
            "seconds": {step: round(value, 3) for step, value in self.seconds.items()},
        }


@contextmanager
def _step(report: DailyReport, name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        report.seconds[name] = time.perf_counter() - started


def default_day(settings: Settings) -> date:
    """The last day that has ended by the settings clock."""
    return settings.clock().date() - timedelta(days=1)


def drops_to_validate(settings: Settings, day: date) -> list[date]:
    """Day ``day`` (always: re-running a day re-validates it) and every earlier drop no run validated yet."""
    paths = settings.paths
    if not (paths.raw_events / f"{DROP_PREFIX}{day.isoformat()}").is_dir():
        raise DataError(f"no raw events for {day} at {paths.raw_events / (DROP_PREFIX + day.isoformat())}")
    validated = {path.stem.removeprefix("batch=") for path in paths.events.glob("date=*/batch=*.parquet")}
    drops = []
    for directory in sorted(paths.raw_events.glob(f"{DROP_PREFIX}*")):
        drop = date.fromisoformat(directory.name.removeprefix(DROP_PREFIX))
        if drop == day or (drop < day and drop.isoformat() not in validated):
            drops.append(drop)
    return drops


def _validate(settings: Settings, drops: list[date]) -> ValidationReport:
    """One gate run over the drops, each its own batch, against the accounts export as it is now."""
    logger.info("validating the drops of %s", ", ".join(map(str, drops)))
    return validate(
        settings.paths,
        now=settings.clock(),
        max_quarantine_share=settings.max_quarantine_share,
        catalog=settings.event_catalog(),
        events_source=[settings.paths.raw_events / f"{DROP_PREFIX}{drop.isoformat()}" for drop in drops],
        late_data_days=settings.late_data_days,
        erased=privacy.erased(settings),
    )


def _summary(build: BuildSummary) -> dict[str, Any]:
    return {
        "seq": build.seq,
        "first_day": build.first_day.isoformat(),
        "last_day": build.last_day.isoformat(),
        "rows": build.rows,
        "later_versions": build.later_versions,
    }


def days_touched(settings: Settings, drops: list[date]) -> list[date]:
    """The event days holding a batch of these drops: each drop's own day and the earlier days its late events
    belong to."""
    batches = {f"batch={drop.isoformat()}.parquet" for drop in drops}
    partitions = {
        path.parent.name for path in settings.paths.events.glob("date=*/batch=*.parquet") if path.name in batches
    }
    return sorted(date.fromisoformat(name.removeprefix("date=")) for name in partitions)


def _today(summary: TodaySummary) -> dict[str, Any]:
    return {"day": summary.day.isoformat(), "rows": summary.rows, "events": summary.events}


def run_daily(settings: Settings, day: date | None = None) -> DailyReport:
    """Validate -> build -> materialise for ``day`` (default: yesterday by the settings clock), then, once there is
    a champion, score -> drift -> performance -> retrain decision -> the day's report; the pipeline's success metric
    last, only when every step succeeded."""
    day = day or default_day(settings)
    report = DailyReport(day)
    drops = drops_to_validate(settings, day)
    with _step(report, "validate"):
        report.validation = _validate(settings, drops).as_dict()
    report.validated = [drop.isoformat() for drop in drops]
    with _step(report, "build"):
        report.build = _summary(build_features(settings, start=min(drops), end=day))
    with _step(report, "today"):
        report.today = [_today(build_today_table(settings, touched)) for touched in days_touched(settings, drops)]
    with _step(report, "materialize"):
        materialization: MaterializationReport = materialize(settings)
        export_metrics(materialization, settings.paths.metrics / "materialize.prom", settings.pushgateway_url)
    report.materialization = materialization.as_dict()
    _monitor(settings, report)
    export_pipeline_success(settings.paths.metrics / "pipeline.prom", settings.pushgateway_url, report.seconds)
    logger.info("daily pipeline for %s done: build %d online", day, materialization.build)
    return report


def _champion_version(settings: Settings) -> str | None:
    try:
        return str(version_by_alias(registry_client(settings.tracking_uri), CHAMPION_ALIAS).version)
    except ModelNotFound:
        return None


def _monitor(settings: Settings, report: DailyReport) -> None:
    """Score -> drift -> performance -> retrain decision -> metrics -> the day's report (nothing without a champion)."""
    from jobs.retrain import retrain
    from monitoring.report import write_daily_report

    version = _champion_version(settings)
    if version is None:
        report.skipped["monitoring"] = "no champion yet: `churn retrain` (or `churn train --promote`) trains the first"
        return
    scored_on, drift, performance = _measure(settings, report)
    with _step(report, "retrain"):
        decision = retrain(settings, drift=drift, performance=performance)
    report.retrain = decision.as_dict()
    export_monitoring(
        settings.paths.metrics / "monitoring.prom",
        settings.pushgateway_url,
        champion_version=version,
        drift=drift,
        performance=ChampionPerformance.of(performance, version),
        retrain=decision,
    )
    with _step(report, "report"):
        report.report = str(write_daily_report(settings, scored_on))


def _measure(settings: Settings, report: DailyReport) -> tuple[date, "DriftReport | None", "PerformanceReport"]:
    """The champion's scores of today, their drift, and its performance per scoring date so far."""
    from monitoring.drift import drift_report
    from monitoring.performance import performance_report
    from monitoring.scoring import score_batch

    with _step(report, "score"):
        scoring = score_batch(settings)
    report.scoring = scoring.as_dict()
    drift = None
    with _step(report, "drift"):
        try:
            drift = drift_report(settings, scoring.scored_at.date())
            report.drift = drift.summary()
        except DataError as exc:  # e.g. the champion trained on this very day's rows: nothing to compare
            report.skipped["drift"] = str(exc)
    with _step(report, "performance"):
        performance = performance_report(settings)
    report.performance = performance.summary()
    return scoring.scored_at.date(), drift, performance
