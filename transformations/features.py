"""Daily per-user snapshots of rolling-window engagement features, computed with DuckDB over the validated
Parquet tables and driven by an :class:`~churn_common.catalog.EventCatalog`. Versioned by what was known when.

Outputs, under ``features/``:

* ``user_daily_snapshots/date=YYYY-MM-DD/part-0.parquet``: the rows of day D, one per user who is a customer at
  the end of D (``signup_at < D+1 00:00 < closed_at``, see churn_common.population), with zeros and growing recency
  on inactive days so the online store never keeps a stale value. ``event_timestamp`` is D+1 00:00 UTC, the
  exclusive end of the day the row describes.
* ``user_account/part-0.parquet``: the account attributes' history (valid-from rows written by the validation gate),
  gathered into the one table the ``user_account`` feature view reads.
* ``builds/<seq>.json``: one record per build (what it rewrote), which materialisation follows.

**Versions.** An event is *known* from the end of the UTC day it arrived (``ingested_at``): its knowledge day is
``max(event day, arrival day)``. The row of day D as known at the end of day b >= D is computed from the events
known by then, and stored with ``created`` = b+1 00:00. Every row has its on-time version (b = D: ``created`` equals
``event_timestamp``); a later version is appended for each later day, up to ``late_data_days`` after D, on which
events of D's windows arrived. So ``get_historical_features(..., filter_by_created_timestamp=True)`` at any day
boundary T returns exactly what a build from the events that had arrived by T would give (late data included), and
the online store, which gets each user's newest version of the newest day, holds the same vector. Re-running a build
gives identical bytes, and an incremental build equals a full one.

How: knowledge days are processed in order in spans of ``SPAN_DAYS``. For each span DuckDB aggregates the events
known on those days into a sparse table of one row per (user, event day, knowledge day). The on-time versions come
from per-user running window sums held in numpy: the aggregates known on day D are added, and for each window w the
known aggregates whose event day has left the window are subtracted, which is the "cumulative sum differenced by day"
over a complete user x calendar-day grid without materialising that grid. Later versions add, to a row's on-time
sums, the late aggregates that arrived by each later day. Values are summed as integer micro-units
(``round(value * 1e6)``), so every sum is exact and independent of where a build starts. Each batch of day tables is
checked with the snapshot schema's rules, vectorised over every row, before it is written (pandera itself checks the
first day of every build). Parquet files are written on a thread pool, overlapped with the next days' computation.
Events of user ids missing from the users table are ignored (the validation gate quarantines them).

**Resuming.** Each build saves the rolling state as of the day before the next day's window
(transformations.checkpoints), so the daily build adds eight knowledge days to it instead of re-reading the 90-day
look-back; the bytes written are the same as a build from scratch.
"""

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandera.pandas import DataFrameSchema

from churn_common.catalog import EventCatalog
from churn_common.errors import DataError, SchemaError
from churn_common.files import replace_atomically
from churn_common.names import ACCOUNT_TABLE, CREATED_TIMESTAMP_FIELD, JOIN_KEY, SNAPSHOT_TABLE, TIMESTAMP_FIELD
from churn_common.settings import DataPaths, Settings
from transformations import checkpoints
from transformations.snapshot_schema import (
    ACCOUNT_SCHEMA,
    RECENCY,
    TENURE,
    check_arrow,
    snapshot_columns,
    snapshot_schema,
    to_frame,
    trend_column,
    validate_snapshots,
)

logger = logging.getLogger(__name__)

SumOf = Callable[[str], np.ndarray]
"""Maps an internal metric column to its per-row sum over one frame."""
StemValue = Callable[[SumOf], np.ndarray]

EPOCH = date(1970, 1, 1)
VALUE_SCALE = 1_000_000
DAY_US = 86_400 * 1_000_000
NEVER = -1
"""``last_active`` of a user with no activity known yet (day numbers of real data are positive)."""
TS_US_UTC = pa.timestamp("us", tz="UTC")
PART_FILE = "part-0.parquet"
TREND_DAYS = 7
# Snapshot rows checked at once (fewer, larger pyarrow.compute calls) and handed to the writer together.
CHUNK_ROWS = 500_000
# Knowledge days aggregated by one DuckDB query: bounds its memory, whatever the number of days built.
SPAN_DAYS = 30
DUCKDB_MEMORY_LIMIT = "1GB"


@dataclass(frozen=True)
class BuildSummary:
    """The days this build rewrote, and what the snapshot files on disk hold now (all days)."""

    seq: int
    snapshots: Path
    first_day: date
    last_day: date
    rows: int
    later_versions: int
    """Of ``rows``: versions appended for late arrivals (the rest are on-time versions)."""
    users: int
    columns: int
    data_first_day: date
    data_last_day: date
    accounts: int


@dataclass(frozen=True)
class BuildRecord:
    """What one build rewrote, as materialisation reads it back (``features/builds/<seq>.json``)."""

    seq: int
    built_at: str
    first_day: str
    last_day: str
    changed_from: dict[str, str | None]
    """Per source: the earliest event time among the rows this build added or changed (None: none changed)."""

    def changed_since(self, source: str) -> datetime | None:
        if source not in self.changed_from:
            raise DataError(f"build {self.seq} does not record source {source!r}: rebuild with `churn features build`")
        moment = self.changed_from[source]
        return datetime.fromisoformat(moment) if moment else None


@dataclass(frozen=True)
class _Plan:
    first_day: date
    """First snapshot day rebuilt (``--start`` minus the late-data days)."""
    last_day: date
    """Last snapshot day rebuilt."""
    history_start: date
    """First knowledge day read: the longest look-back before ``first_day``."""
    late_days: int
    last_known_day: date
    """The last day anything arrived on: a day rebuilt gets every later version known by then, so rebuilding an
    older window rewrites its files whole."""


# --------------------------------------------------------------------------------------------- SQL pieces


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _metrics(catalog: EventCatalog) -> list[str]:
    """Internal per-day metric columns: ``act``, ``c{i}`` counts, ``v{i}`` micro-unit sums, ``n{i}`` counts."""
    metrics = ["act"]
    for i, event_type in enumerate(catalog.event_types):
        metrics.append(f"c{i}")
        if event_type.has_value:
            metrics += [f"v{i}", f"n{i}"]
    return metrics


def _day_number(column: str) -> str:
    """The UTC day number of an instant. Casting the TIMESTAMPTZ to DATE gives the same number but goes through the
    time-zone library for every row (~2 s per 3.5M events); reading its microseconds as a naive timestamp does not."""
    return f"(make_timestamp(epoch_us({column}))::DATE - DATE '1970-01-01')::INTEGER"


def _aggregates_sql(catalog: EventCatalog, where: str = "TRUE") -> str:
    """Per user, event day ``dn`` and knowledge day ``kn``: one GROUP BY pivoting the event types with FILTERs, over
    the events known on knowledge days [$first, $last]. ``act`` marks the aggregate that made ``dn`` an active day
    (the first one with an activity event), so a day counts once however many times its events arrive. Late events
    are at most $late days late (the gate quarantines later ones), which bounds the event partitions read: every
    event of the days whose aggregates are returned is read."""
    codes = " ".join(f"WHEN {_literal(t.name)} THEN {i}" for i, t in enumerate(catalog.event_types))
    activity = ", ".join(str(catalog.names.index(name)) for name in catalog.activity_types)
    pivoted = []
    for i, event_type in enumerate(catalog.event_types):
        pivoted.append(f"count(*) FILTER (WHERE code = {i}) AS c{i}")
        if event_type.has_value:
            pivoted.append(f"coalesce(sum(micro) FILTER (WHERE code = {i}), 0)::BIGINT AS v{i}")
            pivoted.append(f"count(micro) FILTER (WHERE code = {i}) AS n{i}")
    names = [f"c{i}" if not t.has_value else f"c{i}, v{i}, n{i}" for i, t in enumerate(catalog.event_types)]
    # The type name is compared once per event (CASE), the pivot FILTERs compare small integers.
    return f"""
        WITH coded AS (
            SELECT user_id, {_day_number("event_timestamp")} AS dn,
                   greatest({_day_number("event_timestamp")}, {_day_number("ingested_at")}) AS kn,
                   CASE event_type {codes} END AS code, round(value * {VALUE_SCALE}) AS micro
            FROM read_parquet($events, hive_partitioning = true)
            WHERE date BETWEEN DATE '1970-01-01' + ($first - $late - 1)::INTEGER
                           AND DATE '1970-01-01' + ($last + 1)::INTEGER
              AND event_type IN ({", ".join(_literal(name) for name in catalog.names)})
        ),
        grouped AS (
            SELECT kn, user_id, dn, bool_or(code IN ({activity})) AS has_activity, {", ".join(pivoted)}
            FROM coded GROUP BY kn, user_id, dn
        ),
        -- Before any filter on kn: the first activity of a day may have become known before the days returned.
        flagged AS (
            SELECT *, CAST(has_activity AND kn = min(kn) FILTER (WHERE has_activity)
                                                 OVER (PARTITION BY user_id, dn) AS BIGINT) AS act
            FROM grouped
        )
        SELECT kn, user_id, dn, act, {", ".join(names)}
        FROM flagged WHERE kn BETWEEN $first AND $last AND ({where})
        ORDER BY kn, user_id, dn
    """


def _prior_activity_sql(catalog: EventCatalog) -> str:
    """Last activity day per user among the events known before the history the windows read (recency looks back
    forever)."""
    activity = ", ".join(_literal(name) for name in catalog.activity_types)
    day, known = _day_number("event_timestamp"), _day_number("ingested_at")
    return f"""
        SELECT user_id, max({day}) AS last_active_dn
        FROM read_parquet($events, hive_partitioning = true)
        WHERE date < DATE '1970-01-01' + ($before + 1)::INTEGER AND event_type IN ({activity})
          AND greatest({day}, {known}) < $before
        GROUP BY ALL
    """


def _frames(catalog: EventCatalog) -> list[int]:
    trend = {TREND_DAYS, 2 * TREND_DAYS} if catalog.trend_features else set()
    return sorted(set(catalog.windows) | trend)


def _lookback(catalog: EventCatalog) -> int:
    return max(_frames(catalog))


def _layout(catalog: EventCatalog) -> dict:
    """What the rolling state's arrays mean: a checkpoint of another catalogue or other frames is not this state.
    Lists: it is compared with its JSON round trip."""
    return {
        "metrics": _metrics(catalog),
        "frames": _frames(catalog),
        "types": list(catalog.names),
        "activity": list(catalog.activity_types),
    }


# ------------------------------------------------------------------------------------- rolling windows


@dataclass
class _Users:
    """The users table sorted by ``user_id``; every state array below is indexed like it."""

    ids: np.ndarray
    signup_dn: np.ndarray
    last_dn: np.ndarray
    """Last day whose end the user is a customer at, int64 max while open."""

    def customers(self, dn: int) -> np.ndarray:
        return np.flatnonzero((self.signup_dn <= dn) & (self.last_dn >= dn))


@dataclass
class _Known:
    """Aggregates becoming known together: user positions, event day numbers, (metric, row) matrix."""

    index: np.ndarray
    day: np.ndarray
    metrics: np.ndarray

    def take(self, rows: np.ndarray) -> "_Known":
        return _Known(self.index[rows], self.day[rows], self.metrics[:, rows])


class _RollingState:
    """Per-user window sums over the aggregates known so far: integer arithmetic over calendar days, exact whatever
    the day a build starts. The sum over a frame at day D is the running total of every aggregate known by D minus
    the running total of the known ones whose event day has left that frame, so an aggregate is added once, not once
    per frame. ``ring`` keeps the known aggregates by event day until every frame has let them go."""

    def __init__(self, catalog: EventCatalog, users: _Users, prior_active: np.ndarray, known_from: int) -> None:
        self.frames = _frames(catalog)
        self.metrics = _metrics(catalog)
        # (metric, user): an update scatters into, and a read gathers from, one contiguous row per metric, so every
        # output column comes out contiguous (Arrow wraps it without a copy).
        self.total = np.zeros((len(self.metrics), users.ids.size), dtype=np.int64)
        self.left = np.zeros((len(self.frames), len(self.metrics), users.ids.size), dtype=np.int64)
        self.last_active = prior_active
        self.ring: dict[int, list[_Known]] = {}
        # A day's ring entries hold all of its aggregates known so far when the day is not before the first day
        # added, or when they were filled in whole (from a checkpoint, or read back).
        self.known_from = known_from
        self.filled: set[int] = set()

    def add(self, dn: int, known: _Known) -> None:
        """The aggregates that became known on day ``dn`` (their event days are ``dn`` or earlier)."""
        _scatter_add(self.total, known.index, known.metrics)
        for day in np.unique(known.day[known.day > dn - self.frames[-1]]):
            self.ring.setdefault(int(day), []).append(known.take(np.flatnonzero(known.day == day)))
        for left, frame in zip(self.left, self.frames, strict=True):
            for leaving in self.ring.get(dn - frame, ()):
                _scatter_add(left, leaving.index, leaving.metrics)
            # Known only now, and already out of this frame: counted in the total and gone at once.
            gone = np.flatnonzero(known.day < dn - frame)
            if gone.size:
                _scatter_add(left, known.index[gone], known.metrics[:, gone])
        active = known.metrics[0] > 0
        np.maximum.at(self.last_active, known.index[active], known.day[active])
        self.ring.pop(dn - self.frames[-1], None)

    def sums_of(self, rows: np.ndarray) -> Callable[[int], SumOf]:
        """For the users at ``rows``: frame -> (metric -> its sum over that frame)."""
        total = np.take(self.total, rows, axis=1)
        blocks = {
            frame: total - np.take(left, rows, axis=1) for left, frame in zip(self.left, self.frames, strict=True)
        }
        return lambda frame: lambda metric: blocks[frame][self.metrics.index(metric)]

    def leaving_days(self, resumed: int, last: int) -> list[int]:
        """The event days known by ``resumed`` whose aggregates leave a frame on days ``resumed + 1 .. last``: what
        a build resuming at ``resumed`` reads from the ring (the other days in it are never looked at)."""
        built = range(resumed + 1, last + 1)
        return sorted({dn - frame for dn in built for frame in self.frames if dn - frame <= resumed})

    def checkpoint(self, day: int, users: _Users, wanted: list[int]) -> checkpoints.Checkpoint:
        """The state after day ``day``, with the ring days of ``wanted`` it holds whole."""
        ring_days = [d for d in wanted if d >= self.known_from or d in self.filled]
        ring = [entry for d in ring_days for entry in self.ring.get(d, ())]
        index = np.concatenate([e.index for e in ring]) if ring else np.zeros(0, dtype=np.int64)
        event_day = np.concatenate([e.day for e in ring]) if ring else np.zeros(0, dtype=np.int64)
        metrics = np.hstack([e.metrics for e in ring]) if ring else np.zeros((len(self.metrics), 0), dtype=np.int64)
        # One entry per day, by position: a day's entries came in one per knowledge day (see _refill_ring).
        order = np.lexsort((index, event_day))
        return checkpoints.Checkpoint(
            day, users.ids, self.total, self.left, self.last_active,
            np.array(ring_days, dtype=np.int64), index[order], event_day[order], metrics[:, order],
        )  # fmt: skip

    def restore(self, checkpoint: checkpoints.Checkpoint, users: _Users) -> bool:
        """Take the checkpoint's sums and ring (users who signed up since start from zero); False if it lacks a
        user's place: a user it counted is no longer in the users table."""
        position, known = _positions(users, checkpoint.ids)
        if not known.all():
            return False
        self.total[:, position] = checkpoint.total
        self.left[:, :, position] = checkpoint.left
        self.last_active[position] = checkpoint.last_active
        # Both tables are sorted by id, so the positions stay ascending within a day.
        rows = _Known(position[checkpoint.ring_index], checkpoint.ring_day, checkpoint.ring_metrics)
        self.fill_ring(checkpoint.ring_days.tolist(), rows)
        return True

    def fill_ring(self, days: list[int], rows: _Known) -> None:
        """The ring entries of ``days`` from all their known aggregates, sorted by day, then position
        (_scatter_add needs positions ascending)."""
        self.filled.update(days)
        if rows.index.size == 0:
            return
        bounds = np.flatnonzero(np.r_[True, np.diff(rows.day) != 0, True])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            self.ring.setdefault(int(rows.day[lo]), []).append(rows.take(np.arange(lo, hi)))


def _scatter_add(sums: np.ndarray, index: np.ndarray, metrics: np.ndarray) -> None:
    """``sums[:, index] += metrics`` for ``index`` in ascending order, repeated positions adding up. Row by row, and
    with plain fancy indexing for the first row of each position (``np.add.at`` is ~10x slower; only late arrivals
    repeat a user)."""
    if index.size == 0:
        return
    repeat = np.r_[False, index[1:] == index[:-1]]
    first = ~repeat
    for row, values in zip(sums, metrics, strict=True):
        row[index[first]] += values[first]
        if repeat.any():
            np.add.at(row, index[repeat], values[repeat])


# ------------------------------------------------------------------------------------------- late versions


@dataclass
class _Versions:
    """The later versions of one day's rows: user positions, knowledge day, and the sums and recency each adds."""

    index: np.ndarray
    known_day: np.ndarray
    extra: dict[int, np.ndarray]
    """frame -> (metric, version) sums of the late aggregates each version adds to the on-time row."""
    last_active: np.ndarray


def _late_versions(late: _Known, known_day: np.ndarray, dn: int, frames: list[int]) -> _Versions:
    """Versions of day ``dn``'s rows from the aggregates of event day <= dn that became known after ``dn``
    (``late`` holds them, ``known_day`` their knowledge days): one per user and knowledge day, each holding every
    late aggregate of that user known by then."""
    order = np.lexsort((known_day, late.index))
    late, known_day = late.take(order), known_day[order]
    user_start = np.r_[True, np.diff(late.index) != 0]
    # A version closes every run of equal (user, knowledge day); its sums run from the start of the user's rows.
    ends = np.flatnonzero(np.r_[(np.diff(late.index) != 0) | (np.diff(known_day) != 0), True])
    starts = np.maximum.accumulate(np.where(user_start, np.arange(late.index.size), 0))[ends]
    extra = {}
    for frame in frames:
        inside = np.where(late.day > dn - frame, late.metrics, 0)
        prefix = np.concatenate([np.zeros((inside.shape[0], 1), dtype=np.int64), np.cumsum(inside, axis=1)], axis=1)
        extra[frame] = prefix[:, ends + 1] - prefix[:, starts]
    active_day = np.where(late.metrics[0] > 0, late.day, NEVER)
    last_active = _running_max_by_user(active_day, user_start)[ends]
    return _Versions(late.index[ends], known_day[ends], extra, last_active)


def _running_max_by_user(values: np.ndarray, user_start: np.ndarray) -> np.ndarray:
    """The running maximum of ``values`` restarting at each ``user_start``."""
    group = np.cumsum(user_start)
    # Offsetting each user's values above every earlier user's lets one accumulate run over all of them.
    offset = group * (int(values.max(initial=0)) - NEVER + 1)
    return np.maximum.accumulate(values + offset) - offset


# ---------------------------------------------------------------------------------------------- day tables


def _stem_values(catalog: EventCatalog) -> dict[str, StemValue]:
    """Every window stem as a function of "sum of this metric over the frame wanted"."""
    stems: dict[str, StemValue] = {"active_days": lambda s: s("act")}
    for i, event_type in enumerate(catalog.event_types):
        stems[event_type.count_feature] = lambda s, i=i: s(f"c{i}")
        if event_type.value_feature is None:
            continue
        if event_type.value_aggregate == "mean":
            stems[event_type.value_feature] = lambda s, i=i: _divide(s(f"v{i}") / VALUE_SCALE, s(f"n{i}"))
        else:
            stems[event_type.value_feature] = lambda s, i=i: s(f"v{i}") / VALUE_SCALE
    for ratio in catalog.ratios:
        numerator = f"c{catalog.names.index(ratio.numerator)}"
        denominators = [f"c{catalog.names.index(name)}" for name in ratio.denominator]
        stems[ratio.feature] = lambda s, n=numerator, d=denominators: _divide(s(n), sum(s(x) for x in d))
    return stems


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator as float64, NaN (written as NULL) where the denominator is 0."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _column(values: np.ndarray) -> pa.Array:
    if values.dtype.kind == "f":
        return pa.array(values, mask=np.isnan(values))
    return pa.array(values)


@dataclass(frozen=True)
class _Rows:
    """Output rows of one day: user positions, ``created``, window sums and last activity day per row."""

    index: np.ndarray
    created_us: np.ndarray
    sum_of: Callable[[int], SumOf]
    last_active: np.ndarray


def _rows_table(catalog: EventCatalog, users: _Users, dn: int, rows: _Rows) -> pa.Table:
    stems = _stem_values(catalog)
    columns = {
        JOIN_KEY: pa.array(users.ids[rows.index]),
        TIMESTAMP_FIELD: pa.array(np.full(rows.index.size, (dn + 1) * DAY_US), TS_US_UTC),
        CREATED_TIMESTAMP_FIELD: pa.array(rows.created_us, TS_US_UTC),
    }
    for window in catalog.windows:
        for stem in catalog.window_stems():
            columns[f"{stem}_{window}d"] = _column(stems[stem](rows.sum_of(window)))
    signup = users.signup_dn[rows.index]
    columns[RECENCY] = pa.array(dn - np.where(rows.last_active == NEVER, signup, rows.last_active))
    columns[TENURE] = pa.array(dn - signup)
    columns.update(_trends(catalog, rows.sum_of, stems))
    return pa.table(columns)


def _trends(catalog: EventCatalog, sum_of: Callable[[int], SumOf], stems: dict[str, StemValue]) -> dict[str, pa.Array]:
    """``stem over days D-6..D`` minus ``stem over days D-13..D-7``, NULL when either side is."""
    recent_sum, fortnight_sum = sum_of(TREND_DAYS), sum_of(2 * TREND_DAYS)
    columns = {}
    for stem in catalog.trend_features:
        recent = stems[stem](recent_sum)
        before = stems[stem](lambda metric: fortnight_sum(metric) - recent_sum(metric))
        columns[trend_column(stem)] = _column(recent - before)
    return columns


def _on_time_rows(state: _RollingState, dn: int, customers: np.ndarray) -> _Rows:
    created = np.full(customers.size, (dn + 1) * DAY_US, dtype=np.int64)
    return _Rows(customers, created, state.sums_of(customers), state.last_active[customers])


def _later_rows(state: _RollingState, dn: int, versions: _Versions) -> _Rows:
    base = state.sums_of(versions.index)
    metric = {name: i for i, name in enumerate(state.metrics)}

    def sum_of(frame: int) -> SumOf:
        return lambda name: base(frame)(name) + versions.extra[frame][metric[name]]

    last_active = np.maximum(state.last_active[versions.index], versions.last_active)
    return _Rows(versions.index, (versions.known_day + 1) * DAY_US, sum_of, last_active)


def _day_table(catalog: EventCatalog, state: _RollingState, users: _Users, dn: int, pending: "_Pending") -> pa.Table:
    """Day ``dn``'s rows: every customer's on-time version and the later versions, sorted by user then created."""
    customers = users.customers(dn)
    on_time = _rows_table(catalog, users, dn, _on_time_rows(state, dn, customers))
    late, known_day = pending.of_day(dn, customers)
    if late.index.size == 0:
        return on_time
    versions = _late_versions(late, known_day, dn, state.frames)
    table = pa.concat_tables([on_time, _rows_table(catalog, users, dn, _later_rows(state, dn, versions))])
    return table.sort_by([(JOIN_KEY, "ascending"), (CREATED_TIMESTAMP_FIELD, "ascending")])


class _Pending:
    """The aggregates that became known after their event day, within the days built: the later versions' input."""

    def __init__(self, late: _Known, known_day: np.ndarray, last_known_day: int, late_days: int) -> None:
        self.late, self.known_day = late, known_day
        self.last_known_day, self.late_days = last_known_day, late_days

    def of_day(self, dn: int, customers: np.ndarray) -> tuple[_Known, np.ndarray]:
        """Late aggregates of day ``dn``'s windows (event day <= dn) known on one of the days after ``dn`` that its
        versions cover, for the users at ``customers``."""
        horizon = min(self.last_known_day, dn + self.late_days)
        chosen = (self.late.day <= dn) & (self.known_day > dn) & (self.known_day <= horizon)
        chosen &= np.isin(self.late.index, customers, assume_unique=False)
        rows = np.flatnonzero(chosen)
        return self.late.take(rows), self.known_day[rows]


# ------------------------------------------------------------------------------------------ inputs, plan

_EVENT_TYPES = {
    "user_id": "BIGINT",
    "event_timestamp": "TIMESTAMP WITH TIME ZONE",
    "event_type": "VARCHAR",
    "value": "DOUBLE",
    "ingested_at": "TIMESTAMP WITH TIME ZONE",
}
_USER_TYPES = {"user_id": "BIGINT", "signup_at": "TIMESTAMP WITH TIME ZONE", "closed_at": "TIMESTAMP WITH TIME ZONE"}


def _events_glob(paths: DataPaths) -> str:
    return str(paths.events / "*" / "*.parquet")


def _check_columns(con: duckdb.DuckDBPyConnection, source: str, expected: dict[str, str]) -> None:
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM read_parquet({_literal(source)})").fetchall()
    except duckdb.IOException as exc:
        raise DataError(f"cannot read the validated table {source}: {exc}") from exc
    found = {row[0]: row[1] for row in described}
    wrong = {name: found.get(name, "missing") for name, kind in expected.items() if found.get(name) != kind}
    if wrong:
        raise SchemaError(f"{source}: expected {expected}, found {wrong} for those columns")


def _data_days(files: checkpoints.EventFiles, paths: DataPaths) -> tuple[date, date]:
    """The first event day and the last knowledge day of the validated events."""
    filled = [stat for stat in files.values() if stat.last_known >= 0]
    if not filled:
        raise DataError(f"no validated events under {paths.events}; run `churn data validate`")
    first, last = min(stat.first_day for stat in filled), max(stat.last_known for stat in filled)
    return EPOCH + timedelta(days=first), EPOCH + timedelta(days=last)


def _check_catalogue(con: duckdb.DuckDBPyConnection, paths: DataPaths, catalog: EventCatalog, plan: _Plan) -> None:
    """A build whose catalogue declares none of the data's event types would write all-zero features: refuse."""
    declared = ", ".join(_literal(name) for name in catalog.names)
    found, matching = con.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE event_type IN ({declared}))
            FROM read_parquet($events, hive_partitioning = true) WHERE date BETWEEN $first AND $last""",
        {"events": _events_glob(paths), "first": plan.first_day, "last": plan.last_day},
    ).fetchone()
    if found and not matching:
        raise DataError(
            f"none of the {found:,} validated events of {plan.first_day}..{plan.last_day} is of a type the "
            f"catalogue declares ({', '.join(catalog.names)}): build with the catalogue the data was validated with"
        )


def _plan(first: date, last: date, settings: Settings, start: date | None, end: date | None, lookback: int) -> _Plan:
    first_day = first if start is None else max(first, start - timedelta(days=settings.late_data_days))
    last_day = last if end is None else end
    if first_day > last_day:
        raise DataError(f"nothing to build: first day {first_day} is after last day {last_day}")
    history_start = first_day - timedelta(days=lookback - 1)
    return _Plan(first_day, last_day, history_start, settings.late_data_days, max(last, last_day))


def _connect(spill_dir: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit = {_literal(DUCKDB_MEMORY_LIMIT)}")
    con.execute(f"SET threads = {os.cpu_count() or 1}")
    con.execute(f"SET temp_directory = {_literal(str(spill_dir))}")
    # Days are UTC days: casting a TIMESTAMPTZ to DATE uses the session time zone.
    con.execute("SET TimeZone = 'UTC'")
    return con


# ---------------------------------------------------------------------------------------------- writing


def _write_atomically(table: pa.Table, target: Path) -> None:
    """Write ``target`` through a hidden temp file in its directory, so readers see the old or the new file."""
    replace_atomically(
        target, lambda temporary: pq.write_table(table, temporary, use_dictionary=_dictionary_columns(table.schema))
    )


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding: not the unique user ids, and not floats (value sums and means are
    mostly distinct; encoding them took 2-3x the time of plain encoding and gave larger files)."""
    return [column.name for column in schema if column.name != JOIN_KEY and not pa.types.is_floating(column.type)]


def _partition(root: Path, dn: int) -> Path:
    return root / f"date={(EPOCH + timedelta(days=dn)).isoformat()}" / PART_FILE


def _days(first: date, last: date) -> Iterator[date]:
    for offset in range((last - first).days + 1):
        yield first + timedelta(days=offset)


class _Writer:
    """Writes partitions on a thread pool while the next days are computed; at most one batch in flight."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self.executor = executor
        self.in_flight: list[Future] = []

    def submit(self, files: list[tuple[Path, pa.Table | None]]) -> None:
        """Write each table to its path, or delete the file where the table is None."""
        self.wait()
        for target, table in files:
            if table is None:
                target.unlink(missing_ok=True)
            else:
                # One contiguous chunk per file: the page layout must not depend on how the rows were batched.
                self.in_flight.append(self.executor.submit(_write_atomically, table.combine_chunks(), target))

    def wait(self) -> None:
        for future in self.in_flight:
            future.result()
        self.in_flight = []


@dataclass
class _Snapshots:
    """Collects day tables, checks each batch against the snapshot schema and hands it to the writer."""

    schema: DataFrameSchema
    writer: _Writer
    root: Path
    pending: list[tuple[int, pa.Table]] = field(default_factory=list)
    rows: int = 0
    later_versions: int = 0

    def add(self, dn: int, table: pa.Table, last: bool) -> None:
        if self.rows == 0 and not self.pending:
            # pandera itself on the first day of every build (a deterministic sample: the contract's own
            # implementation); check_arrow enforces the same rules on every row, vectorised.
            validate_snapshots(to_frame(table), self.schema)
        self.pending.append((dn, table))
        rows = sum(t.num_rows for _, t in self.pending)
        if last or rows >= CHUNK_ROWS:
            batch = pa.concat_tables([t for _, t in self.pending])
            check_arrow(batch, self.schema)
            self.later_versions += batch.num_rows - _on_time_count(batch)
            self.writer.submit([(_partition(self.root, n), t if t.num_rows else None) for n, t in self.pending])
            self.rows += rows
            self.pending = []


def _on_time_count(table: pa.Table) -> int:
    created, event = table[CREATED_TIMESTAMP_FIELD], table[TIMESTAMP_FIELD]
    return int(pc.sum(pc.equal(created, event).cast(pa.int64())).as_py() or 0)


# ------------------------------------------------------------------------------------------------ build


def _load_users(con: duckdb.DuckDBPyConnection, paths: DataPaths) -> _Users:
    # A customer at the end of day D: signup_at < D+1 00:00 < closed_at. The last such D ends strictly before the
    # closing instant: the day of (closed_at - 1 µs), minus one.
    table = con.execute(
        f"""SELECT user_id, CAST(signup_at AS DATE) - DATE '1970-01-01' AS signup_dn,
                   coalesce({_day_number("closed_at - INTERVAL 1 MICROSECOND")} - 1, {np.iinfo(np.int64).max})
                       AS last_dn
            FROM read_parquet($users) ORDER BY user_id""",
        {"users": str(paths.users)},
    ).to_arrow_table()
    ids = table.column(JOIN_KEY).to_numpy()
    if np.any(np.diff(ids) == 0):
        raise SchemaError(f"{paths.users}: user_id is not unique")
    return _Users(ids, table.column("signup_dn").to_numpy(), table.column("last_dn").to_numpy())


def _positions(users: _Users, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``user_ids`` in the users table, and which of them are known users at all."""
    position = np.minimum(np.searchsorted(users.ids, user_ids), max(users.ids.size - 1, 0))
    return position, users.ids[position] == user_ids if users.ids.size else np.zeros(0, dtype=bool)


def _prior_active(
    con: duckdb.DuckDBPyConnection, catalog: EventCatalog, paths: DataPaths, plan: _Plan, users: _Users
) -> np.ndarray:
    bounds = {"events": _events_glob(paths), "before": (plan.history_start - EPOCH).days}
    prior = con.execute(_prior_activity_sql(catalog), bounds).to_arrow_table()
    last_active = np.full(users.ids.size, NEVER, dtype=np.int64)
    position, known = _positions(users, prior.column(0).to_numpy())
    last_active[position[known]] = prior.column(1).to_numpy()[known]
    return last_active


def _query_known(
    con: duckdb.DuckDBPyConnection, sql: str, paths: DataPaths, users: _Users, metrics: list[str], bounds: dict
) -> tuple[np.ndarray, _Known]:
    """Run an aggregates query; (knowledge day per row, the rows of known users as ``_Known``)."""
    table = con.execute(sql, {"events": _events_glob(paths), **bounds}).to_arrow_table()
    position, known = _positions(users, table.column("user_id").to_numpy())
    values = np.vstack([table.column(m).to_numpy()[known] for m in metrics]).reshape(len(metrics), -1)
    rows = _Known(position[known], table.column("dn").to_numpy()[known].astype(np.int64), values)
    return table.column("kn").to_numpy()[known].astype(np.int64), rows


def _span_known(
    con: duckdb.DuckDBPyConnection,
    catalog: EventCatalog,
    paths: DataPaths,
    users: _Users,
    span: tuple[date, date],
    late_days: int,
) -> Iterator[tuple[int, _Known]]:
    """The span's aggregates by knowledge day, read once in day order (empty days included)."""
    metrics = _metrics(catalog)
    first, last = ((day - EPOCH).days for day in span)
    bounds = {"first": first, "last": last, "late": late_days}
    known_day, rows = _query_known(con, _aggregates_sql(catalog), paths, users, metrics, bounds)
    starts = np.searchsorted(known_day, np.arange(first, last + 2))
    for dn, lo, hi in zip(range(first, last + 1), starts[:-1], starts[1:], strict=True):
        yield dn, rows.take(np.arange(lo, hi))


def _pending(
    con: duckdb.DuckDBPyConnection, catalog: EventCatalog, paths: DataPaths, users: _Users, plan: _Plan
) -> _Pending:
    """The late aggregates that later versions of the days built add (known after their event day)."""
    first, last_known = (plan.first_day - EPOCH).days, (plan.last_known_day - EPOCH).days
    bounds = {"first": first + 1, "last": last_known, "late": plan.late_days}
    sql = _aggregates_sql(catalog, where=f"kn > dn AND dn <= {(plan.last_day - EPOCH).days}")
    known_day, rows = _query_known(con, sql, paths, users, _metrics(catalog), bounds)
    return _Pending(rows, known_day, last_known, plan.late_days)


def _fresh_state(
    con: duckdb.DuckDBPyConnection, catalog: EventCatalog, paths: DataPaths, plan: _Plan, users: _Users
) -> _RollingState:
    prior = _prior_active(con, catalog, paths, plan, users)
    return _RollingState(catalog, users, prior, (plan.history_start - EPOCH).days)


def _resumed_state(
    con: duckdb.DuckDBPyConnection,
    catalog: EventCatalog,
    paths: DataPaths,
    plan: _Plan,
    users: _Users,
    files: checkpoints.EventFiles,
) -> tuple[_RollingState, int] | None:
    """The state from the newest usable checkpoint before the first day rebuilt, and its day; None if there is none
    (a build from scratch then reads the whole look-back)."""
    latest, earliest = ((day - EPOCH).days - 1 for day in (plan.first_day, plan.history_start))
    checkpoint = checkpoints.load(paths, latest, earliest, _layout(catalog), files)
    if checkpoint is None:
        return None
    state = _RollingState(catalog, users, np.full(users.ids.size, NEVER, dtype=np.int64), checkpoint.day + 1)
    if not state.restore(checkpoint, users):
        return None
    needed = state.leaving_days(checkpoint.day, (plan.last_day - EPOCH).days)
    _refill_ring(con, catalog, paths, users, state, checkpoint.day, sorted(set(needed) - set(checkpoint.ring_days)))
    logger.info("resuming from the rolling state of %s", EPOCH + timedelta(days=checkpoint.day))
    return state, checkpoint.day


def _refill_ring(
    con: duckdb.DuckDBPyConnection,
    catalog: EventCatalog,
    paths: DataPaths,
    users: _Users,
    state: _RollingState,
    resumed: int,
    days: list[int],
) -> None:
    """The known-by-``resumed`` aggregates of event ``days`` (ones the checkpoint did not keep: a build resuming
    further back than the day after it), read from the events into the ring."""
    partitions = [paths.events / _partition(Path(), day).parent for day in days]
    globs = [str(partition / "*.parquet") for partition in partitions if partition.is_dir()]
    if not globs:
        state.filled.update(days)  # no events on those days: nothing to hold
        return
    bounds = {"events": globs, "first": days[0], "last": resumed, "late": 0}
    _, rows = _query_known(con, _aggregates_sql(catalog), paths, users, state.metrics, bounds)
    state.fill_ring(days, rows.take(np.lexsort((rows.index, rows.day))))


def _build(
    con: duckdb.DuckDBPyConnection,
    catalog: EventCatalog,
    paths: DataPaths,
    plan: _Plan,
    writer: _Writer,
    files: checkpoints.EventFiles,
) -> _Snapshots:
    """Build span by span from the newest usable checkpoint (or from scratch), writing the checkpoint the next
    day's build resumes from; return what was written."""
    users = _load_users(con, paths)
    resumed = _resumed_state(con, catalog, paths, plan, users, files)
    state, after = resumed or (_fresh_state(con, catalog, paths, plan, users), (plan.history_start - EPOCH).days - 1)
    pending = _pending(con, catalog, paths, users, plan)
    snapshots = _Snapshots(snapshot_schema(catalog), writer, paths.snapshots)
    first, last = (plan.first_day - EPOCH).days, (plan.last_day - EPOCH).days
    # The next day's build rebuilds from (last + 1) - late_days: it resumes from the state of the day before.
    save_on = last - plan.late_days
    for span in _spans(EPOCH + timedelta(days=after + 1), plan.last_day, SPAN_DAYS):
        for dn, known in _span_known(con, catalog, paths, users, span, plan.late_days):
            state.add(dn, known)
            if dn == save_on:
                ring_days = state.leaving_days(dn, last + 1)
                checkpoints.save(paths, state.checkpoint(dn, users, ring_days), _layout(catalog), files)
            if dn >= first:
                snapshots.add(dn, _day_table(catalog, state, users, dn, pending), dn == last)
    writer.wait()
    return snapshots


def _spans(first: date, last: date, days: int) -> Iterator[tuple[date, date]]:
    while first <= last:
        end = min(last, first + timedelta(days=days - 1))
        yield first, end
        first = end + timedelta(days=1)


# -------------------------------------------------------------------------------------------- accounts


def _account_files(paths: DataPaths) -> list[Path]:
    return sorted(paths.user_history.glob("*.parquet"))


def _write_accounts(con: duckdb.DuckDBPyConnection, paths: DataPaths) -> tuple[int, datetime | None]:
    """Gather the validated account history into the user_account source; (rows, earliest valid_from of the rows
    that are new since the previous table, None when nothing changed)."""
    files = _account_files(paths)
    if not files:
        raise DataError(f"no account history under {paths.user_history}; run `churn data validate`")
    columns = ", ".join(_ident(name) for name in ACCOUNT_SCHEMA.names)
    table = con.execute(
        f"SELECT DISTINCT {columns} FROM read_parquet($files) ORDER BY user_id, valid_from, created, account_status",
        {"files": [str(f) for f in files]},
    ).to_arrow_table()
    table = table.cast(ACCOUNT_SCHEMA)
    target = paths.features / ACCOUNT_TABLE / PART_FILE
    changed_from = _earliest_new(con, target, table)
    _write_atomically(table, target)
    return table.num_rows, changed_from


def _earliest_new(con: duckdb.DuckDBPyConnection, previous: Path, table: pa.Table) -> datetime | None:
    if not previous.exists():
        return pc.min(table["valid_from"]).as_py()
    con.register("new_accounts", table)
    try:
        (earliest,) = con.execute(
            "SELECT min(valid_from) FROM (SELECT * FROM new_accounts EXCEPT SELECT * FROM read_parquet(?))",
            [str(previous)],
        ).fetchone()
    finally:
        con.unregister("new_accounts")
    return earliest


# ---------------------------------------------------------------------------------------------- manifest


def record_build(
    paths: DataPaths, first_day: date, last_day: date, built_at: datetime, accounts_changed_from: datetime | None
) -> int:
    """Append a build of snapshot days ``first_day..last_day`` to the manifest; its sequence number."""
    paths.builds.mkdir(parents=True, exist_ok=True)
    seq = max((int(p.stem) for p in paths.builds.glob("*.json")), default=0) + 1
    # The first day rebuilt is described at its end: no row this build wrote is older.
    first_row = datetime.combine(first_day + timedelta(days=1), time(), UTC)
    changed = {
        SNAPSHOT_TABLE: first_row.isoformat(),
        ACCOUNT_TABLE: accounts_changed_from.isoformat() if accounts_changed_from else None,
    }
    record = BuildRecord(seq, built_at.isoformat(), first_day.isoformat(), last_day.isoformat(), changed)
    text = json.dumps(asdict(record), indent=2) + "\n"
    replace_atomically(paths.builds / f"{seq:06d}.json", lambda temporary: temporary.write_text(text))
    return seq


def read_builds(paths: DataPaths, after: int = 0) -> list[BuildRecord]:
    """The builds recorded after sequence number ``after``, oldest first."""
    records = []
    for path in sorted(paths.builds.glob("*.json")):
        if int(path.stem) > after:
            records.append(BuildRecord(**json.loads(path.read_text())))
    return records


def _summarise(
    con: duckdb.DuckDBPyConnection,
    paths: DataPaths,
    plan: _Plan,
    snapshots: _Snapshots,
    seq: int,
    accounts: int,
    catalog: EventCatalog,
) -> BuildSummary:
    """What the snapshot files on disk hold now (all days, not only the ones rebuilt)."""
    users, first, last = con.execute(
        f"""SELECT count(DISTINCT user_id), min({TIMESTAMP_FIELD})::DATE - 1, max({TIMESTAMP_FIELD})::DATE - 1
            FROM read_parquet($snapshots)""",
        {"snapshots": str(paths.snapshots / "*" / "*.parquet")},
    ).fetchone()
    columns = len(snapshot_columns(catalog))
    return BuildSummary(
        seq,
        paths.snapshots,
        plan.first_day,
        plan.last_day,
        snapshots.rows,
        snapshots.later_versions,
        users,
        columns,
        first,
        last,
        accounts,
    )


def build_features(
    settings: Settings, start: date | None = None, end: date | None = None, catalog: EventCatalog | None = None
) -> BuildSummary:
    """(Re)build the snapshot partitions of ``start - late_data_days .. end`` (default: every day with events) and
    the account table, and record the build. Each file is replaced atomically; re-running gives identical bytes."""
    catalog = catalog or settings.event_catalog()
    paths = settings.paths
    paths.features.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.features, prefix=".duckdb-") as spill_dir:
        con = _connect(Path(spill_dir))
        try:
            _check_columns(con, _events_glob(paths), _EVENT_TYPES)
            _check_columns(con, str(paths.users), _USER_TYPES)
            files = checkpoints.event_files(con, paths, _day_number)
            plan = _plan(*_data_days(files, paths), settings, start, end, _lookback(catalog))
            _check_catalogue(con, paths, catalog, plan)
            with ThreadPoolExecutor(max_workers=os.cpu_count()) as executor:
                snapshots = _build(con, catalog, paths, plan, _Writer(executor), files)
            checkpoints.write_index(paths, files)
            accounts, changed_from = _write_accounts(con, paths)
            seq = record_build(paths, plan.first_day, plan.last_day, settings.clock(), changed_from)
            logger.info(
                "build %d: days %s..%s, %d snapshot rows (%d later versions), %d account rows",
                seq,
                plan.first_day,
                plan.last_day,
                snapshots.rows,
                snapshots.later_versions,
                accounts,
            )
            return _summarise(con, paths, plan, snapshots, seq, accounts, catalog)
        finally:
            con.close()
