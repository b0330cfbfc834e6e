"""Factories for the frames the stages exchange, in their validated (typed) form."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

UTC_US = "datetime64[us, UTC]"


def utc(*args: int) -> pd.Timestamp:
    return pd.Timestamp(datetime(*args, tzinfo=UTC)).as_unit("us")


def make_users(
    n: int = 3,
    *,
    signup: datetime | pd.Timestamp | None = None,
    first_id: int = 1,
    closed_at: list[pd.Timestamp | None] | None = None,
    plan: str = "free",
) -> pd.DataFrame:
    users = pd.DataFrame(
        {
            "user_id": np.arange(first_id, first_id + n, dtype="int64"),
            "signup_at": pd.Series([pd.Timestamp(signup or utc(2026, 1, 1))] * n).astype(UTC_US),
            "country": "DE",
            "plan": plan,
            "acquisition_channel": "organic",
            "closed_at": pd.Series(closed_at or [None] * n, dtype=UTC_US),
        }
    )
    return users


def make_events(rows: list[tuple[int, pd.Timestamp, str, float | None]], *, ingest_delay_s: int = 60):
    """Events from ``(user_id, event_timestamp, event_type, value)`` tuples."""
    frame = pd.DataFrame(rows, columns=["user_id", "event_timestamp", "event_type", "value"])
    frame["user_id"] = frame["user_id"].astype("int64")
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True).astype(UTC_US)
    frame["value"] = frame["value"].astype("float64")
    frame["ingested_at"] = frame["event_timestamp"] + timedelta(seconds=ingest_delay_s)
    return frame


def write_raw(paths, users: pd.DataFrame, events: pd.DataFrame) -> None:
    """Write hand-built raw users and events (typed or string columns) where the validation gate reads them."""
    paths.raw_events.mkdir(parents=True, exist_ok=True)
    users.to_parquet(paths.raw_users, index=False)
    events.to_parquet(paths.raw_events / "part-00000.parquet", index=False)


def account_history(users: pd.DataFrame) -> pd.DataFrame:
    """The account history the gate writes for users seen for the first time: open from signup, closed from
    closed_at."""
    attributes = ["plan", "country", "acquisition_channel"]
    opened = users.assign(valid_from=users["signup_at"], account_status="open")
    closed = users[users["closed_at"].notna()].assign(valid_from=lambda u: u["closed_at"], account_status="closed")
    history = pd.concat([opened, closed], ignore_index=True)
    history["created"] = history["valid_from"]
    history = history[["user_id", "valid_from", "created", *attributes, "account_status"]]
    return history.astype({name: "string" for name in [*attributes, "account_status"]})


def write_validated(paths, users: pd.DataFrame | None, events: pd.DataFrame, *, batch: str = "b0") -> None:
    """Write validated users (when given, with their account history) and events as the gate does:
    ``events/date=YYYY-MM-DD/batch=<batch>.parquet`` per UTC day of ``event_timestamp``, microsecond UTC
    timestamps."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transformations.snapshot_schema import ACCOUNT_SCHEMA

    if users is not None:
        paths.users.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(users, preserve_index=False), paths.users)
        paths.user_history.mkdir(parents=True, exist_ok=True)
        history = pa.Table.from_pandas(account_history(users), preserve_index=False).cast(ACCOUNT_SCHEMA)
        pq.write_table(history, paths.user_history / f"batch={batch}.parquet")
    for day, rows in events.groupby(events["event_timestamp"].dt.strftime("%Y-%m-%d")):
        partition = paths.events / f"date={day}"
        partition.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
        pq.write_table(table, partition / f"batch={batch}.parquet")
