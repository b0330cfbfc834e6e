"""The pandera contract of the daily snapshot table, derived from an event catalogue.

The feature build checks every table against it before writing, so Feast never reads a snapshot with a
negative count, a ratio outside [0, 1], a duplicate (user, day) or a nanosecond / naive timestamp.
"""

import pandas as pd
import pandera.pandas as pa
import pyarrow
from pandera.errors import SchemaError as PanderaSchemaError
from pandera.errors import SchemaErrors as PanderaSchemaErrors

from churn_common.errors import SchemaError
from churn_common.names import CREATED_TIMESTAMP_FIELD, JOIN_KEY, TIMESTAMP_FIELD
from transformations.catalog import EventCatalog

TS_US_UTC = pd.DatetimeTZDtype(unit="us", tz="UTC")
# Arrow-backed strings: checking the dtype is then one comparison, not a Python call per value.
STRING = pd.StringDtype("pyarrow")
USER_ATTRIBUTES = ("plan", "country", "acquisition_channel")
RECENCY = "days_since_last_activity"
TENURE = "tenure_days"


def trend_column(stem: str) -> str:
    return f"{stem}_trend_7d"


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
        *USER_ATTRIBUTES,
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
    columns.update({name: pa.Column(STRING, nullable=True) for name in USER_ATTRIBUTES})
    created_after_end = pa.Check(
        lambda frame: frame[CREATED_TIMESTAMP_FIELD] >= frame[TIMESTAMP_FIELD],
        error=f"{CREATED_TIMESTAMP_FIELD} >= {TIMESTAMP_FIELD}",
    )
    return pa.DataFrameSchema(
        columns,
        checks=[created_after_end],
        unique=[JOIN_KEY, TIMESTAMP_FIELD],
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
