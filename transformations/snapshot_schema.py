"""The pandera contract of the daily snapshot table, derived from an event catalogue, and the account table's schema.

The feature build checks every table against it before writing, so Feast never reads a snapshot with a
negative count, a ratio outside [0, 1], a duplicate (user, day, version) or a nanosecond / naive timestamp.
:func:`check_arrow` enforces the same rules, read off the pandera schema, on the Arrow table with
``pyarrow.compute`` (every row, no pandas copy); the build also runs pandera itself on its first day.
"""

from collections.abc import Callable

import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
from pandera.engines import pandas_engine
from pandera.errors import SchemaError as PanderaSchemaError
from pandera.errors import SchemaErrors as PanderaSchemaErrors

from churn_common.catalog import EventCatalog
from churn_common.errors import SchemaError
from churn_common.names import (
    ACCOUNT_STATUS,
    CREATED_TIMESTAMP_FIELD,
    JOIN_KEY,
    RECENCY,
    TENURE,
    TIMESTAMP_FIELD,
    VALID_FROM_FIELD,
    trend_column,
)

TS_US_UTC = pd.DatetimeTZDtype(unit="us", tz="UTC")
# Arrow-backed strings: checking the dtype is then one comparison, not a Python call per value.
STRING = pd.StringDtype("pyarrow")
ACCOUNT_ATTRIBUTES = ("plan", "country", "acquisition_channel")
# The account history the validation gate writes and the user_account feature view reads: a row holds from
# valid_from on, known from created on.
ACCOUNT_SCHEMA = pyarrow.schema(
    [
        (JOIN_KEY, pyarrow.int64()),
        (VALID_FROM_FIELD, pyarrow.timestamp("us", tz="UTC")),
        (CREATED_TIMESTAMP_FIELD, pyarrow.timestamp("us", tz="UTC")),
        *((name, pyarrow.string()) for name in ACCOUNT_ATTRIBUTES),
        (ACCOUNT_STATUS, pyarrow.string()),
    ]
)


CREATED_AFTER_END = f"{CREATED_TIMESTAMP_FIELD} >= {TIMESTAMP_FIELD}"


def snapshot_columns(catalog: EventCatalog) -> list[str]:
    """Every snapshot column, in file order."""
    return [
        JOIN_KEY,
        TIMESTAMP_FIELD,
        CREATED_TIMESTAMP_FIELD,
        *catalog.window_features(),
        RECENCY,
        TENURE,
        *(trend_column(stem) for stem in catalog.trend_features),
    ]


def integer_stems(catalog: EventCatalog) -> set[str]:
    """Stems that are counts (int64); every other stem is a float64 value aggregate or ratio."""
    return {"active_days", *(t.count_feature for t in catalog.event_types)}


def _nonnegative_int() -> pa.Column:
    return pa.Column("int64", pa.Check.ge(0), nullable=False)


def _stem_columns(catalog: EventCatalog, window: int) -> dict[str, pa.Column]:
    columns = {f"active_days_{window}d": pa.Column("int64", pa.Check.in_range(0, window), nullable=False)}
    for event_type in catalog.event_types:
        columns[f"{event_type.count_feature}_{window}d"] = _nonnegative_int()
        if event_type.value_feature is None:
            continue
        name = f"{event_type.value_feature}_{window}d"
        if event_type.value_aggregate == "mean":
            bounds = pa.Check.in_range(event_type.value_min, event_type.value_max)
            columns[name] = pa.Column("float64", bounds, nullable=True)
        else:
            # A sum of values that are each >= value_min >= 0 cannot go negative.
            checks = [pa.Check.ge(0)] if event_type.value_min >= 0 else []
            columns[name] = pa.Column("float64", checks, nullable=False)
    for ratio in catalog.ratios:
        columns[f"{ratio.feature}_{window}d"] = pa.Column("float64", pa.Check.in_range(0, 1), nullable=True)
    return columns


def _trend_columns(catalog: EventCatalog) -> dict[str, pa.Column]:
    integers = integer_stems(catalog)
    columns = {}
    for stem in catalog.trend_features:
        nullable = stem not in integers and not _is_sum_stem(catalog, stem)
        dtype = "int64" if stem in integers else "float64"
        columns[trend_column(stem)] = pa.Column(dtype, nullable=nullable)
    return columns


def _is_sum_stem(catalog: EventCatalog, stem: str) -> bool:
    return any(t.value_feature == stem and t.value_aggregate == "sum" for t in catalog.event_types)


def snapshot_schema(catalog: EventCatalog) -> pa.DataFrameSchema:
    timestamp = pa.Column(TS_US_UTC, nullable=False)
    columns: dict[str, pa.Column] = {
        JOIN_KEY: pa.Column("int64", nullable=False),
        TIMESTAMP_FIELD: timestamp,
        CREATED_TIMESTAMP_FIELD: timestamp,
    }
    for window in catalog.windows:
        columns.update(_stem_columns(catalog, window))
    columns[RECENCY] = _nonnegative_int()
    columns[TENURE] = _nonnegative_int()
    columns.update(_trend_columns(catalog))
    created_after_end = pa.Check(
        lambda frame: frame[CREATED_TIMESTAMP_FIELD] >= frame[TIMESTAMP_FIELD], name=CREATED_AFTER_END
    )
    return pa.DataFrameSchema(
        columns,
        checks=[created_after_end],
        # One row per user, day and version. Listed least significant first: the build writes day by day, users
        # ascending, versions in created order, which _unique proves with one comparison per row.
        unique=[CREATED_TIMESTAMP_FIELD, JOIN_KEY, TIMESTAMP_FIELD],
        strict=True,
        ordered=True,
        name="user_daily_snapshots",
    )


def to_frame(table: pyarrow.Table) -> pd.DataFrame:
    """The pandas view of a snapshot Arrow table that :func:`validate_snapshots` expects."""
    return table.to_pandas(types_mapper={pyarrow.string(): STRING}.get)


def validate_snapshots(frame: pd.DataFrame, schema: pa.DataFrameSchema) -> None:
    """Raise :class:`SchemaError` naming every failed check when ``frame`` breaks ``schema``."""
    try:
        # In place: the frame is a throw-away copy already, and copying it again doubles the memory.
        schema.validate(frame, lazy=True, inplace=True)
    except PanderaSchemaErrors as exc:
        failures = exc.failure_cases[["column", "check"]].drop_duplicates().head(20)
        listed = "; ".join(f"{row.column}: {row.check}" for row in failures.itertuples())
        raise SchemaError(f"snapshot table breaks its schema ({len(exc.failure_cases)} failures): {listed}") from exc
    except PanderaSchemaError as exc:
        raise SchemaError(f"snapshot table breaks its schema: {exc}") from exc


# ------------------------------------------------------------------------- the same rules, vectorised

_ARROW_TYPES = {
    pandas_engine.Engine.dtype(dtype): arrow_types
    for dtype, arrow_types in [
        ("int64", {pyarrow.int64()}),
        ("float64", {pyarrow.float64()}),
        (TS_US_UTC, {pyarrow.timestamp("us", tz="UTC")}),
        # to_frame makes `string` STRING and `large_string` an object column of str, which pandera accepts too.
        (STRING, {pyarrow.string(), pyarrow.large_string()}),
    ]
}
_COLUMN_CHECKS: dict[str, Callable[[pyarrow.ChunkedArray, dict], pyarrow.ChunkedArray]] = {
    "in_range": lambda values, bounds: pc.and_(
        (pc.greater_equal if bounds["include_min"] else pc.greater)(values, bounds["min_value"]),
        (pc.less_equal if bounds["include_max"] else pc.less)(values, bounds["max_value"]),
    ),
    "greater_than_or_equal_to": lambda values, bounds: pc.greater_equal(values, bounds["min_value"]),
}
_TABLE_CHECKS: dict[str, Callable[[pyarrow.Table], pyarrow.ChunkedArray]] = {
    CREATED_AFTER_END: lambda table: pc.greater_equal(table[CREATED_TIMESTAMP_FIELD], table[TIMESTAMP_FIELD]),
}


def check_arrow(table: pyarrow.Table, schema: pa.DataFrameSchema) -> None:
    """Raise :class:`SchemaError` when ``table`` breaks a rule of ``schema``, where
    ``validate_snapshots(to_frame(table), schema)`` would, without the pandas copy."""
    _require_vectorised(schema)
    expected = list(schema.columns)
    if table.column_names != expected:  # strict and ordered
        raise SchemaError(f"snapshot table breaks its schema: columns {table.column_names}, expected {expected}")
    failures = [failure for name, column in schema.columns.items() for failure in _column_failures(table[name], column)]
    # The table-wide rules compare columns, which only makes sense once their types are right.
    failures = failures or [check.name for check in schema.checks if not _all(_TABLE_CHECKS[check.name](table))]
    if schema.unique and not _unique(table, schema.unique):
        failures.append(f"{schema.unique}: unique")
    if failures:
        raise SchemaError(f"snapshot table breaks its schema ({len(failures)} failures): {'; '.join(failures[:20])}")


def _require_vectorised(schema: pa.DataFrameSchema) -> None:
    """A rule without a vectorised form must fail loudly, never be skipped."""
    columns = schema.columns.values()
    unknown = [str(column.dtype) for column in columns if column.dtype not in _ARROW_TYPES]
    unknown += [check.name for column in columns for check in column.checks if check.name not in _COLUMN_CHECKS]
    unknown += [check.name for check in schema.checks if check.name not in _TABLE_CHECKS]
    if unknown:
        raise TypeError(f"no vectorised form of {unknown}")


def _column_failures(values: pyarrow.ChunkedArray, column: pa.Column) -> list[str]:
    # pandas turns an integer column with nulls into float64.
    if values.type not in _ARROW_TYPES[column.dtype] or (pyarrow.types.is_integer(values.type) and values.null_count):
        return [f"{column.name}: dtype('{column.dtype}'), found {values.type}"]
    # pandas counts NaN as missing; pandera's checks look at the present values only.
    missing = pc.is_null(values, nan_is_null=True)
    if not column.nullable and pc.any(missing).as_py():
        return [f"{column.name}: not_nullable"]
    return [
        f"{column.name}: {check.error}"
        for check in column.checks
        if not _all(pc.or_kleene(missing, _COLUMN_CHECKS[check.name](values, check.statistics)))
    ]


def _unique(table: pyarrow.Table, keys: list[str]) -> bool:
    """Whether no two rows share their ``keys``. The build's tables run day by day with ascending user ids, i.e.
    strictly sorted by the keys taken in reverse order, which one comparison per row proves; others are hashed."""
    if table.num_rows < 2 or _strictly_sorted(table, keys[::-1]):
        return True
    return table.group_by(keys).aggregate([]).num_rows == table.num_rows


def _strictly_sorted(table: pyarrow.Table, keys: list[str]) -> bool:
    """Whether every row comes strictly after the one before it, ordering by ``keys`` (most significant first)."""
    before, after = table.slice(0, table.num_rows - 1), table.slice(1)
    later = pc.greater(after[keys[-1]], before[keys[-1]])
    for key in reversed(keys[:-1]):
        later = pc.or_(pc.greater(after[key], before[key]), pc.and_(pc.equal(after[key], before[key]), later))
    return _all(later)


def _all(flags: pyarrow.ChunkedArray) -> bool:
    # An empty table passes every check, as in pandera.
    return pc.all(flags).as_py() is not False
