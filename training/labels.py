"""Churn labels and the population they are defined on, as the entity frame for the point-in-time join.

At each observation time t (a weekly grid at 00:00 UTC):
- population: customers at t (signed up before t, not closed before t) with at least one activity event in
  [t - active_window, t). Users already inactive that long are not "churners to predict": they have churned.
- label: 1 when the user has no activity event in (t, t + horizon], else 0. Only events after t are read.
- censoring: an observation time whose horizon ends after the last event in the data is left out.

Two ASOF joins per (user, t) — the last activity before t, the first after t — keep this linear in events and
label rows, where a range join over every event in every window would not scale to a million label rows.
"""

import logging
from datetime import timedelta

import duckdb
import pandas as pd

from churn_common.errors import DataError, TrainingError
from churn_common.names import JOIN_KEY, TIMESTAMP_FIELD
from churn_common.settings import Settings
from transformations.catalog import DEFAULT_CATALOG, EventCatalog

logger = logging.getLogger(__name__)

_LABELS_SQL = """
WITH activity AS (
    SELECT user_id, event_timestamp AS ts
    FROM read_parquet($events, hive_partitioning = false)
    WHERE event_type IN (SELECT unnest($activity_types))
),
grid AS (
    SELECT unnest(generate_series($first_time, $last_time, to_days($cadence_days))) AS t
),
customers AS (
    SELECT u.user_id, g.t
    FROM read_parquet($users) u CROSS JOIN grid g
    WHERE u.signup_at < g.t AND (u.closed_at IS NULL OR u.closed_at >= g.t)
),
population AS (
    SELECT c.user_id, c.t
    FROM customers c ASOF JOIN activity a ON c.user_id = a.user_id AND c.t > a.ts
    WHERE a.ts >= c.t - to_days($active_window_days)
)
SELECT p.user_id, p.t AS event_timestamp,
       CASE WHEN a.ts IS NULL OR a.ts > p.t + to_days($horizon_days) THEN 1 ELSE 0 END AS label
FROM population p ASOF LEFT JOIN activity a ON p.user_id = a.user_id AND p.t < a.ts
ORDER BY event_timestamp, user_id
"""


def build_labels(settings: Settings, catalog: EventCatalog = DEFAULT_CATALOG) -> pd.DataFrame:
    """The entity frame: ``user_id``, ``event_timestamp`` (the observation time, UTC) and ``label`` (0/1)."""
    events_glob = str(settings.paths.events / "date=*" / "*.parquet")
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        first_time, last_time = _observation_range(con, events_glob, settings)
        params = {
            "events": events_glob,
            "users": str(settings.paths.users),
            "activity_types": list(catalog.activity_types),
            "first_time": first_time,
            "last_time": last_time,
            "cadence_days": settings.observation_cadence_days,
            "active_window_days": settings.active_window_days,
            "horizon_days": settings.label_horizon_days,
        }
        labels = con.execute(_LABELS_SQL, params).to_arrow_table().to_pandas()
    labels[JOIN_KEY] = labels[JOIN_KEY].astype("int64")
    labels[TIMESTAMP_FIELD] = labels[TIMESTAMP_FIELD].astype("datetime64[us, UTC]")
    labels["label"] = labels["label"].astype("int64")
    logger.info(
        "%d label rows over %d observation times, churn rate %.3f",
        len(labels),
        labels[TIMESTAMP_FIELD].nunique(),
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
