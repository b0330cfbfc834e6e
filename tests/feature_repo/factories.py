"""Feature tables shaped like `churn features build` output, with values chosen by the test."""

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churn_common.settings import DataPaths
from products.elearning import CATALOG as ELEARNING
from transformations.features import record_build
from transformations.snapshot_schema import ACCOUNT_SCHEMA

STATUS_INT = ("days_since_last_activity", "tenure_days", "active_days_trend_7d")
STATUS_FLOAT = ("watch_minutes_trend_7d",)
ACCOUNT_STR = ("plan", "country", "acquisition_channel", "account_status")
FLOAT_STEMS = {"watch_minutes", "quiz_score_mean", "amount_paid", "payment_fail_rate"}
ACCOUNT_VALID_FROM = pd.Timestamp("2025-01-01", tz="UTC").as_unit("us")


def feature_columns() -> list[str]:
    """The snapshot table's feature columns."""
    return [*ELEARNING.window_features(), *STATUS_INT, *STATUS_FLOAT]


def _is_float(column: str) -> bool:
    return column in STATUS_FLOAT or column.rsplit("_", 1)[0] in FLOAT_STEMS


def day_end(day: date) -> pd.Timestamp:
    return pd.Timestamp(day + timedelta(days=1), tz="UTC").as_unit("us")


def random_snapshots(user_ids, days: list[date], seed: int = 0, created_delay=timedelta(hours=2)) -> pd.DataFrame:
    """One row per user per day with random but type-correct values; some float features NULL. Every user is
    active in every window (the population rule scores them)."""
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product([list(user_ids), days], names=["user_id", "day"]).to_frame(index=False)
    frame = pd.DataFrame({"user_id": index["user_id"].astype("int64")})
    frame["event_timestamp"] = pd.to_datetime([day_end(d) for d in index["day"]]).astype("datetime64[us, UTC]")
    frame["created"] = frame["event_timestamp"] + created_delay
    n = len(frame)
    for column in feature_columns():
        if _is_float(column):
            values = rng.gamma(2.0, 10.0, size=n).round(3)
            values[rng.random(n) < 0.1] = np.nan
            frame[column] = values
        elif column.startswith("active_days_") and not column.endswith("trend_7d"):
            frame[column] = rng.integers(1, 8, size=n).astype("int64")
        else:
            frame[column] = rng.integers(0, 30, size=n).astype("int64")
    return frame


def random_accounts(
    user_ids, seed: int = 0, valid_from: pd.Timestamp = ACCOUNT_VALID_FROM, closed: dict | None = None
) -> pd.DataFrame:
    """One open-account row per user from ``valid_from``, plus a closing row for each ``{user_id: closed_at}``."""
    rng = np.random.default_rng(seed)
    ids = np.array(list(user_ids), dtype="int64")
    frame = pd.DataFrame({"user_id": ids, "valid_from": valid_from})
    frame["plan"] = rng.choice(["free", "paid"], size=len(ids))
    frame["country"] = rng.choice(["DE", "BR", "US"], size=len(ids))
    frame["acquisition_channel"] = rng.choice(["organic", "ads"], size=len(ids))
    frame["account_status"] = "open"
    if closed:
        closing = frame.set_index("user_id").loc[list(closed)].reset_index()
        closing["valid_from"] = [pd.Timestamp(at).as_unit("us") for at in closed.values()]
        closing["account_status"] = "closed"
        frame = pd.concat([frame, closing], ignore_index=True)
    frame = frame.sort_values(["user_id", "valid_from"], ignore_index=True)
    frame["valid_from"] = frame["valid_from"].astype("datetime64[us, UTC]")
    frame["created"] = frame["valid_from"]
    return frame[ACCOUNT_SCHEMA.names]


def with_accounts(snapshots: pd.DataFrame, accounts: pd.DataFrame) -> pd.DataFrame:
    """Each snapshot row with the account attributes valid at its time (what the feature service joins)."""
    ordered = snapshots.sort_values("event_timestamp")
    attributes = accounts.drop(columns=["created"]).sort_values("valid_from")
    joined = pd.merge_asof(
        ordered, attributes, left_on="event_timestamp", right_on="valid_from", by="user_id", direction="backward"
    )
    return joined.drop(columns=["valid_from"]).sort_index()


def write_snapshots(frame: pd.DataFrame, snapshots_dir: Path, part: str = "part-0") -> None:
    """Write one Parquet file per snapshot day, the layout the feature build produces."""
    days = (frame["event_timestamp"] - pd.Timedelta(days=1)).dt.date
    for day, rows in frame.groupby(days):
        target = snapshots_dir / f"date={day.isoformat()}"
        target.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
        pq.write_table(table, target / f"{part}.parquet")


def write_accounts(frame: pd.DataFrame, paths: DataPaths) -> None:
    target = paths.features / "user_account" / "part-0.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False).cast(ACCOUNT_SCHEMA), target)


def write_features(paths: DataPaths, snapshots: pd.DataFrame, accounts: pd.DataFrame) -> int:
    """Snapshots and accounts written as a build writes them, and the build recorded; its sequence number."""
    write_snapshots(snapshots, paths.snapshots)
    write_accounts(accounts, paths)
    days = (snapshots["event_timestamp"] - pd.Timedelta(days=1)).dt.date
    return record_build(paths, days.min(), days.max(), datetime.now(UTC), accounts["valid_from"].min())


def later_versions(snapshots: pd.DataFrame, user_ids, day: date, days_late: int, seed: int = 0) -> pd.DataFrame:
    """Later versions of the day-``day`` rows of ``user_ids``, as a build that saw late events of that day arrive
    ``days_late`` days after it writes them: the same event time, ``created`` at the end of the arrival day, other
    values."""
    on_day = snapshots[snapshots["user_id"].isin(list(user_ids)) & snapshots["event_timestamp"].eq(day_end(day))]
    versions = random_snapshots(sorted(on_day["user_id"].unique()), [day], seed=seed)
    versions["created"] = day_end(day + timedelta(days=days_late))
    return versions


def newest_versions(snapshots: pd.DataFrame, accounts: pd.DataFrame) -> pd.DataFrame:
    """Per user (the index), what a complete online store serves: the newest snapshot version (newest event time,
    then newest created) beside the newest account row (newest valid_from, then newest created)."""
    newest_snapshot = snapshots.sort_values(["event_timestamp", "created"]).groupby("user_id").tail(1)
    newest_account = accounts.sort_values(["valid_from", "created"]).groupby("user_id").tail(1)
    served = newest_snapshot.set_index("user_id").drop(columns=["created"])
    return served.join(newest_account.set_index("user_id")[list(ACCOUNT_STR)], how="outer").sort_index()
