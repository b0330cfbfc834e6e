"""The validation gate between raw and validated data: typed tables out, bad rows quarantined with a reason.

Raw columns may arrive typed (int64 ids, UTC timestamps) or as strings (ids and timestamps that may hold
garbage); both are parsed here, at the boundary. Timestamps must be UTC: a timezone-naive timestamp column is a
schema error, naive strings are read as UTC. Each bad row gets exactly one reason, the first that applies in
the order below.

Event reasons:

* ``invalid_user_id``: null, or not a non-negative integer.
* ``unparseable_timestamp``: ``event_timestamp`` (or ``ingested_at``, when the column exists) null/unparseable.
* ``unknown_event_type``: null, or not a name in the event catalogue.
* ``invalid_value``: a type that carries a value has a missing, non-numeric or non-finite value, or one
  outside the catalogue's ``[value_min, value_max]``; or a type that carries none has a value.
* ``future_timestamp``: ``event_timestamp`` later than the run's ``now``.
* ``unknown_user``: no accepted user has that id.
* ``before_signup``: ``event_timestamp`` earlier than the user's ``signup_at``.
* ``duplicate_event``: same ``(user_id, event_timestamp, event_type, value)`` as an earlier accepted row;
  the first in input order is kept.

User reasons: ``invalid_user_id``, ``unparseable_signup``, ``unparseable_closed_at`` and ``duplicate_user_id``
(the first row of an id is kept).

Events are read in chunks of about ``DEFAULT_CHUNK_ROWS`` rows (file batches), validated, and staged per date;
then each date is de-duplicated, sorted and written to a hidden temp file. Only when the quarantined share of
both tables is within the threshold are the files moved into place (``os.replace``); validated dates no longer
produced are removed, so the validated tables always reflect exactly the raw input of the last passing run.
"""

import itertools
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pdx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pandera.errors import SchemaErrors

from churn_common.errors import DataError, QuarantineThresholdExceeded, SchemaError
from churn_common.settings import DataPaths
from transformations.catalog import DEFAULT_CATALOG, EventCatalog

logger = logging.getLogger(__name__)

TS_US_UTC = pa.timestamp("us", tz="UTC")
PD_TS = "datetime64[us, UTC]"
DAY_US = 86_400 * 1_000_000


class EventReason(StrEnum):
    """Why an event row was quarantined; declaration order is precedence."""

    INVALID_USER_ID = "invalid_user_id"
    UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    INVALID_VALUE = "invalid_value"
    FUTURE_TIMESTAMP = "future_timestamp"
    FUTURE_INGESTION = "future_ingestion"
    TOO_LATE = "too_late"
    UNKNOWN_USER = "unknown_user"
    BEFORE_SIGNUP = "before_signup"
    AFTER_CLOSURE = "after_closure"
    DUPLICATE_EVENT = "duplicate_event"


class UserReason(StrEnum):
    """Why a user row was quarantined; declaration order is precedence."""

    INVALID_USER_ID = "invalid_user_id"
    UNPARSEABLE_SIGNUP = "unparseable_signup"
    UNPARSEABLE_CLOSED_AT = "unparseable_closed_at"
    FUTURE_SIGNUP = "future_signup"
    CLOSED_BEFORE_SIGNUP = "closed_before_signup"
    DUPLICATE_USER_ID = "duplicate_user_id"


EVENTS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("event_timestamp", TS_US_UTC),
        ("event_type", pa.string()),
        ("value", pa.float64()),
        ("ingested_at", TS_US_UTC),
    ]
)
USERS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("signup_at", TS_US_UTC),
        ("country", pa.string()),
        ("plan", pa.string()),
        ("acquisition_channel", pa.string()),
        ("closed_at", TS_US_UTC),
    ]
)
USER_TEXT_COLUMNS = ("country", "plan", "acquisition_channel")
REQUIRED_EVENT_COLUMNS = ("user_id", "event_timestamp", "event_type")
REQUIRED_USER_COLUMNS = ("user_id", "signup_at")
SOURCE_COLUMNS = ("source_file", "source_row")


@dataclass
class TableReport:
    rows_in: int = 0
    rows_accepted: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rows_quarantined(self) -> int:
        return sum(self.by_reason.values())

    @property
    def quarantined_share(self) -> float:
        return self.rows_quarantined / self.rows_in if self.rows_in else 0.0

    def add_reasons(self, reasons: pd.Series) -> None:
        for reason, count in reasons.value_counts().items():
            self.by_reason[str(reason)] += int(count)

    def as_dict(self) -> dict[str, object]:
        return {
            "rows_in": self.rows_in,
            "rows_accepted": self.rows_accepted,
            "rows_quarantined": self.rows_quarantined,
            "quarantined_share": round(self.quarantined_share, 6),
            "by_reason": dict(self.by_reason),
        }


def _empty_report(reasons: type[StrEnum]) -> TableReport:
    return TableReport(by_reason={str(reason): 0 for reason in reasons})


@dataclass
class ValidationReport:
    now: pd.Timestamp
    max_quarantine_share: float
    catalog: tuple[str, ...]
    users: TableReport = field(default_factory=lambda: _empty_report(UserReason))
    events: TableReport = field(default_factory=lambda: _empty_report(EventReason))
    event_dates: int = 0

    @property
    def passed(self) -> bool:
        shares = (self.users.quarantined_share, self.events.quarantined_share)
        return all(share <= self.max_quarantine_share for share in shares)

    def as_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "now": self.now.isoformat(),
            "max_quarantine_share": self.max_quarantine_share,
            "catalog": list(self.catalog),
            "event_dates": self.event_dates,
            "users": self.users.as_dict(),
            "events": self.events.as_dict(),
        }

    def summary(self) -> str:
        lines = [f"validation {'PASSED' if self.passed else 'FAILED'} (now={self.now.isoformat()})"]
        for name, table in (("users", self.users), ("events", self.events)):
            lines.append(
                f"  {name}: {table.rows_in} in = {table.rows_accepted} accepted + {table.rows_quarantined} "
                f"quarantined ({table.quarantined_share:.2%}, limit {self.max_quarantine_share:.2%})"
            )
            lines.extend(f"    {reason:<24} {count}" for reason, count in table.by_reason.items() if count)
        return "\n".join(lines)


# --- parsing raw columns (typed or string) -----------------------------------------------------------------


def _null_array(length: int, type_: pa.DataType) -> pa.ChunkedArray:
    return pa.chunked_array([pa.nulls(length, type=type_)])


def _keep(column: pa.ChunkedArray, ok: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.if_else(ok, column, pa.scalar(None, column.type))


def parse_ids(column: pa.ChunkedArray, name: str) -> pd.Series:
    """Non-negative integer ids as nullable Int64; null where missing or malformed."""
    type_ = column.type
    if pa.types.is_integer(type_):
        # Unsafe cast: unsigned ids beyond int64 wrap negative and are rejected with the negative ones.
        wide = column.cast(pa.int64(), safe=False)
        ids = _keep(wide, pc.greater_equal(wide, 0))
    elif pa.types.is_floating(type_):
        # Above 2**53 a float no longer holds every integer: such an id may already be wrong.
        in_range = pc.and_(pc.greater_equal(column, 0.0), pc.less(column, 2.0**53))
        ok = pc.and_(pc.equal(pc.floor(column), column), in_range)
        ids = _keep(column, ok).cast(pa.int64())
    elif pa.types.is_string(type_) or pa.types.is_large_string(type_):
        text = pc.utf8_trim_whitespace(column.cast(pa.string()))
        ids = _keep(text, pc.match_substring_regex(text, r"^\d{1,18}$")).cast(pa.int64())
    elif pa.types.is_null(type_):
        ids = _null_array(len(column), pa.int64())
    else:
        raise SchemaError(f"column {name!r} has type {type_}, which cannot be read as an integer id")
    return ids.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


def parse_timestamps(column: pa.ChunkedArray, name: str) -> pd.Series:
    """UTC microsecond timestamps; NaT where missing or unparseable."""
    type_ = column.type
    if pa.types.is_timestamp(type_):
        if type_.tz is None:
            raise SchemaError(f"column {name!r} is a timezone-naive timestamp; event logs must carry UTC times")
        # Arrow stores UTC instants whatever the zone label, so this only changes unit and label.
        return column.cast(TS_US_UTC, safe=False).to_pandas()
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        text = column.to_pandas()
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        return parsed.astype(PD_TS)
    if pa.types.is_null(type_):
        return pd.Series(pd.NaT, index=range(len(column)), dtype=PD_TS)
    raise SchemaError(f"column {name!r} has type {type_}, which cannot be read as a UTC timestamp")


def parse_text(column: pa.ChunkedArray, name: str) -> pd.Series:
    type_ = column.type
    if pa.types.is_dictionary(type_):
        column = column.cast(type_.value_type)
        type_ = column.type
    if not (pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_null(type_)):
        raise SchemaError(f"column {name!r} has type {type_}; expected strings")
    return column.cast(pa.string()).to_pandas()


def parse_values(column: pa.ChunkedArray, name: str) -> tuple[pd.Series, pd.Series]:
    """Float values, and a mask of rows whose value was present but not a number."""
    type_ = column.type
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        values = column.cast(pa.float64()).to_pandas()
        return values, pd.Series(False, index=values.index)
    if pa.types.is_null(type_):
        values = pd.Series(np.nan, index=range(len(column)))
        return values, pd.Series(False, index=values.index)
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        text = column.to_pandas()
        values = pd.to_numeric(text, errors="coerce").astype("float64")
        return values, text.notna() & values.isna()
    raise SchemaError(f"column {name!r} has type {type_}; expected numbers")


def _require(table: pa.Table, required: tuple[str, ...], source: str) -> None:
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise SchemaError(f"{source}: missing required column(s) {missing}; found {table.column_names}")


def _column(table: pa.Table, name: str, type_: pa.DataType) -> pa.ChunkedArray:
    """An optional column, all null when absent."""
    return table[name] if name in table.column_names else _null_array(table.num_rows, type_)


def _parse_events(table: pa.Table) -> pd.DataFrame:
    timestamps = parse_timestamps(table["event_timestamp"], "event_timestamp")
    values, unparsed = parse_values(_column(table, "value", pa.float64()), "value")
    frame = pd.DataFrame(
        {
            "user_id": parse_ids(table["user_id"], "user_id"),
            "event_timestamp": timestamps,
            "event_type": parse_text(table["event_type"], "event_type"),
            "value": values,
            # A log without arrival times is taken as arriving on time.
            "ingested_at": (
                parse_timestamps(table["ingested_at"], "ingested_at")
                if "ingested_at" in table.column_names
                else timestamps
            ),
            "value_unparsed": unparsed,
        }
    )
    return frame


def _parse_users(table: pa.Table, source: str) -> pd.DataFrame:
    _require(table, REQUIRED_USER_COLUMNS, source)
    closed_raw = _column(table, "closed_at", TS_US_UTC)
    closed = parse_timestamps(closed_raw, "closed_at")
    frame = pd.DataFrame(
        {
            "user_id": parse_ids(table["user_id"], "user_id"),
            "signup_at": parse_timestamps(table["signup_at"], "signup_at"),
            **{name: parse_text(_column(table, name, pa.string()), name) for name in USER_TEXT_COLUMNS},
            "closed_at": closed,
            "closed_at_unparsed": closed_raw.is_valid().to_pandas() & closed.isna(),
            "source_file": source,
            "source_row": np.arange(table.num_rows, dtype=np.int64),
        }
    )
    return frame


# --- pandera schemas and reasons ---------------------------------------------------------------------------


def _check(reason: StrEnum, fn: Callable[[pd.DataFrame], pd.Series]) -> pdx.Check:
    return pdx.Check(fn, name=str(reason))


def _value_ok(frame: pd.DataFrame, catalog: EventCatalog) -> pd.Series:
    """True where the value fits the event type; unknown types are judged by their own check."""
    types = frame["event_type"]
    needs = types.map({t.name: float(t.has_value) for t in catalog.event_types}).to_numpy(dtype=np.float64)
    low = types.map({t.name: t.value_min for t in catalog.event_types}).to_numpy(dtype=np.float64)
    high = types.map({t.name: t.value_max for t in catalog.event_types}).to_numpy(dtype=np.float64)
    value = frame["value"].to_numpy(dtype=np.float64)
    in_range = np.isfinite(value) & (value >= low) & (value <= high)
    ok = np.where(needs == 1.0, in_range, np.isnan(value)) | np.isnan(needs)
    return pd.Series(ok, index=frame.index) & ~frame["value_unparsed"]


def _user_lookup(frame: pd.DataFrame, signups: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per event: whether its user id is set, and the user's position in ``signups`` (-1 if unknown)."""
    has_id = frame["user_id"].notna().to_numpy()
    ids = frame["user_id"].to_numpy(dtype=np.int64, na_value=-1)
    return has_id, signups.index.get_indexer(ids)


def _known_user(frame: pd.DataFrame, signups: pd.Series) -> pd.Series:
    has_id, position = _user_lookup(frame, signups)
    return pd.Series(~has_id | (position >= 0), index=frame.index)


def _after_signup(frame: pd.DataFrame, signups: pd.Series) -> pd.Series:
    has_id, position = _user_lookup(frame, signups)
    judged = has_id & (position >= 0) & frame["event_timestamp"].notna().to_numpy()
    signup_us = np.append(signups.to_numpy(), 0)[np.where(judged, position, -1)]
    return pd.Series(~judged | (frame["event_timestamp"].array.asi8 >= signup_us), index=frame.index)


def raw_events_schema(catalog: EventCatalog, now: pd.Timestamp, signups: pd.Series) -> pdx.DataFrameSchema:
    """Row rules for parsed raw events; ``signups`` maps accepted user ids to signup epoch microseconds."""
    names = set(catalog.names)
    return pdx.DataFrameSchema(
        {
            "user_id": pdx.Column("Int64", nullable=False),
            "event_timestamp": pdx.Column(
                PD_TS, _check(EventReason.FUTURE_TIMESTAMP, lambda s: s <= now), nullable=False
            ),
            "event_type": pdx.Column(
                object, _check(EventReason.UNKNOWN_EVENT_TYPE, lambda s: s.isin(names)), nullable=False
            ),
            "value": pdx.Column("float64", nullable=True),
            "ingested_at": pdx.Column(PD_TS, nullable=False),
        },
        checks=[
            _check(EventReason.INVALID_VALUE, lambda f: _value_ok(f, catalog)),
            _check(EventReason.UNKNOWN_USER, lambda f: _known_user(f, signups)),
            _check(EventReason.BEFORE_SIGNUP, lambda f: _after_signup(f, signups)),
        ],
    )


RAW_USERS_SCHEMA = pdx.DataFrameSchema(
    {
        "user_id": pdx.Column("Int64", nullable=False),
        "signup_at": pdx.Column(PD_TS, nullable=False),
        **{name: pdx.Column(object, nullable=True) for name in USER_TEXT_COLUMNS},
        "closed_at": pdx.Column(PD_TS, nullable=True),
    },
    checks=[_check(UserReason.UNPARSEABLE_CLOSED_AT, lambda f: ~f["closed_at_unparsed"])],
)
UNIQUE_USERS_SCHEMA = pdx.DataFrameSchema(unique=["user_id"], report_duplicates="exclude_first")
UNIQUE_EVENTS_SCHEMA = pdx.DataFrameSchema(
    unique=["user_id", "event_timestamp", "event_type", "value"], report_duplicates="exclude_first"
)

# pandera reports a null in a non-nullable column as "not_nullable"; which reason that is depends on the column.
_NULL_REASONS = {
    "users": {"user_id": UserReason.INVALID_USER_ID, "signup_at": UserReason.UNPARSEABLE_SIGNUP},
    "events": {
        "user_id": EventReason.INVALID_USER_ID,
        "event_timestamp": EventReason.UNPARSEABLE_TIMESTAMP,
        "ingested_at": EventReason.UNPARSEABLE_TIMESTAMP,
        "event_type": EventReason.UNKNOWN_EVENT_TYPE,
    },
}
_UNIQUE_REASONS = {"users": UserReason.DUPLICATE_USER_ID, "events": EventReason.DUPLICATE_EVENT}


def row_reasons(schema: pdx.DataFrameSchema, frame: pd.DataFrame, table: str) -> pd.Series:
    """The one reason per failing row (index of ``frame``), highest precedence first; empty if all pass."""
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        return _reasons_from_failures(exc.failure_cases, table)
    return pd.Series([], dtype=object)


def _reasons_from_failures(failures: pd.DataFrame, table: str) -> pd.Series:
    reasons_enum = UserReason if table == "users" else EventReason
    check = failures["check"].astype(str)
    by_null = failures["column"].map({k: str(v) for k, v in _NULL_REASONS[table].items()})
    reason = np.select(
        [check.isin([str(r) for r in reasons_enum]), check == "not_nullable", check.str.endswith("_uniqueness")],
        [check, by_null, str(_UNIQUE_REASONS[table])],
        default=None,
    )
    reason = pd.Series(reason, index=failures.index, dtype=object)
    unexpected = reason.isna() | failures["index"].isna()
    if unexpected.any():
        raise SchemaError(f"{table} failed schema checks: {failures[unexpected].head(5).to_dict('records')}")
    rank = reason.map({str(r): i for i, r in enumerate(reasons_enum)})
    best = rank.groupby(failures["index"].astype(np.int64)).min()
    return best.map(dict(enumerate(str(r) for r in reasons_enum)))


# --- quarantine --------------------------------------------------------------------------------------------


class QuarantineWriter:
    """Streams quarantined rows (original values as strings) to a hidden file, moved into place on close."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        self.path = path
        self.columns = columns
        self.schema = pa.schema(
            [(name, pa.string()) for name in columns]
            + [("reason", pa.string()), ("source_file", pa.string()), ("source_row", pa.int64())]
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._writer = pq.ParquetWriter(self._tmp, self.schema)

    def write(self, originals: pa.Table, reasons: pd.Series, sources: pd.DataFrame) -> None:
        """``originals``: the bad rows as read; ``reasons`` and ``sources`` aligned with them."""
        if originals.num_rows == 0:
            return
        arrays = [_as_text(originals, name) for name in self.columns]
        arrays += [
            pa.array(reasons.to_numpy(dtype=object), type=pa.string()),
            pa.array(sources["source_file"].to_numpy(dtype=object), type=pa.string()),
            pa.array(sources["source_row"].to_numpy(dtype=np.int64)),
        ]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def __enter__(self) -> "QuarantineWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._writer.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink()


def _as_text(table: pa.Table, name: str) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(table.num_rows, type=pa.string())
    return pc.cast(table[name], pa.string()).combine_chunks()


# --- users -------------------------------------------------------------------------------------------------


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def validate_users(source: Path, quarantine: QuarantineWriter, report: TableReport) -> pd.DataFrame:
    """Accepted users (typed), the rest quarantined; also fills ``report``."""
    raw = _read_parquet(source)
    frame = _parse_users(raw, source.name)
    report.rows_in = len(frame)
    reasons = row_reasons(RAW_USERS_SCHEMA, frame, "users")
    survivors = frame.drop(index=reasons.index)
    duplicates = row_reasons(UNIQUE_USERS_SCHEMA, survivors[["user_id"]], "users")
    reasons = pd.concat([reasons, duplicates]).sort_index()
    quarantine.write(raw.take(reasons.index.to_numpy()), reasons, frame.loc[reasons.index])
    report.add_reasons(reasons)
    accepted = frame.drop(index=reasons.index)
    report.rows_accepted = len(accepted)
    return accepted[USERS_SCHEMA.names].astype({"user_id": "int64"}).reset_index(drop=True)


# --- events ------------------------------------------------------------------------------------------------

DEFAULT_CHUNK_ROWS = 500_000
STAGING_SCHEMA = pa.schema([*EVENTS_SCHEMA, ("source_file", pa.string()), ("source_row", pa.int64())])


@dataclass(frozen=True)
class _Batch:
    table: pa.Table
    source_file: str
    first_row: int


@dataclass
class _Chunk:
    """Parsed events of several file batches, with the batches as read (for quarantining originals)."""

    frame: pd.DataFrame
    originals: list[pa.Table]
    offsets: np.ndarray


def _event_files(source: Path) -> list[tuple[Path, str]]:
    """Parquet files under ``source`` (or ``source`` itself) in a stable order, hidden ones skipped."""
    if source.is_file():
        return [(source, source.name)]
    files = sorted(
        path
        for path in source.rglob("*.parquet")
        if not any(part.startswith(".") for part in path.relative_to(source).parts)
    )
    if not files:
        raise DataError(f"no Parquet event files under {source}")
    return [(path, path.relative_to(source).as_posix()) for path in files]


def _file_batches(path: Path, batch_rows: int) -> Iterator[tuple[int, pa.Table]]:
    try:
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(batch_size=batch_rows)
        first_row = 0
        for batch in batches:
            yield first_row, pa.Table.from_batches([batch])
            first_row += batch.num_rows
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _event_chunks(source: Path, chunk_rows: int) -> Iterator[_Chunk]:
    pending: list[_Batch] = []
    for path, name in _event_files(source):
        for first_row, table in _file_batches(path, chunk_rows):
            _require(table, REQUIRED_EVENT_COLUMNS, name)
            pending.append(_Batch(table, name, first_row))
            if sum(batch.table.num_rows for batch in pending) >= chunk_rows:
                yield _make_chunk(pending)
                pending = []
    if pending:
        yield _make_chunk(pending)


def _make_chunk(batches: list[_Batch]) -> _Chunk:
    # Runs of batches with one schema are parsed together: per-call overhead dominates on small partitions.
    runs = itertools.groupby(batches, key=lambda batch: batch.table.schema.remove_metadata())
    originals = [pa.concat_tables([batch.table for batch in run]) for _, run in runs]
    frame = pd.concat([_parse_events(table) for table in originals], ignore_index=True)
    sizes = [batch.table.num_rows for batch in batches]
    frame["source_file"] = np.repeat(np.array([batch.source_file for batch in batches], dtype=object), sizes)
    frame["source_row"] = np.concatenate(
        [np.arange(b.first_row, b.first_row + n) for b, n in zip(batches, sizes, strict=True)]
    )
    offsets = np.cumsum([0] + [table.num_rows for table in originals[:-1]])
    return _Chunk(frame, originals, offsets)


def _quarantine_chunk(chunk: _Chunk, reasons: pd.Series, quarantine: QuarantineWriter) -> None:
    positions = reasons.index.to_numpy(dtype=np.int64)
    batch_of = np.searchsorted(chunk.offsets, positions, side="right") - 1
    for batch in np.unique(batch_of):
        rows = positions[batch_of == batch]
        originals = chunk.originals[batch].take(rows - chunk.offsets[batch])
        quarantine.write(originals, reasons.loc[rows], chunk.frame.loc[rows, list(SOURCE_COLUMNS)])


def _stage(accepted: pd.DataFrame, staging: Path, chunk_no: int) -> None:
    """Accepted rows of one chunk, split by event date (the date of the output partition)."""
    day = accepted["event_timestamp"].array.asi8 // DAY_US
    order = np.argsort(day, kind="stable")
    table = pa.Table.from_pandas(accepted[STAGING_SCHEMA.names], schema=STAGING_SCHEMA, preserve_index=False)
    table, day = table.take(order), day[order]
    bounds = np.flatnonzero(np.diff(day)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(day)], strict=True):
        if lo == hi:
            continue
        directory = staging / f"date={np.datetime64(int(day[lo]), 'D')}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(lo, hi - lo), directory / f"chunk-{chunk_no:06d}.parquet")


def _validate_event_chunks(
    source: Path, schema: pdx.DataFrameSchema, staging: Path, quarantine: QuarantineWriter, report: TableReport
) -> None:
    for chunk_no, chunk in enumerate(_event_chunks(source, DEFAULT_CHUNK_ROWS)):
        reasons = row_reasons(schema, chunk.frame, "events")
        _quarantine_chunk(chunk, reasons, quarantine)
        report.rows_in += len(chunk.frame)
        report.add_reasons(reasons)
        _stage(chunk.frame.drop(index=reasons.index), staging, chunk_no)
        logger.debug("events chunk %d: %d rows, %d quarantined", chunk_no, len(chunk.frame), len(reasons))


def _deduplicate_day(day_dir: Path, quarantine: QuarantineWriter, report: TableReport) -> pa.Table:
    """One date's accepted events, duplicates quarantined (first in input order kept), sorted."""
    table = pa.concat_tables(pq.read_table(path) for path in sorted(day_dir.glob("chunk-*.parquet")))
    keys = table.select(list(UNIQUE_EVENTS_SCHEMA.unique)).to_pandas()
    duplicates = row_reasons(UNIQUE_EVENTS_SCHEMA, keys, "events")
    if len(duplicates):
        rows = duplicates.index.to_numpy(dtype=np.int64)
        sources = table.select(list(SOURCE_COLUMNS)).take(rows).to_pandas()
        quarantine.write(table.take(rows), duplicates, sources)
        report.add_reasons(duplicates)
        keep = np.setdiff1d(np.arange(table.num_rows), rows)
        table = table.take(keep)
    table = table.select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)
    return table.take(pc.sort_indices(table, [("user_id", "ascending"), ("event_timestamp", "ascending")]))


def _write_days(staging: Path, out_root: Path, quarantine: QuarantineWriter, report: TableReport) -> list[Path]:
    """Write each date's file as a hidden temp file beside its final place; return the temp files."""
    pending = []
    for day_dir in sorted(staging.glob("date=*")):
        final_dir = out_root / day_dir.name
        final_dir.mkdir(parents=True, exist_ok=True)
        table = _deduplicate_day(day_dir, quarantine, report)
        tmp = final_dir / ".part-0.parquet.tmp"
        pq.write_table(table, tmp)
        report.rows_accepted += table.num_rows
        pending.append(tmp)
    return pending


def _publish(pending: list[Path], out_root: Path) -> None:
    for tmp in pending:
        os.replace(tmp, tmp.with_name("part-0.parquet"))
    produced = {tmp.parent.name for tmp in pending}
    for stale in out_root.glob("date=*"):
        if stale.name not in produced:
            shutil.rmtree(stale)


def _discard(pending: list[Path]) -> None:
    for tmp in pending:
        tmp.unlink()
        if not any(tmp.parent.iterdir()):
            tmp.parent.rmdir()


# --- the gate ----------------------------------------------------------------------------------------------


def _as_utc(now: datetime | pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(now)
    return (stamp.tz_localize(UTC) if stamp.tz is None else stamp.tz_convert(UTC)).as_unit("us")


def _write_atomically(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _write_report(report: ValidationReport, paths: DataPaths) -> None:
    paths.reports.mkdir(parents=True, exist_ok=True)
    tmp = paths.reports / ".validation.json.tmp"
    tmp.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    os.replace(tmp, paths.reports / "validation.json")


def _validate_all(
    paths: DataPaths, report: ValidationReport, catalog: EventCatalog, users_source: Path, events_source: Path
) -> tuple[pd.DataFrame, list[Path]]:
    staging = paths.validated / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with (
            QuarantineWriter(paths.quarantine / "users.parquet", USERS_SCHEMA.names) as users_quarantine,
            QuarantineWriter(paths.quarantine / "events.parquet", EVENTS_SCHEMA.names) as events_quarantine,
        ):
            users = validate_users(users_source, users_quarantine, report.users)
            signups = pd.Series(users["signup_at"].array.asi8, index=pd.Index(users["user_id"]))
            schema = raw_events_schema(catalog, report.now, signups)
            _validate_event_chunks(events_source, schema, staging, events_quarantine, report.events)
            pending = _write_days(staging, paths.events, events_quarantine, report.events)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.event_dates = len(pending)
    return users, pending


def _threshold_message(report: ValidationReport, paths: DataPaths) -> str:
    return (
        f"quarantined share above {report.max_quarantine_share:.2%}: users {report.users.quarantined_share:.2%}, "
        f"events {report.events.quarantined_share:.2%}; nothing published, see {paths.reports / 'validation.json'}"
    )


def validate(
    paths: DataPaths,
    *,
    now: datetime | pd.Timestamp,
    max_quarantine_share: float,
    catalog: EventCatalog = DEFAULT_CATALOG,
    users_source: Path | None = None,
    events_source: Path | None = None,
) -> ValidationReport:
    """Validate raw users and events into ``paths.users`` / ``paths.events``; quarantine and report the rest.

    Raises QuarantineThresholdExceeded (after writing the report and quarantine, without publishing) when either
    table's quarantined share exceeds ``max_quarantine_share``, and SchemaError on unusable columns.
    """
    report = ValidationReport(_as_utc(now), max_quarantine_share, catalog.names)
    sources = (users_source or paths.raw_users, events_source or paths.raw_events)
    users, pending = _validate_all(paths, report, catalog, *sources)
    _write_report(report, paths)
    if not report.passed:
        _discard(pending)
        raise QuarantineThresholdExceeded(_threshold_message(report, paths))
    users_table = pa.Table.from_pandas(users, schema=USERS_SCHEMA, preserve_index=False)
    _write_atomically(users_table.replace_schema_metadata(None), paths.users)
    _publish(pending, paths.events)
    logger.info("validation passed: %d users, %d events", report.users.rows_accepted, report.events.rows_accepted)
    return report
