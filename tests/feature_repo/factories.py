"""Snapshot tables shaped like `churn features build` output, with values chosen by the test."""

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from transformations.catalog import DEFAULT_CATALOG

STATUS_INT = ("days_since_last_activity", "tenure_days", "active_days_trend_7d")
STATUS_FLOAT = ("watch_minutes_trend_7d",)
STATUS_STR = ("plan", "country", "acquisition_channel")
FLOAT_STEMS = {"watch_minutes", "quiz_score_mean", "amount_paid", "payment_fail_rate"}


def feature_columns() -> list[str]:
    return [*DEFAULT_CATALOG.window_features(), *STATUS_INT, *STATUS_FLOAT, *STATUS_STR]


def _is_float(column: str) -> bool:
    return column in STATUS_FLOAT or column.rsplit("_", 1)[0] in FLOAT_STEMS


def day_end(day: date) -> pd.Timestamp:
    return pd.Timestamp(day + timedelta(days=1), tz="UTC").as_unit("us")


def random_snapshots(user_ids, days: list[date], seed: int = 0, created_delay=timedelta(hours=2)) -> pd.DataFrame:
    """One row per user per day with random but type-correct values; some float features NULL."""
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product([list(user_ids), days], names=["user_id", "day"]).to_frame(index=False)
    frame = pd.DataFrame({"user_id": index["user_id"].astype("int64")})
    frame["event_timestamp"] = pd.to_datetime([day_end(d) for d in index["day"]]).astype("datetime64[us, UTC]")
    frame["created"] = frame["event_timestamp"] + created_delay
    n = len(frame)
    for column in feature_columns():
        if column in STATUS_STR:
            frame[column] = rng.choice(["free", "paid", "DE", "BR", "ads"], size=n).astype(object)
        elif _is_float(column):
            values = rng.gamma(2.0, 10.0, size=n).round(3)
            values[rng.random(n) < 0.1] = np.nan
            frame[column] = values
        else:
            frame[column] = rng.integers(0, 30, size=n).astype("int64")
    return frame


def write_snapshots(frame: pd.DataFrame, snapshots_dir: Path, part: str = "part-0") -> None:
    """Write one Parquet file per snapshot day, the layout the feature build produces."""
    days = (frame["event_timestamp"] - pd.Timedelta(days=1)).dt.date
    for day, rows in frame.groupby(days):
        target = snapshots_dir / f"date={day.isoformat()}"
        target.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
        pq.write_table(table, target / f"{part}.parquet")
