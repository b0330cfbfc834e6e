"""What the console shows beside a prediction, read from the files the daily jobs write: a user's recent daily
snapshots (the offline store's, as known at the service clock) and the batch high-risk list."""

import csv
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import duckdb
from pydantic import BaseModel, Field

from churn_common.catalog import EventCatalog, feature_descriptions
from churn_common.names import CREATED_TIMESTAMP_FIELD, JOIN_KEY, TIMESTAMP_FIELD
from churn_common.settings import DataPaths

DAY_DIRECTORY = "date="


class ActivitySeries(BaseModel):
    feature: str
    description: str
    values: list[float | None] = Field(description="One per day of Activity.days; null: no snapshot that day")


class Activity(BaseModel):
    days: list[date] = Field(description="Snapshot days, oldest first")
    series: list[ActivitySeries]


def activity_features(catalog: EventCatalog) -> list[str]:
    """Active days and each activity event's count over the catalogue's shortest window: what a person reads as
    "how much have they been doing lately"."""
    window = min(catalog.windows)
    stems = ["active_days", *(catalog.by_name(name).count_feature for name in catalog.activity_types)]
    return [f"{stem}_{window}d" for stem in stems]


def _snapshot_files(paths: DataPaths, first: date, last: date) -> list[str]:
    days = (d for d in paths.snapshots.glob(f"{DAY_DIRECTORY}*") if d.is_dir())
    chosen = [d for d in days if first.isoformat() <= d.name.removeprefix(DAY_DIRECTORY) <= last.isoformat()]
    return [str(f) for d in sorted(chosen) for f in sorted(d.glob("*.parquet"))]


def read_activity(paths: DataPaths, catalog: EventCatalog, user_id: int, now: datetime, days: int) -> Activity:
    """The user's snapshots of the last ``days`` days, each day's newest version known at ``now``."""
    features = activity_features(catalog)
    descriptions = feature_descriptions(catalog)
    files = _snapshot_files(paths, (now - timedelta(days=days)).date(), now.date())
    rows = _latest_versions(files, features, user_id, now) if files else []
    return Activity(
        days=[row[0] for row in rows],
        series=[
            ActivitySeries(feature=name, description=descriptions[name], values=[row[1 + i] for row in rows])
            for i, name in enumerate(features)
        ],
    )


def _latest_versions(files: list[str], features: list[str], user_id: int, now: datetime) -> list[tuple]:
    selected = ", ".join(f'"{name}"' for name in features)
    sql = f"""
        SELECT CAST({TIMESTAMP_FIELD} AS DATE) AS day, {selected}
        FROM read_parquet(?, union_by_name = true)
        WHERE {JOIN_KEY} = ? AND {TIMESTAMP_FIELD} <= ? AND {CREATED_TIMESTAMP_FIELD} <= ?
        QUALIFY row_number() OVER (PARTITION BY {TIMESTAMP_FIELD} ORDER BY {CREATED_TIMESTAMP_FIELD} DESC) = 1
        ORDER BY day
    """
    with duckdb.connect() as con:
        return con.execute(sql, [files, user_id, now, now]).fetchall()


class HighRiskRow(BaseModel):
    rank: int
    user_id: int
    churn_probability: float
    why: str = Field(description="The reasons in plain words")
    features_as_of: datetime | None
    model_version: str


class HighRiskPage(BaseModel):
    scoring_date: date | None = Field(description="The date batch scoring wrote the list for; null: none yet")
    total: int = Field(description="Rows matching the search")
    page: int
    page_size: int
    rows: list[HighRiskRow]


def _newest_list(paths: DataPaths, today: date) -> tuple[date, Path] | None:
    lists = []
    for path in paths.reports.glob("high_risk/date=*.csv"):
        day = date.fromisoformat(path.stem.removeprefix(DAY_DIRECTORY))
        if day <= today:
            lists.append((day, path))
    return max(lists, default=None)


@lru_cache(maxsize=4)
def _rows(path: Path, modified_ns: int) -> tuple[HighRiskRow, ...]:
    """A list's rows, read once per version of the file (batch scoring replaces it atomically)."""
    with path.open(newline="") as handle:
        return tuple(
            HighRiskRow.model_validate({**row, "features_as_of": row["features_as_of"] or None})
            for row in csv.DictReader(handle)
        )


def _matches(row: HighRiskRow, query: str) -> bool:
    if query.isdigit():
        return str(row.user_id).startswith(query)
    return query.casefold() in row.why.casefold()


def high_risk_page(paths: DataPaths, today: date, query: str, page: int, page_size: int) -> HighRiskPage:
    newest = _newest_list(paths, today)
    if newest is None:
        return HighRiskPage(scoring_date=None, total=0, page=page, page_size=page_size, rows=[])
    day, path = newest
    rows = _rows(path, path.stat().st_mtime_ns)
    query = query.strip()
    matching = [row for row in rows if _matches(row, query)] if query else list(rows)
    start = (page - 1) * page_size
    return HighRiskPage(
        scoring_date=day, total=len(matching), page=page, page_size=page_size, rows=matching[start : start + page_size]
    )
