"""The materialisation job the CronJob runs: load the newest snapshots into the online store.

Feast's ``materialize-incremental`` starts its first run at ``now - ttl``, which would skip every older
snapshot; the first run is therefore seeded with an explicit window (default: from the oldest snapshot).
Afterwards each run continues from where the previous one ended. Results are exported as Prometheus metrics
to a textfile (node-exporter textfile collector) and, when configured, pushed to a Pushgateway.
"""

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from feast import FeatureStore
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from churn_common.errors import DataError
from churn_common.names import TIMESTAMP_FIELD
from churn_common.settings import Settings
from churn_common.store import feature_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaterializationReport:
    project: str
    start: datetime | None
    end: datetime
    seeded: bool
    rows_written: int
    newest_feature_timestamp: datetime | None
    duration_seconds: float

    def as_dict(self) -> dict[str, object]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


def _snapshot_glob(settings: Settings) -> str:
    return str(settings.paths.snapshots / "*" / "*.parquet")


def _snapshot_stats(settings: Settings, start: datetime, end: datetime) -> tuple[int, datetime | None]:
    """Rows written (Feast pulls the latest row per user in [start, end]) and the newest snapshot among them."""
    query = f"""
        SELECT count(DISTINCT user_id), max({TIMESTAMP_FIELD})
        FROM read_parquet(?) WHERE {TIMESTAMP_FIELD} BETWEEN ? AND ?
    """
    with duckdb.connect() as con:
        rows, newest = con.execute(query, [_snapshot_glob(settings), start, end]).fetchone()
    return int(rows), newest


def _oldest_snapshot(settings: Settings) -> datetime:
    if not any(settings.paths.snapshots.glob("*/*.parquet")):
        raise DataError(f"no feature snapshots under {settings.paths.snapshots}; run `churn features build`")
    with duckdb.connect() as con:
        (oldest,) = con.execute(
            f"SELECT min({TIMESTAMP_FIELD}) FROM read_parquet(?)", [_snapshot_glob(settings)]
        ).fetchone()
    return oldest


def _already_materialized(store: FeatureStore) -> datetime | None:
    """The end of the last run that every view completed, or None before the first run."""
    ends = [max((i[1] for i in fv.materialization_intervals), default=None) for fv in store.list_feature_views()]
    return None if not ends or None in ends else min(ends)


def materialize(
    settings: Settings, end: datetime | None = None, seed_start: datetime | None = None
) -> MaterializationReport:
    end = end or datetime.now(UTC)
    store = feature_store(settings)
    previous_end = _already_materialized(store)
    began = time.perf_counter()
    if previous_end is None:
        start = seed_start or _oldest_snapshot(settings)
        logger.info("first materialisation of %s: seeding %s .. %s", store.project, start, end)
        store.materialize(start_date=start, end_date=end)
    else:
        start = previous_end
        logger.info("incremental materialisation of %s: %s .. %s", store.project, start, end)
        store.materialize_incremental(end_date=end)
    rows, newest = _snapshot_stats(settings, start, end)
    report = MaterializationReport(
        store.project, start, end, previous_end is None, rows, newest, time.perf_counter() - began
    )
    logger.info("materialised %d users, newest snapshot %s, in %.1fs", rows, newest, report.duration_seconds)
    return report


def export_metrics(report: MaterializationReport, textfile: Path, pushgateway: str = "") -> CollectorRegistry:
    registry = CollectorRegistry()
    labels = {"project": report.project}

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, list(labels), registry=registry).labels(**labels).set(value)

    gauge("churn_materialize_rows_written", "Entity rows written to the online store", report.rows_written)
    gauge("churn_materialize_duration_seconds", "Wall time of the last materialisation", report.duration_seconds)
    gauge("churn_materialize_last_success_timestamp_seconds", "When the last run finished", time.time())
    newest = report.newest_feature_timestamp
    gauge(
        "churn_materialize_newest_feature_timestamp_seconds",
        "Snapshot time of the newest feature row materialised (0: none)",
        newest.timestamp() if newest else 0.0,
    )
    textfile.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(textfile), registry)
    if pushgateway:
        push_to_gateway(pushgateway, job="churn-materialize", registry=registry)
    return registry
