"""Churn labels, defined once: training labels its observation rows with them, and monitoring the rows it scored.

Two definitions, one per kind of product (``EventCatalog.label``, overridden by ``Settings.label`` and
``churn train --label``):

- ``inactivity``: 1 when the user has no activity event (the catalogue's activity types) in (t, t + horizon].
  For products whose churners fade out before they leave, if they ever close an account (the e-learning portal).
- ``closure``: 1 when the account's ``closed_at`` falls in (t, t + horizon]. For products that know when a
  subscription ends: their users stay active right up to cancelling, so an inactivity label marks almost nobody.

Boundaries, the same as churn_common.population's and the feature build's: only a customer at t is labelled, and a
user is a customer at t when ``signup_at < t < closed_at`` (closed_at null: still open). So an account closing
exactly at t is closed at t: no row at t under either label (it is gone, not churning). One closing a microsecond
after t is a customer at t, and a churner under ``closure``. A signup at t is no customer yet at t. Both label
intervals are open at t and closed at t + horizon: an event exactly at t is the present, not the future, and an
event or closure exactly at t + horizon is inside.

The inputs are the validated tables: the events (activity types only) and the users table, the accounts export, with
signup and closure as the latest export knows them.
"""

import glob
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pandas as pd

from churn_common.catalog import EventCatalog, Label
from churn_common.errors import ConfigurationError, DataError
from churn_common.names import JOIN_KEY, TIMESTAMP_FIELD
from churn_common.settings import Settings

_CUSTOMERS_SQL = """
WITH accounts AS (SELECT user_id, signup_at, closed_at FROM read_parquet($users)),
entities AS ({entities}),
customers AS (
    SELECT e.user_id, e.t, a.closed_at
    FROM entities e JOIN accounts a ON e.user_id = a.user_id
    WHERE a.signup_at < e.t AND (a.closed_at IS NULL OR e.t < a.closed_at)
)"""

# `a` is the first activity after t (one ASOF join per row, linear in events and rows); NULL when there is none.
_INACTIVITY_SQL = """,
activity AS (
    SELECT user_id, event_timestamp AS ts
    FROM read_parquet($events, hive_partitioning = false)
    WHERE event_type IN (SELECT unnest($activity_types))
)
SELECT c.user_id, c.t, CASE WHEN a.ts IS NULL OR a.ts > c.t + to_days($horizon_days) THEN 1 ELSE 0 END AS label
FROM customers c ASOF LEFT JOIN activity a ON c.user_id = a.user_id AND c.t < a.ts
ORDER BY c.t, c.user_id
"""

# A customer at t has closed_at > t or NULL (then the comparison is NULL: not a churner).
_CLOSURE_SQL = """
SELECT c.user_id, c.t, CASE WHEN c.closed_at <= c.t + to_days($horizon_days) THEN 1 ELSE 0 END AS label
FROM customers c
ORDER BY c.t, c.user_id
"""

_LABEL_SQL: dict[str, str] = {"inactivity": _INACTIVITY_SQL, "closure": _CLOSURE_SQL}


@dataclass(frozen=True)
class LabelSpec:
    """Which label, over which horizon, from which validated tables."""

    kind: Label
    horizon_days: int
    events: str
    """Glob of the validated event files."""
    users: str
    """The validated users table."""
    activity_types: tuple[str, ...]
    """The event types that count as activity (the inactivity label reads them)."""

    @classmethod
    def of(cls, settings: Settings, catalog: EventCatalog | None = None) -> "LabelSpec":
        """The settings' label (``Settings.label``, else the catalogue's) over their horizon and data directory."""
        catalog = catalog or settings.event_catalog()
        return cls(
            kind=settings.label or catalog.label,
            horizon_days=settings.label_horizon_days,
            events=str(settings.paths.events / "date=*" / "*.parquet"),
            users=str(settings.paths.users),
            activity_types=catalog.activity_types,
        )

    def params(self) -> dict[str, Any]:
        """The query parameters :func:`label_sql` of this kind reads."""
        params: dict[str, Any] = {"users": self.users, "horizon_days": self.horizon_days}
        if self.kind == "inactivity":
            params |= {"events": self.events, "activity_types": list(self.activity_types)}
        return params


def label_sql(kind: Label, entities: str) -> str:
    """The query labelling the rows of ``entities``: SQL of a relation with ``user_id`` and ``t`` (TIMESTAMPTZ), which
    may read ``accounts`` (user_id, signup_at, closed_at: the users table). Columns out: user_id, t, label, for the
    rows that are customers at t, ordered by t and user. Parameters: :meth:`LabelSpec.params`."""
    if kind not in _LABEL_SQL:
        raise ConfigurationError(f"unknown label {kind!r}: expected one of {sorted(_LABEL_SQL)}")
    return _CUSTOMERS_SQL.format(entities=entities) + _LABEL_SQL[kind]


def query_labels(
    con: duckdb.DuckDBPyConnection, spec: LabelSpec, entities: str, params: dict[str, Any] | None = None
) -> pd.DataFrame:
    """:func:`label_sql` on ``con`` with ``params`` (those ``entities`` reads): ``user_id``, ``event_timestamp``
    (UTC) and ``label`` (0/1). Sets the session time zone to UTC, so a horizon of N days is N * 24 hours."""
    con.execute("SET TimeZone = 'UTC'")
    try:
        table = con.execute(label_sql(spec.kind, entities), spec.params() | (params or {})).to_arrow_table()
    except duckdb.IOException as exc:
        raise DataError(f"cannot read the validated users or events for the {spec.kind} label: {exc}") from exc
    labels = table.to_pandas().rename(columns={"t": TIMESTAMP_FIELD})
    return labels.astype({JOIN_KEY: "int64", TIMESTAMP_FIELD: "datetime64[us, UTC]", "label": "int64"})


def label_entities(entities: pd.DataFrame, spec: LabelSpec) -> pd.DataFrame:
    """Labels for (``user_id``, ``event_timestamp``) rows, e.g. the rows a model scored: the rows whose user was a
    customer at that time, with ``label``; the others (closed, not yet signed up, unknown) are left out."""
    rows = entities[[JOIN_KEY, TIMESTAMP_FIELD]]
    with duckdb.connect() as con:
        con.register("entity_rows", rows)
        return query_labels(con, spec, f"SELECT {JOIN_KEY}, {TIMESTAMP_FIELD} AS t FROM entity_rows")


def matured_until(spec: LabelSpec, now: datetime) -> datetime | None:
    """The latest instant whose labels are final at ``now``: a row at t has a matured label when t is at or before it.

    The label of t is about (t, t + horizon], so it is final once that window has passed (t + horizon <= now) and the
    validated events reach its end (t + horizon <= the newest validated event; until then an active user would look
    like a churner): the censoring training applies to its observation times too (training.labels). None while
    there are no validated events, when nothing has matured."""
    if not glob.glob(spec.events):
        return None
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        try:
            (newest,) = con.execute(
                "SELECT max(event_timestamp) FROM read_parquet(?, hive_partitioning = false)", [spec.events]
            ).fetchone()
        except duckdb.Error as exc:
            raise DataError(f"cannot read the validated events {spec.events}: {exc}") from exc
    if newest is None:
        return None
    return min(now, newest) - timedelta(days=spec.horizon_days)
