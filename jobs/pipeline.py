"""``churn pipeline daily``: the job a CronJob runs once a day, after the day's raw drop has landed.

For day D it validates D's drop (``raw/events/date=D``) and every earlier drop no run has validated yet (a missed
day), builds the features of those days plus the late-data window before them, and brings the online store up to
that build. Each step also runs alone (``churn data validate``, ``churn features build``, ``churn materialize``). A
failing step stops the chain with its message and a non-zero exit; the outputs of earlier steps stay as they are
(each writes atomically), so the next run starts from them.

The drops are validated in one gate run as of the settings clock (``CHURN_NOW`` in a simulation), against the
accounts export as it is then (``raw/users.parquet``, replaced by each day's export). Re-running a day with the same
inputs and clock gives byte-identical outputs; with a later clock only the first-seen time of an account attribute
change (its valid-from) can differ.
"""

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from churn_common import privacy
from churn_common.errors import DataError
from churn_common.settings import Settings
from jobs.materialize import MaterializationReport, export_metrics, materialize
from transformations.features import BuildSummary, build_features
from transformations.validation import ValidationReport, validate

logger = logging.getLogger(__name__)

DROP_PREFIX = "date="


@dataclass
class DailyReport:
    day: date
    validated: list[str] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    build: dict[str, Any] | None = None
    materialization: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "validated": self.validated,
            "validation": self.validation,
            "build": self.build,
            "materialization": self.materialization,
        }


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


def run_daily(settings: Settings, day: date | None = None) -> DailyReport:
    """Validate -> build -> materialise for ``day`` (default: yesterday by the settings clock)."""
    day = day or default_day(settings)
    report = DailyReport(day)
    drops = drops_to_validate(settings, day)
    report.validation = _validate(settings, drops).as_dict()
    report.validated = [drop.isoformat() for drop in drops]
    build = build_features(settings, start=min(drops), end=day)
    report.build = _summary(build)
    materialization: MaterializationReport = materialize(settings)
    export_metrics(materialization, settings.paths.metrics / "materialize.prom", settings.pushgateway_url)
    report.materialization = materialization.as_dict()
    logger.info("daily pipeline for %s done: build %d online", day, materialization.build)
    return report
