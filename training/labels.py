"""Churn labels as the entity frame for the point-in-time join, and the population they are kept on.

Candidates: at each observation time t (a weekly grid at 00:00 UTC), every user who is a customer at t
(``signup_at < t < closed_at``), labelled by churn_common.labels with the label the settings choose: ``inactivity``
(no activity event in (t, t + horizon]) or ``closure`` (the account closes in (t, t + horizon]). The definitions and
their boundaries live there, once. Who of the candidates is in the population (an open account as the store knows
it, a fresh snapshot, active in the trailing window) is decided after the point-in-time join by
:class:`churn_common.population.PopulationRule` on the features the store held at t (:func:`apply_population_rule`):
the one rule serving applies to the same features.

Censoring: an observation time whose horizon ends after the last event in the data is left out.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd

from churn_common.catalog import EventCatalog
from churn_common.errors import DataError, TrainingError
from churn_common.labels import LabelSpec, query_labels
from churn_common.names import TIMESTAMP_FIELD
from churn_common.population import PopulationRule, Status
from churn_common.settings import Settings

logger = logging.getLogger(__name__)

# Every user at every grid time; churn_common.labels keeps the customers.
_GRID_SQL = """
SELECT a.user_id, g.t
FROM accounts a CROSS JOIN (SELECT unnest(generate_series($first_time, $last_time, to_days($cadence_days))) AS t) g
"""


@dataclass(frozen=True)
class Population:
    """What the population rule made of the candidate rows: the number of rows per status, and the rule's window."""

    active_window_days: int
    counts: Mapping[Status, int]

    @property
    def scored(self) -> int:
        return self.counts[Status.SCORED]

    def metrics(self) -> dict[str, int]:
        """``population.<status>``: rows per status."""
        return {f"population.{status.value}": count for status, count in self.counts.items()}

    def params(self) -> dict[str, int]:
        """The counts and the rule (``population.active_window_days``)."""
        return {"population.active_window_days": self.active_window_days} | self.metrics()


def apply_population_rule(frame: pd.DataFrame, rule: PopulationRule) -> tuple[np.ndarray, Population]:
    """The rows of a point-in-time frame the rule scores (boolean mask), and the count of every status."""
    statuses = rule.statuses(frame)
    counts = {status: int(np.count_nonzero(statuses == status)) for status in Status}
    logger.info(
        "population (active window %d d) of %d candidate rows: %s",
        rule.active_window_days,
        len(frame),
        ", ".join(f"{status.value} {count}" for status, count in counts.items()),
    )
    return statuses == Status.SCORED, Population(rule.active_window_days, counts)


def build_labels(settings: Settings, catalog: EventCatalog | None = None) -> pd.DataFrame:
    """The candidates' entity frame: ``user_id``, ``event_timestamp`` (the observation time, UTC) and ``label``
    (0/1). The population rule still has to be applied to it after the point-in-time join."""
    spec = LabelSpec.of(settings, catalog)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        first_time, last_time = _observation_range(con, spec.events, settings)
        grid = {"first_time": first_time, "last_time": last_time, "cadence_days": settings.observation_cadence_days}
        labels = query_labels(con, spec, _GRID_SQL, grid)
    logger.info(
        "%d candidate label rows over %d observation times, %s label rate %.3f before the population rule",
        len(labels),
        labels[TIMESTAMP_FIELD].nunique(),
        spec.kind,
        labels["label"].mean() if len(labels) else float("nan"),
    )
    return labels


def _observation_range(
    con: duckdb.DuckDBPyConnection, events_glob: str, settings: Settings
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first grid time leaves a full trailing window of data before it; the last one is the latest grid
    time whose label horizon still ends within the data."""
    try:
        first_event, last_event = con.execute(
            "SELECT min(event_timestamp), max(event_timestamp) FROM read_parquet(?, hive_partitioning = false)",
            [events_glob],
        ).fetchone()
    except duckdb.IOException as exc:
        raise DataError(f"no validated events under {settings.paths.events}") from exc
    first_time = pd.Timestamp(first_event).floor("D") + timedelta(days=settings.active_window_days)
    horizon_end = pd.Timestamp(last_event) - timedelta(days=settings.label_horizon_days)
    if horizon_end < first_time:
        raise TrainingError(
            f"events span {first_event:%Y-%m-%d}..{last_event:%Y-%m-%d}: shorter than the active window "
            f"({settings.active_window_days} d) plus the label horizon ({settings.label_horizon_days} d)"
        )
    cadence = timedelta(days=settings.observation_cadence_days)
    last_time = first_time + ((horizon_end - first_time) // cadence) * cadence
    return first_time, last_time
