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
* ``future_ingestion``: ``ingested_at`` later than the run's ``now``.
* ``too_late``: ``ingested_at - event_timestamp`` more than ``late_data_days`` days.
* ``unknown_user``: no validated user has that id.
* ``before_signup``: ``event_timestamp`` earlier than the user's ``signup_at``.
* ``after_closure``: ``event_timestamp`` later than the user's ``closed_at``.
* ``duplicate_event``: the key of an earlier accepted row of the run (input order; the first is kept), or of a
  validated row of another batch in the dates the run touches. The key is ``event_id`` when the row has one,
  else the content ``(user_id, event_timestamp, event_type, value)``.

User reasons: ``invalid_user_id``, ``unparseable_signup``, ``unparseable_closed_at``, ``future_signup``
(``signup_at`` later than ``now``), ``closed_before_signup`` (``closed_at`` earlier than ``signup_at``) and
``duplicate_user_id`` (the first row of an id is kept).

Batches. The raw log lands in daily drops ``raw/events/date=YYYY-MM-DD/part-*.parquet``; a file's batch is the
nearest ``date=`` directory of its path below the source, else the ``batch`` argument (default: the source
file's stem, or the source directory's name). A run replaces exactly its own batches in
``validated/events/date=<event day>/batch=<batch>.parquet``; other batches' files are never touched. Users are
upserted into ``validated/users.parquet`` (users absent from a run are kept), and the attribute changes a run
brings are appended as ``validated/user_history/batch=<batch>.parquet`` (valid-from rows).

Events are read in chunks of about ``DEFAULT_CHUNK_ROWS`` rows, validated, and staged per date; then each date
is de-duplicated, split by batch, sorted and written to hidden temp files. Only when the quarantined share of
both tables is within the threshold are the files moved into place (``os.replace``). An input without rows
publishes nothing (EmptyInput).
"""

import itertools
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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

from churn_common.catalog import EventCatalog
from churn_common.errors import DataError, EmptyInput, QuarantineThresholdExceeded, SchemaError
from churn_common.files import write_table_atomically
from churn_common.privacy import NOBODY, Erased, Forgotten
from churn_common.settings import DataPaths
from transformations.snapshot_schema import ACCOUNT_ATTRIBUTES, ACCOUNT_SCHEMA

logger = logging.getLogger(__name__)

TS_US_UTC = pa.timestamp("us", tz="UTC")
PD_TS = "datetime64[us, UTC]"
DAY_US = 86_400 * 1_000_000
INT64_MIN, INT64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


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
        ("event_id", pa.string()),
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
# The account history this gate writes is what the user_account feature view reads (via the feature build).
HISTORY_SCHEMA = ACCOUNT_SCHEMA
USER_TEXT_COLUMNS = ("country", "plan", "acquisition_channel")
HISTORY_ATTRIBUTES = ACCOUNT_ATTRIBUTES
REQUIRED_EVENT_COLUMNS = ("user_id", "event_timestamp", "event_type")
REQUIRED_USER_COLUMNS = ("user_id", "signup_at")
CONTENT_KEY = ("user_id", "event_timestamp", "event_type", "value")
SOURCE_COLUMNS = ("source_file", "source_row")
BATCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DROP_DIRECTORY = re.compile(r"date=(\d{4}-\d{2}-\d{2})")


@dataclass
class TableReport:
    rows_in: int = 0
    rows_accepted: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    rows_forgotten: int = 0
    """Rows of erased users (churn forget), dropped unread: neither accepted nor kept in quarantine."""

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
            "rows_forgotten": self.rows_forgotten,
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
    batches: list[str] = field(default_factory=list)
    """The event batches this run replaces (published when it passes)."""

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
            "batches": list(self.batches),
            "event_dates": self.event_dates,
            "users": self.users.as_dict(),
            "events": self.events.as_dict(),
        }

    def summary(self) -> str:
        lines = [f"validation {'PASSED' if self.passed else 'FAILED'} (now={self.now.isoformat()})"]
        # A first run over a long history has a batch per day: the ends and a count say enough.
        shown = self.batches if len(self.batches) <= 5 else [self.batches[0], "...", self.batches[-1]]
        lines.append(f"  batches: {', '.join(shown)} ({len(self.batches)})")
        for name, table in (("users", self.users), ("events", self.events)):
            forgotten = f" + {table.rows_forgotten} forgotten" if table.rows_forgotten else ""
            lines.append(
                f"  {name}: {table.rows_in} in = {table.rows_accepted} accepted + {table.rows_quarantined} "
                f"quarantined{forgotten} ({table.quarantined_share:.2%}, limit {self.max_quarantine_share:.2%})"
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


def parse_event_ids(column: pa.ChunkedArray, name: str) -> pd.Series:
    """Event ids as strings (integer ids are written out); None where the log has none."""
    type_ = column.type
    if pa.types.is_dictionary(type_):
        column = column.cast(type_.value_type)
        type_ = column.type
    kinds = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_null)
    if not any(kind(type_) for kind in kinds):
        raise SchemaError(f"column {name!r} has type {type_}; expected strings or integers")
    return column.cast(pa.string()).to_pandas()


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
            "event_id": parse_event_ids(_column(table, "event_id", pa.string()), "event_id"),
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


def _on_time(frame: pd.DataFrame, late: pd.Timedelta) -> pd.Series:
    lag = frame["ingested_at"] - frame["event_timestamp"]
    return lag.isna() | (lag <= late)


def _after_signup(frame: pd.DataFrame) -> pd.Series:
    """Not before the user's signup (unknown users are judged by their own check)."""
    timestamps = frame["event_timestamp"]
    after = timestamps.array.asi8 >= frame["user_signup_us"].to_numpy()
    return timestamps.isna() | pd.Series(after, index=frame.index)


def _before_closure(frame: pd.DataFrame) -> pd.Series:
    """Not after the user's closure (open accounts close at INT64_MAX)."""
    timestamps = frame["event_timestamp"]
    before = timestamps.array.asi8 <= frame["user_closed_us"].to_numpy()
    return timestamps.isna() | pd.Series(before, index=frame.index)


def raw_events_schema(catalog: EventCatalog, now: pd.Timestamp, late_data_days: int) -> pdx.DataFrameSchema:
    """Row rules for parsed raw events annotated by ``_Accounts.annotate`` (their user's signup and closure)."""
    names = set(catalog.names)
    late = pd.Timedelta(days=late_data_days)
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
            "ingested_at": pdx.Column(PD_TS, _check(EventReason.FUTURE_INGESTION, lambda s: s <= now), nullable=False),
        },
        checks=[
            _check(EventReason.INVALID_VALUE, lambda f: _value_ok(f, catalog)),
            _check(EventReason.TOO_LATE, lambda f: _on_time(f, late)),
            _check(EventReason.UNKNOWN_USER, lambda f: f["user_id"].isna() | f["known_user"]),
            _check(EventReason.BEFORE_SIGNUP, _after_signup),
            _check(EventReason.AFTER_CLOSURE, _before_closure),
        ],
    )


def _closed_after_signup(frame: pd.DataFrame) -> pd.Series:
    closed, signup = frame["closed_at"], frame["signup_at"]
    return closed.isna() | signup.isna() | (closed >= signup)


def raw_users_schema(now: pd.Timestamp) -> pdx.DataFrameSchema:
    """Row rules for parsed raw users; ``now`` bounds signups."""
    return pdx.DataFrameSchema(
        {
            "user_id": pdx.Column("Int64", nullable=False),
            "signup_at": pdx.Column(PD_TS, _check(UserReason.FUTURE_SIGNUP, lambda s: s <= now), nullable=False),
            **{name: pdx.Column(object, nullable=True) for name in USER_TEXT_COLUMNS},
            "closed_at": pdx.Column(PD_TS, nullable=True),
        },
        checks=[
            _check(UserReason.UNPARSEABLE_CLOSED_AT, lambda f: ~f["closed_at_unparsed"]),
            _check(UserReason.CLOSED_BEFORE_SIGNUP, _closed_after_signup),
        ],
    )


UNIQUE_USERS_SCHEMA = pdx.DataFrameSchema(unique=["user_id"], report_duplicates="exclude_first")
UNIQUE_EVENTS_SCHEMA = pdx.DataFrameSchema(unique=list(CONTENT_KEY), report_duplicates="exclude_first")
UNIQUE_EVENT_IDS_SCHEMA = pdx.DataFrameSchema(unique=["event_id"], report_duplicates="exclude_first")

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


# --- inputs and batches ------------------------------------------------------------------------------------

EMPTY_NOTE = "nothing was published; previously validated data is unchanged"


@dataclass(frozen=True)
class _EventFile:
    path: Path
    name: str
    """The path below the source, as quarantined rows name their origin."""
    batch: str


@dataclass(frozen=True)
class _Run:
    """A run's inputs, checked before anything is written."""

    events: list[_EventFile]
    batches: list[str]
    users_source: Path
    users_batch: str
    """The history file's batch: the ``batch`` argument, else the run's last events batch."""


def _batch_name(name: str, origin: str) -> str:
    if not BATCH_NAME.fullmatch(name):
        raise DataError(
            f"{name!r} ({origin}) is not a usable batch name: letters, digits, '.', '_' and '-', starting with a "
            "letter or digit; name the batch with --batch"
        )
    return name


def _drop_day(part: str) -> str | None:
    match = DROP_DIRECTORY.fullmatch(part)
    return match.group(1) if match else None


def _event_files(source: Path, batch: str | None) -> list[_EventFile]:
    """Parquet files under ``source`` (or ``source`` itself) in a stable order with their batches."""
    if source.is_file():
        return [_EventFile(source, source.name, _batch_name(batch or source.stem, f"batch of {source}"))]
    # A drop directory given itself is that day's batch, as it is when given with its parent.
    default = batch or _drop_day(source.name) or source.name
    files = sorted(
        path
        for path in source.rglob("*.parquet")
        if not any(part.startswith(".") for part in path.relative_to(source).parts)
    )
    if not files:
        raise DataError(f"no Parquet event files under {source}")
    found = []
    for path in files:
        relative = path.relative_to(source)
        days = (day for part in reversed(relative.parts[:-1]) if (day := _drop_day(part)))
        found.append(_EventFile(path, relative.as_posix(), next(days, default)))
    for name in {file.batch for file in found}:
        _batch_name(name, f"batch of files under {source}")
    return found


def _parquet_rows(path: Path) -> int:
    try:
        return pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _require_rows(files: list[_EventFile], source: Path | list[Path], users_source: Path) -> None:
    """An empty input, or an empty batch, would replace good data with nothing: refuse it."""
    if _parquet_rows(users_source) == 0:
        raise EmptyInput(f"users input {users_source} has 0 rows: {EMPTY_NOTE}")
    rows: Counter[str] = Counter()
    for file in files:
        rows[file.batch] += _parquet_rows(file.path)
    if not sum(rows.values()):
        raise EmptyInput(f"events input {source} has 0 rows: {EMPTY_NOTE}")
    empty = sorted(batch for batch, count in rows.items() if count == 0)
    if empty:
        raise EmptyInput(f"events input {source}: batch(es) {empty} have 0 rows: {EMPTY_NOTE}")


def _plan_run(events_sources: list[Path], users_source: Path, batch: str | None) -> _Run:
    if batch is not None:
        _batch_name(batch, "the batch argument")
    files = [file for source in events_sources for file in _event_files(source, batch)]
    _require_rows(files, events_sources[0] if len(events_sources) == 1 else events_sources, users_source)
    batches = sorted({file.batch for file in files})
    return _Run(files, batches, users_source, batch if batch is not None else batches[-1])


def _batch_of(path: Path) -> str:
    """``batch=<name>.parquet`` -> ``<name>``."""
    return path.name.removeprefix("batch=").removesuffix(".parquet")


# --- users -------------------------------------------------------------------------------------------------


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _read_typed(path: Path, schema: pa.Schema) -> pa.Table:
    """A table we wrote earlier, in ``schema``; a file that does not fit is a schema error, not a crash."""
    table = _read_parquet(path)
    try:
        return table.select(schema.names).cast(schema).replace_schema_metadata(None)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"{path}: expected columns {schema}, found {table.schema}") from exc


def scrub(path: Path, forgotten: Forgotten) -> int:
    """Rewrite a Parquet file without the forgotten users' rows (ids read as the gate reads them); the rows
    removed. A file without them, or without a user_id column, is left untouched."""
    if "user_id" not in pq.read_schema(path).names:
        return 0
    hit = forgotten.mask(parse_ids(pq.read_table(path, columns=["user_id"])["user_id"], "user_id"))
    if hit.any():
        kept = _read_parquet(path).filter(pa.array(~hit))
        temporary = path.with_name(f".{path.name}.scrub.tmp")
        pq.write_table(kept, temporary)
        os.replace(temporary, path)
    return int(hit.sum())


def _scrub_sources(run: "_Run", report: ValidationReport, erased: Erased) -> None:
    """The raw inputs lose the rows the gate dropped as forgotten: the landing zone keeps nothing of an erased
    user either (the source system sent them again, not knowing)."""
    if report.users.rows_forgotten:
        scrub(run.users_source, erased)
    if report.events.rows_forgotten:
        for file in run.events:
            scrub(file.path, erased)


def _without_forgotten(frame: pd.DataFrame, erased: Erased, report: TableReport) -> pd.DataFrame:
    """The rows of users not erased; the index (positions in the raw table) is kept for quarantine."""
    forgotten = erased.mask(frame["user_id"])
    report.rows_forgotten += int(forgotten.sum())
    return frame[~forgotten].copy() if forgotten.any() else frame


def validate_users(
    source: Path, now: pd.Timestamp, quarantine: QuarantineWriter, report: TableReport, erased: Erased
) -> pa.Table:
    """This run's accepted users (typed, USERS_SCHEMA), the rest quarantined; also fills ``report``."""
    raw = _read_parquet(source)
    frame = _parse_users(raw, source.name)
    report.rows_in = len(frame)
    frame = _without_forgotten(frame, erased, report)
    reasons = row_reasons(raw_users_schema(now), frame, "users")
    survivors = frame.drop(index=reasons.index)
    duplicates = row_reasons(UNIQUE_USERS_SCHEMA, survivors[["user_id"]], "users")
    reasons = pd.concat([reasons, duplicates]).sort_index()
    quarantine.write(raw.take(reasons.index.to_numpy()), reasons, frame.loc[reasons.index])
    report.add_reasons(reasons)
    accepted = frame.drop(index=reasons.index)
    report.rows_accepted = len(accepted)
    accepted = accepted[USERS_SCHEMA.names].astype({"user_id": "int64"})
    return pa.Table.from_pandas(accepted, schema=USERS_SCHEMA, preserve_index=False).replace_schema_metadata(None)


def _sorted_by_user(table: pa.Table) -> pa.Table:
    return table.take(pc.sort_indices(table, [("user_id", "ascending")]))


def merge_users(previous: pa.Table | None, accepted: pa.Table) -> pa.Table:
    """The current users: this run's accepted rows replace those of the same id; every other id is kept."""
    if previous is None:
        return _sorted_by_user(accepted)
    replaced = pc.is_in(previous["user_id"], value_set=accepted["user_id"])
    return _sorted_by_user(pa.concat_tables([previous.filter(pc.invert(replaced)), accepted]))


@dataclass(frozen=True)
class _Accounts:
    """The users events are judged against: sorted ids, signup and closure as epoch microseconds."""

    ids: np.ndarray
    signup_us: np.ndarray
    closed_us: np.ndarray
    """INT64_MAX while the account is open."""

    @classmethod
    def of(cls, users: pa.Table) -> "_Accounts":
        closed = pc.fill_null(pc.cast(users["closed_at"], pa.int64()), INT64_MAX)
        signup = pc.cast(users["signup_at"], pa.int64())
        return cls(users["user_id"].to_numpy(), signup.to_numpy(), closed.to_numpy())

    def annotate(self, frame: pd.DataFrame) -> None:
        """Add each event's user (``known_user``) and that user's signup and closure, for the event checks."""
        ids = frame["user_id"].to_numpy(dtype=np.int64, na_value=-1)
        position = np.searchsorted(self.ids, ids)
        known = frame["user_id"].notna().to_numpy() & (position < len(self.ids))
        known[known] = self.ids[position[known]] == ids[known]
        # Unknown users point at a sentinel slot that passes the signup and closure checks.
        position = np.where(known, position, len(self.ids))
        frame["known_user"] = known
        frame["user_signup_us"] = np.append(self.signup_us, INT64_MIN)[position]
        frame["user_closed_us"] = np.append(self.closed_us, INT64_MAX)[position]


def _latest_history(root: Path, batch: str) -> pa.Table:
    """The last history row per user in the history files of batches sorting before ``batch``, by user_id."""
    files = sorted((path for path in root.glob("batch=*.parquet") if _batch_of(path) < batch), key=_batch_of)
    history = pa.concat_tables([HISTORY_SCHEMA.empty_table(), *(_read_typed(p, HISTORY_SCHEMA) for p in files)])
    # Stable: rows of one instant keep their batch and file order, so the last written is the latest.
    order = pc.sort_indices(history, [("user_id", "ascending"), ("valid_from", "ascending"), ("created", "ascending")])
    history = history.take(order)
    ids = history["user_id"].to_numpy()
    return history.filter(np.append(ids[1:] != ids[:-1], True) if len(ids) else np.zeros(0, dtype=bool))


def _same(left: pa.ChunkedArray, right: pa.ChunkedArray) -> np.ndarray:
    """Element-wise equality where two nulls are equal."""
    equal = pc.fill_null(pc.equal(left, right), False)
    both_null = pc.and_(pc.is_null(left), pc.is_null(right))
    return pc.or_(equal, both_null).to_numpy(zero_copy_only=False)


def _against_latest(accepted: pa.Table, latest: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per accepted user: new to the history; attributes changed since its latest row; that row closed."""
    n, ids, known_ids = accepted.num_rows, accepted["user_id"].to_numpy(), latest["user_id"].to_numpy()
    if not len(known_ids):
        return np.ones(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    position = np.minimum(np.searchsorted(known_ids, ids), len(known_ids) - 1)
    known = known_ids[position] == ids
    previous = latest.take(position)
    changed = np.zeros(n, dtype=bool)
    for name in HISTORY_ATTRIBUTES:
        changed |= ~_same(accepted[name], previous[name])
    was_closed = pc.equal(previous["account_status"], "closed").to_numpy(zero_copy_only=False)
    return ~known, changed & known, was_closed & known


def history_rows(accepted: pa.Table, latest: pa.Table, now: pd.Timestamp) -> pa.Table:
    """The valid-from rows this run adds: signups (and closures) of users new to the history; for the others,
    attribute changes (at ``now``), closures (at ``closed_at``) and reopenings (at ``now``) since their latest row."""
    new, changed, was_closed = _against_latest(accepted, latest)
    closed = accepted["closed_at"].is_valid().to_numpy(zero_copy_only=False)
    signup_us = pc.cast(accepted["signup_at"], pa.int64()).to_numpy()
    closed_us = pc.fill_null(pc.cast(accepted["closed_at"], pa.int64()), 0).to_numpy()
    now_us = np.full(accepted.num_rows, now.value // 1_000, dtype=np.int64)
    parts = [
        (new, signup_us, np.zeros_like(closed)),
        (new & closed, closed_us, closed),
        (~new & closed & ~was_closed, closed_us, closed),
        (~new & (changed | (was_closed & ~closed)), now_us, closed),
    ]
    return _history_table(accepted, parts)


def _history_table(accepted: pa.Table, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> pa.Table:
    """Rows ``(user, at, attributes, closed)`` for each part's selected users, sorted by user and valid_from."""
    rows = np.concatenate([np.flatnonzero(mask) for mask, _, _ in parts])
    at = np.concatenate([times[mask] for mask, times, _ in parts])
    closed = np.concatenate([flags[mask] for mask, _, flags in parts])
    # Stable (lexsort is): a signup and a closure at the same instant stay in that order.
    order = np.lexsort((at, accepted["user_id"].to_numpy()[rows]))
    users = accepted.take(rows[order])
    at_ts = pa.array(at[order]).cast(TS_US_UTC)
    columns = {"user_id": users["user_id"], "valid_from": at_ts, "created": at_ts}
    columns |= {name: users[name] for name in HISTORY_ATTRIBUTES}
    columns["account_status"] = pa.array(np.where(closed[order], "closed", "open"), type=pa.string())
    return pa.table(columns, schema=HISTORY_SCHEMA)


# --- events ------------------------------------------------------------------------------------------------

DEFAULT_CHUNK_ROWS = 500_000
STAGING_SCHEMA = pa.schema(
    [
        *EVENTS_SCHEMA,
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("batch", pa.string()),
        ("seq", pa.int64()),
    ]
)
"""Accepted rows waiting for de-duplication; ``seq`` is the row's position in the run's input."""


@dataclass(frozen=True)
class _Piece:
    """A record batch of one file, as read."""

    table: pa.Table
    file: _EventFile
    first_row: int


@dataclass
class _Chunk:
    """Parsed events of several pieces, with the pieces as read (for quarantining originals)."""

    frame: pd.DataFrame
    originals: list[pa.Table]
    offsets: np.ndarray


def _file_pieces(path: Path, batch_rows: int) -> Iterator[tuple[int, pa.Table]]:
    try:
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(batch_size=batch_rows)
        first_row = 0
        for batch in batches:
            yield first_row, pa.Table.from_batches([batch])
            first_row += batch.num_rows
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def _event_chunks(files: list[_EventFile], chunk_rows: int) -> Iterator[_Chunk]:
    pending: list[_Piece] = []
    for file in files:
        for first_row, table in _file_pieces(file.path, chunk_rows):
            _require(table, REQUIRED_EVENT_COLUMNS, file.name)
            pending.append(_Piece(table, file, first_row))
            if sum(piece.table.num_rows for piece in pending) >= chunk_rows:
                yield _make_chunk(pending)
                pending = []
    if pending:
        yield _make_chunk(pending)


def _make_chunk(pieces: list[_Piece]) -> _Chunk:
    # Runs of pieces with one schema are parsed together: per-call overhead dominates on small partitions.
    runs = itertools.groupby(pieces, key=lambda piece: piece.table.schema.remove_metadata())
    originals = [pa.concat_tables([piece.table for piece in run]) for _, run in runs]
    frame = pd.concat([_parse_events(table) for table in originals], ignore_index=True)
    sizes = [piece.table.num_rows for piece in pieces]
    for column, attribute in (("source_file", "name"), ("batch", "batch")):
        names = np.array([getattr(piece.file, attribute) for piece in pieces], dtype=object)
        frame[column] = np.repeat(names, sizes)
    frame["source_row"] = np.concatenate(
        [np.arange(p.first_row, p.first_row + n) for p, n in zip(pieces, sizes, strict=True)]
    )
    offsets = np.cumsum([0] + [table.num_rows for table in originals[:-1]])
    return _Chunk(frame, originals, offsets)


def _quarantine_chunk(chunk: _Chunk, reasons: pd.Series, quarantine: QuarantineWriter) -> None:
    positions = reasons.index.to_numpy(dtype=np.int64)
    piece_of = np.searchsorted(chunk.offsets, positions, side="right") - 1
    for piece in np.unique(piece_of):
        rows = positions[piece_of == piece]
        originals = chunk.originals[piece].take(rows - chunk.offsets[piece])
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
    files: list[_EventFile],
    schema: pdx.DataFrameSchema,
    accounts: _Accounts,
    staging: Path,
    quarantine: QuarantineWriter,
    report: TableReport,
    erased: Erased,
) -> None:
    for chunk_no, chunk in enumerate(_event_chunks(files, DEFAULT_CHUNK_ROWS)):
        frame = chunk.frame
        frame["seq"] = report.rows_in + np.arange(len(frame), dtype=np.int64)
        report.rows_in += len(frame)
        frame = _without_forgotten(frame, erased, report)
        accounts.annotate(frame)
        reasons = row_reasons(schema, frame, "events")
        _quarantine_chunk(chunk, reasons, quarantine)
        report.add_reasons(reasons)
        _stage(frame.drop(index=reasons.index), staging, chunk_no)
        logger.debug("events chunk %d: %d rows, %d quarantined", chunk_no, len(frame), len(reasons))


# --- duplicates --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _OtherBatches:
    """Validated files of batches this run does not replace: what its rows may duplicate."""

    root: Path
    run_batches: frozenset[str]

    def files(self, day: str) -> list[Path]:
        return [p for p in sorted((self.root / day).glob("batch=*.parquet")) if _batch_of(p) not in self.run_batches]

    def read(self, path: Path, columns: list[str]) -> pa.Table:
        try:
            table = pq.read_table(path, columns=columns)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(f"cannot read the validated file {path}: {exc}") from exc
        return table.cast(pa.schema([EVENTS_SCHEMA.field(name) for name in columns]))


def _later_repeats(schema: pdx.DataFrameSchema, earlier: int, keys: pd.DataFrame) -> np.ndarray:
    """Positions, counted after the first ``earlier`` rows (other batches' keys), of rows whose key (``schema``'s
    unique columns) occurred before them."""
    repeats = row_reasons(schema, keys, "events")
    positions = repeats.index.to_numpy(dtype=np.int64)
    return np.sort(positions[positions >= earlier]) - earlier


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """Strings as integer codes, equal exactly where the strings are (nulls are -1)."""
    return pc.fill_null(pc.dictionary_encode(column.combine_chunks()).indices, -1).to_numpy()


def _event_id_duplicates(day_dirs: list[Path], others: _OtherBatches) -> np.ndarray:
    """``seq`` of the staged rows whose event id an earlier staged row, or another batch in these dates, has.

    Run-wide rather than per date: a resent event may carry another timestamp, hence another date."""
    staged = [p for day_dir in day_dirs for p in sorted(day_dir.glob("chunk-*.parquet"))]
    ours = pa.concat_tables([pq.read_table(p, columns=["event_id", "seq"]) for p in staged])
    ours = ours.filter(pc.is_valid(ours["event_id"]))
    if ours.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    ours = ours.take(pc.sort_indices(ours, [("seq", "ascending")]))
    theirs = [others.read(p, ["event_id"])["event_id"] for day_dir in day_dirs for p in others.files(day_dir.name)]
    earlier = pa.chunked_array([chunk for column in theirs for chunk in column.chunks], type=pa.string())
    earlier = earlier.filter(pc.is_in(earlier, value_set=ours["event_id"].combine_chunks()))
    ids = pa.chunked_array([*earlier.chunks, *ours["event_id"].chunks], type=pa.string())
    repeats = _later_repeats(UNIQUE_EVENT_IDS_SCHEMA, len(earlier), pd.DataFrame({"event_id": _codes(ids)}))
    return np.sort(ours["seq"].to_numpy()[repeats])


def _content_frame(keys: pa.Table) -> pd.DataFrame:
    """The content key as numbers pandas compares exactly: ids, epoch microseconds, type codes, values."""
    return pd.DataFrame(
        {
            "user_id": keys["user_id"].to_numpy(),
            "event_timestamp": pc.cast(keys["event_timestamp"], pa.int64()).to_numpy(),
            "event_type": _codes(keys["event_type"]),
            # Adding 0.0 turns -0.0 into 0.0: the same value must give the same key.
            "value": pc.add(keys["value"], 0.0).to_numpy(),
        }
    )


def _content_duplicates(ours: pa.Table, others: _OtherBatches, day: str) -> np.ndarray:
    """Positions in ``ours`` (content keys of rows without event id) whose content an earlier row of ``ours``, or a
    row without event id of another batch, has."""
    if ours.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    user_ids = pc.unique(ours["user_id"])
    earlier = []
    for path in others.files(day):
        table = others.read(path, [*CONTENT_KEY, "event_id"])
        # Only rows of our users can match: filtering first keeps the comparison small.
        table = table.filter(pc.and_(pc.is_null(table["event_id"]), pc.is_in(table["user_id"], value_set=user_ids)))
        earlier.append(table.select(list(CONTENT_KEY)))
    keys = pa.concat_tables([*earlier, ours])
    return _later_repeats(UNIQUE_EVENTS_SCHEMA, keys.num_rows - ours.num_rows, _content_frame(keys))


def _day_duplicates(table: pa.Table, id_duplicates: np.ndarray, others: _OtherBatches, day: str) -> np.ndarray:
    """Rows of one date's staged ``table`` (input order) that are duplicates, by event id or else by content."""
    by_id = np.flatnonzero(np.isin(table["seq"].to_numpy(), id_duplicates))
    without_id = np.flatnonzero(table["event_id"].is_null().to_numpy(zero_copy_only=False))
    keys = table.select(list(CONTENT_KEY))
    # Most logs carry no event ids: then every row is compared by content, without a copy.
    keys = keys if len(without_id) == table.num_rows else keys.take(without_id)
    by_content = without_id[_content_duplicates(keys, others, day)]
    return np.union1d(by_id, by_content)


# --- writing and publishing --------------------------------------------------------------------------------


def _write_batches(table: pa.Table, out_dir: Path) -> list[Path]:
    """One date's accepted rows as a hidden temp file per batch, sorted; return the temp files."""
    pending = []
    batches = sorted(pc.unique(table["batch"]).to_pylist())
    for batch in batches:
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = table if len(batches) == 1 else table.filter(pc.equal(table["batch"], batch))
        rows = rows.select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)
        rows = rows.take(pc.sort_indices(rows, [("user_id", "ascending"), ("event_timestamp", "ascending")]))
        tmp = out_dir / f".batch={batch}.parquet.tmp"
        pq.write_table(rows.replace_schema_metadata(None), tmp)
        pending.append(tmp)
    return pending


def _write_day(
    day_dir: Path, out_root: Path, id_duplicates: np.ndarray, others: _OtherBatches, quarantine: QuarantineWriter
) -> tuple[list[Path], pd.Series, int]:
    """One date: duplicates quarantined (first in input order kept), the rest written per batch.

    Returns the temp files, the duplicates' reasons and the number of rows written."""
    table = pa.concat_tables(pq.read_table(path) for path in sorted(day_dir.glob("chunk-*.parquet")))
    rows = _day_duplicates(table, id_duplicates, others, day_dir.name)
    reasons = pd.Series(str(EventReason.DUPLICATE_EVENT), index=rows, dtype=object)
    if len(rows):
        sources = table.select(list(SOURCE_COLUMNS)).take(rows).to_pandas()
        quarantine.write(table.take(rows), reasons, sources)
        table = table.take(np.setdiff1d(np.arange(table.num_rows), rows))
    return _write_batches(table, out_root / day_dir.name), reasons, table.num_rows


def _write_days(
    staging: Path, out_root: Path, others: _OtherBatches, quarantine: QuarantineWriter, report: TableReport
) -> list[Path]:
    """Write each staged date's files as hidden temp files beside their final place; return the temp files."""
    day_dirs = sorted(staging.glob("date=*"))
    pending: list[Path] = []
    try:
        id_duplicates = _event_id_duplicates(day_dirs, others) if day_dirs else np.zeros(0, dtype=np.int64)
        for day_dir in day_dirs:
            written, reasons, rows = _write_day(day_dir, out_root, id_duplicates, others, quarantine)
            pending += written
            report.add_reasons(reasons)
            report.rows_accepted += rows
    except BaseException:
        _discard(pending)
        raise
    return pending


def _final(tmp: Path) -> Path:
    return tmp.with_name(tmp.name.removeprefix(".").removesuffix(".tmp"))


def _remove(path: Path) -> None:
    """Delete a file, and its date directory once nothing is left in it."""
    path.unlink()
    if not any(path.parent.iterdir()):
        path.parent.rmdir()


def _publish(pending: list[Path], out_root: Path, batches: list[str]) -> None:
    """Move this run's files into place, then delete its batches' files in dates they no longer produce."""
    produced = set()
    for tmp in pending:
        os.replace(tmp, _final(tmp))
        produced.add(_final(tmp))
    for batch in batches:
        for stale in sorted(out_root.glob(f"date=*/batch={batch}.parquet")):
            if stale not in produced:
                _remove(stale)


def _discard(pending: list[Path]) -> None:
    for tmp in pending:
        _remove(tmp)


# --- the gate ----------------------------------------------------------------------------------------------


def _as_utc(now: datetime | pd.Timestamp) -> pd.Timestamp:
    stamp = pd.Timestamp(now)
    return (stamp.tz_localize(UTC) if stamp.tz is None else stamp.tz_convert(UTC)).as_unit("us")


def _write_report(report: ValidationReport, paths: DataPaths) -> None:
    paths.reports.mkdir(parents=True, exist_ok=True)
    tmp = paths.reports / ".validation.json.tmp"
    tmp.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    os.replace(tmp, paths.reports / "validation.json")


@dataclass(frozen=True)
class _Outcome:
    """What a passing run publishes."""

    users: pa.Table
    history: pa.Table
    pending: list[Path]


def quarantine_file(paths: DataPaths, table: str, batch: str) -> Path:
    """Each run keeps its quarantined rows in a file of its own (named like its batch): a later day's run must not
    overwrite the rows an earlier one set aside. Re-running the same batch replaces its file."""
    return paths.quarantine / table / f"batch={batch}.parquet"


def _validate_all(
    paths: DataPaths, report: ValidationReport, catalog: EventCatalog, run: _Run, late_data_days: int, erased: Erased
) -> _Outcome:
    staging = paths.validated / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with (
            QuarantineWriter(quarantine_file(paths, "users", run.users_batch), USERS_SCHEMA.names) as users_quarantine,
            QuarantineWriter(
                quarantine_file(paths, "events", run.users_batch), EVENTS_SCHEMA.names
            ) as events_quarantine,
        ):
            accepted = validate_users(run.users_source, report.now, users_quarantine, report.users, erased)
            previous = _read_typed(paths.users, USERS_SCHEMA) if paths.users.exists() else None
            users = merge_users(previous, accepted)
            history = history_rows(accepted, _latest_history(paths.user_history, run.users_batch), report.now)
            schema = raw_events_schema(catalog, report.now, late_data_days)
            _validate_event_chunks(
                run.events, schema, _Accounts.of(users), staging, events_quarantine, report.events, erased
            )
            others = _OtherBatches(paths.events, frozenset(run.batches))
            pending = _write_days(staging, paths.events, others, events_quarantine, report.events)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.event_dates = len({tmp.parent for tmp in pending})
    return _Outcome(users, history, pending)


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
    catalog: EventCatalog,
    users_source: Path | None = None,
    events_source: Path | Sequence[Path] | None = None,
    batch: str | None = None,
    late_data_days: int = 7,
    erased: Erased = NOBODY,
) -> ValidationReport:
    """Validate raw users and events; publish this run's event batches, the merged users and their history.

    ``events_source`` is a file, a directory, or several of them (e.g. the daily drops to catch up on). ``batch``
    names the batch of event files outside a ``date=YYYY-MM-DD`` directory (and the users' history file). Raises
    EmptyInput (before writing anything) when an input or a batch has no rows, QuarantineThresholdExceeded (after
    writing the report and quarantine, without publishing) when either table's quarantined share exceeds
    ``max_quarantine_share``, and SchemaError on unusable columns. Rows of ``erased`` users are dropped unread
    (counted as forgotten), so a forgotten user does not come back with the next drop.
    """
    report = ValidationReport(_as_utc(now), max_quarantine_share, catalog.names)
    sources = [events_source] if isinstance(events_source, Path) else list(events_source or [paths.raw_events])
    run = _plan_run(sources, users_source or paths.raw_users, batch)
    report.batches = run.batches
    outcome = _validate_all(paths, report, catalog, run, late_data_days, erased)
    _scrub_sources(run, report, erased)
    _write_report(report, paths)
    if not report.passed:
        _discard(outcome.pending)
        raise QuarantineThresholdExceeded(_threshold_message(report, paths))
    write_table_atomically(outcome.users, paths.users)
    write_table_atomically(outcome.history, paths.user_history / f"batch={run.users_batch}.parquet")
    _publish(outcome.pending, paths.events, run.batches)
    logger.info(
        "validation passed: %d batch(es), last %s; %d users, %d events accepted",
        len(run.batches),
        run.batches[-1],
        report.users.rows_accepted,
        report.events.rows_accepted,
    )
    return report
