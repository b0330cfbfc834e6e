"""Today's activity per user, derived from the event catalogue: the one computation behind the ``user_activity_today``
feature view, used online by the push path and offline by the nightly build.

A today row describes one user's events of one UTC day: per event type the number of events (``<count_feature>_today``)
and, for a type that carries a value, the sum of the values (``<count_feature>_value_today``; a catalogue "mean" is
that sum over the count), and whether any of them was an activity event (``active_today``). Its
``event_timestamp`` is the time of its newest event, so a row says "as of" when; ``created`` is when its newest input
arrived. A row only speaks for the day of its ``event_timestamp``: readers take it on that day and read "no events
yet" on any later one (the view's ttl bounds how far back Feast looks at all).

:func:`today_rows` turns a batch of validated events into such rows, per (user, day). Sums are kept as integer
micro-units (``round(value * 1e6)``, as the snapshot build sums them), so a total is exact whatever the order and
grouping of its events: the online row accumulated push by push and the offline row built from the day's events in
one go are equal to the last bit (tests/transformations/test_today.py, tests/serving/test_push.py).
:func:`build_today_table` is the offline writer the nightly build calls once per day it validated.
"""

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churn_common.catalog import EventCatalog
from churn_common.files import write_table_atomically
from churn_common.names import CREATED_TIMESTAMP_FIELD, JOIN_KEY, TIMESTAMP_FIELD
from churn_common.settings import Settings

logger = logging.getLogger(__name__)

VALUE_SCALE = 1_000_000  # micro-units, as transformations.features sums values
DAY_US = 86_400 * 1_000_000
TS_US_UTC = pa.timestamp("us", tz="UTC")
ACTIVE_TODAY = "active_today"
PART_FILE = "part-0.parquet"
EVENT_COLUMNS = ("user_id", "event_timestamp", "event_type", "value")
"""What the computation reads of a validated event (``ingested_at`` too, when there is one)."""

FieldKind = Literal["count", "value", "flag"]


@dataclass(frozen=True)
class TodayField:
    name: str
    kind: FieldKind
    event_type: str | None  # the catalogue's event type it counts or sums; None for the activity flag
    description: str


def today_fields(catalog: EventCatalog) -> tuple[TodayField, ...]:
    """The view's features, in column order: per event type its count (and value sum), then the activity flag."""
    fields = []
    for event_type in catalog.event_types:
        what = event_type.description or f"{event_type.name} events"
        fields.append(TodayField(f"{event_type.count_feature}_today", "count", event_type.name, f"{what}, today"))
        if event_type.has_value:
            # A sum whatever the catalogue's aggregate: a mean cannot be accumulated push by push, a sum can.
            text = f"sum of the values of {what} today (their {event_type.value_aggregate} over the day's count)"
            fields.append(TodayField(f"{event_type.count_feature}_value_today", "value", event_type.name, text))
    fields.append(TodayField(ACTIVE_TODAY, "flag", None, "whether the user had an activity event today"))
    return tuple(fields)


MEASURE_TAG, EVENT_TYPE_TAG = "measure", "event_type"


def today_tags(field: TodayField) -> dict[str, str]:
    """The Feast field tags that say what a field measures: serving presents the view from its registered definition."""
    return {MEASURE_TAG: field.kind} | ({EVENT_TYPE_TAG: field.event_type} if field.event_type else {})


def table_schema(catalog: EventCatalog) -> pa.Schema:
    """The offline table's schema, which the feature view declares and the push path writes."""
    kinds = {"count": pa.int64(), "value": pa.float64(), "flag": pa.bool_()}
    features = [(f.name, kinds[f.kind]) for f in today_fields(catalog)]
    return pa.schema(
        [(JOIN_KEY, pa.int64()), (TIMESTAMP_FIELD, TS_US_UTC), (CREATED_TIMESTAMP_FIELD, TS_US_UTC), *features]
    )


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day."""
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


def to_micro(value: float) -> int:
    """A value (or a stored sum) as integer micro-units; exact for |value| below ~9e9."""
    return round(value * VALUE_SCALE)


# ------------------------------------------------------------------------------------------ the computation


def today_rows(events: pa.Table, catalog: EventCatalog) -> pa.Table:
    """Validated events -> one row per (user, UTC day), sorted by day then user: ``user_id``, ``event_timestamp`` (the
    newest event), ``created`` (the newest ``ingested_at``, or the newest event without one), every count, every value
    sum in integer micro-units, and ``active_today``. Event types outside the catalogue are ignored (the validation
    gate and the push path refuse them)."""
    types = events["event_type"]
    micro = pc.cast(pc.round(pc.multiply(pc.fill_null(events["value"], 0.0), float(VALUE_SCALE))), pa.int64())
    stamps = events["event_timestamp"]
    arrived = events["ingested_at"] if "ingested_at" in events.column_names else stamps
    columns: dict[str, Any] = {
        JOIN_KEY: events["user_id"],
        "day": pc.divide(pc.cast(stamps, pa.int64()), DAY_US),
        TIMESTAMP_FIELD: stamps,
        CREATED_TIMESTAMP_FIELD: _later(arrived, stamps),
        ACTIVE_TODAY: pc.is_in(types, pa.array(catalog.activity_types)),
    }
    for field in today_fields(catalog):
        if field.kind != "flag":
            matches = pc.fill_null(pc.equal(types, field.event_type), False)
            columns[field.name] = pc.if_else(matches, micro if field.kind == "value" else 1, 0)
    table = pa.table(columns).filter(pc.is_in(types, pa.array(catalog.names)))
    return _grouped(table, catalog)


def _later(first: pa.ChunkedArray, second: pa.ChunkedArray) -> pa.ChunkedArray:
    """The later of two instants per row (Arrow has no element-wise max of zoned timestamps), nulls skipped."""
    latest = pc.max_element_wise(pc.cast(first, pa.int64()), pc.cast(second, pa.int64()))
    return pc.cast(latest, TS_US_UTC)


def _grouped(table: pa.Table, catalog: EventCatalog) -> pa.Table:
    names = [field.name for field in today_fields(catalog) if field.kind != "flag"]
    aggregates = [(TIMESTAMP_FIELD, "max"), (CREATED_TIMESTAMP_FIELD, "max"), (ACTIVE_TODAY, "any")]
    grouped = table.group_by([JOIN_KEY, "day"]).aggregate([*aggregates, *((name, "sum") for name in names)])
    grouped = grouped.rename_columns([_output_name(name) for name in grouped.column_names])
    order = [JOIN_KEY, TIMESTAMP_FIELD, CREATED_TIMESTAMP_FIELD, *(f.name for f in today_fields(catalog))]
    return grouped.sort_by([("day", "ascending"), (JOIN_KEY, "ascending")]).select(order)


def _output_name(column: str) -> str:
    for suffix in ("_max", "_any", "_sum"):
        if column.endswith(suffix):
            return column.removesuffix(suffix)
    return column


def with_values(rows: pa.Table, catalog: EventCatalog) -> pa.Table:
    """Rows of :func:`today_rows` (or accumulated ones) as the feature table holds them: value sums in their unit."""
    for field in today_fields(catalog):
        if field.kind == "value":
            position = rows.column_names.index(field.name)
            values = pc.divide(pc.cast(rows[field.name], pa.float64()), float(VALUE_SCALE))
            rows = rows.set_column(position, field.name, values)
    return rows.cast(table_schema(catalog))


def add_rows(stored: Mapping[str, Any] | None, batch: Mapping[str, Any], catalog: EventCatalog) -> dict[str, Any]:
    """A row of the same user and day, ``stored`` (as the feature table holds it; None: no row yet) plus ``batch`` (a
    row of :func:`today_rows`, sums in micro-units): the accumulated row, sums in micro-units. The push path's rule,
    in Python; the Redis push applies the same one inside Redis (serving.push)."""
    if stored is None:
        return dict(batch)
    row = {JOIN_KEY: batch[JOIN_KEY]}
    row[TIMESTAMP_FIELD] = max(stored[TIMESTAMP_FIELD], batch[TIMESTAMP_FIELD])
    row[CREATED_TIMESTAMP_FIELD] = max(stored[CREATED_TIMESTAMP_FIELD], batch[CREATED_TIMESTAMP_FIELD])
    for field in today_fields(catalog):
        if field.kind == "flag":
            row[field.name] = bool(stored[field.name]) or bool(batch[field.name])
        elif field.kind == "value":
            row[field.name] = to_micro(stored[field.name]) + batch[field.name]
        else:
            row[field.name] = int(stored[field.name]) + batch[field.name]
    return row


def push_problems(events: pa.Table, catalog: EventCatalog, now: datetime) -> list[str]:
    """Why events may not be pushed at ``now``, one message per bad event: the validation gate's rules that hold before
    the account is read (known type, a finite value in the catalogue's range exactly when the type carries one, not in
    the future), and the push path's own: the event is of today (UTC), earlier days come through the gate and the
    nightly build."""
    start, _ = day_bounds(now.date())
    problems = []
    for position, event in enumerate(events.select(list(EVENT_COLUMNS)).to_pylist()):
        problem = _event_problem(event, catalog, now, start)
        if problem:
            problems.append(f"event {position} (user {event['user_id']}): {problem}")
    return problems


def _event_problem(event: Mapping[str, Any], catalog: EventCatalog, now: datetime, start: datetime) -> str | None:
    name, value, stamp = event["event_type"], event["value"], event["event_timestamp"]
    if name not in catalog.names:
        return f"unknown_event_type: {name!r} is not in the event catalogue"
    event_type = catalog.by_name(name)
    if not event_type.has_value and value is not None:
        return f"invalid_value: {name} events carry no value"
    low, high = event_type.value_min, event_type.value_max
    if event_type.has_value and not (value is not None and math.isfinite(value) and low <= value <= high):
        return f"invalid_value: {name} needs a finite value in [{event_type.value_min}, {event_type.value_max}]"
    if stamp > now:
        return f"future_timestamp: {stamp.isoformat()} is after now ({now.isoformat()})"
    if stamp < start:
        return f"not_today: {stamp.isoformat()} is before today ({start.date()}); earlier days come through the gate"
    return None


# ------------------------------------------------------------------------------------------ the offline writer


@dataclass(frozen=True)
class TodaySummary:
    day: date
    path: Path
    rows: int
    events: int


def today_partition(settings: Settings, day: date) -> Path:
    return settings.paths.today / f"date={day.isoformat()}" / PART_FILE


def _validated_events(settings: Settings, day: date) -> pa.Table:
    """Every validated batch of ``day`` (validated/events/date=D/batch=*.parquet), the columns the rows need."""
    files = sorted((settings.paths.events / f"date={day.isoformat()}").glob("*.parquet"))
    if not files:
        return pa.table({name: pa.array([], type) for name, type in _EVENT_TYPES.items()})
    tables = [pq.read_table(path, columns=list(_EVENT_TYPES)) for path in files]
    return pa.concat_tables([table.cast(pa.schema(_EVENT_TYPES.items())) for table in tables])


_EVENT_TYPES = {
    "user_id": pa.int64(),
    "event_timestamp": TS_US_UTC,
    "event_type": pa.string(),
    "value": pa.float64(),
    "ingested_at": TS_US_UTC,
}


def build_today_table(settings: Settings, day: date) -> TodaySummary:
    """Write ``features/user_activity_today/date=D/part-0.parquet`` from the validated events of day D (every batch,
    late arrivals included), replacing the day's file atomically; a day without events gets an empty file, so the
    source always reads. Re-running a day over the same validated events writes the same rows.

    The nightly pipeline calls it after validation for every event day the run's batches touched: the day it
    validated and each earlier day late events of its drop landed in (at most ``late_data_days`` back), e.g.
    ``for day in days_touched: build_today_table(settings, day)``. Materialisation does not need it (the push path
    fills the online side); training and the parity with the online rows do."""
    catalog = settings.event_catalog()
    events = _validated_events(settings, day)
    rows = with_values(today_rows(events, catalog), catalog)
    target = today_partition(settings, day)
    write_table_atomically(rows, target)
    logger.info("today table of %s: %d rows from %d events -> %s", day, rows.num_rows, events.num_rows, target)
    return TodaySummary(day, target, rows.num_rows, events.num_rows)
