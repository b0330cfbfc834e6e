"""The materialisation job: bring the online store up to what the feature build last wrote, and prove it did.

It follows the builds (``features/builds/<seq>.json``), not the clock: the online store keeps a watermark of the
build it holds, and each run loads what the builds after it rewrote: the snapshot days they rebuilt and the account
rows they changed. A late build, a missed day or a re-run are therefore picked up by the next run, whatever its
time. A store that lost its data (a Redis restarted empty, a deleted SQLite file) has lost its watermark too, or
fails a sample check of what the newest build wrote, and is refilled: every view's latest rows within its ttl
(all account rows). Feast's ``materialize-incremental`` would instead load event-time windows after the last
wall-clock run, and skip a build that landed after it.

Rows are written by the profile's Feast batch engine, without Feast's record of materialisation intervals (this
job keeps its own watermark; Feast's intervals make every later ``feast plan`` report each view as updated). Then
the online store is read back: the run reports the users whose newest row the store now holds, and fails when it
holds fewer than the offline store says it should. Results go to a Prometheus textfile (and a Pushgateway when
configured); a run with nothing new changes no figure but its own.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
from feast import FeatureStore, FeatureView
from feast.errors import FeastObjectNotFoundException
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.provider import get_provider
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from churn_common.errors import ConfigurationError, DataError, FeatureStoreError
from churn_common.names import JOIN_KEY
from churn_common.settings import Settings
from churn_common.store import feature_store
from jobs.online_state import OnlineState, Watermark, online_state
from transformations.features import BuildRecord, read_builds

logger = logging.getLogger(__name__)

Mode = Literal["incremental", "refill", "noop"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SAMPLE_USERS = 200


@dataclass(frozen=True)
class SourceRun:
    """One source's part of a run: the window loaded, and the users the store must and does hold."""

    source: str
    views: tuple[str, ...]
    start: datetime
    end: datetime
    expected: int
    received: int
    newest: datetime | None


@dataclass(frozen=True)
class MaterializationReport:
    project: str
    profile: str
    mode: Mode
    reason: str
    build: int
    sources: list[SourceRun] = field(default_factory=list)
    newest_feature_timestamp: datetime | None = None
    duration_seconds: float = 0.0
    users_written: int = 0
    """Users whose newest rows the run wrote and read back, each counted once: a user's row of every source lives
    in one entry of the online store (one Redis hash)."""

    def as_dict(self) -> dict[str, object]:
        def plain(value: object) -> object:
            return value.isoformat() if isinstance(value, datetime) else value

        body = {key: plain(value) for key, value in asdict(self).items() if key != "sources"}
        body["sources"] = [{k: plain(v) for k, v in asdict(run).items()} for run in self.sources]
        return body


@dataclass(frozen=True)
class _Window:
    start: datetime
    end: datetime


# --- what the store and the builds say ---------------------------------------------------------------------------


def _views_by_source(store: FeatureStore, settings: Settings) -> dict[str, list[FeatureView]]:
    try:
        views = [view for view in store.list_feature_views() if view.online]
    except (FeastObjectNotFoundException, FileNotFoundError) as exc:
        raise ConfigurationError(_no_views(store, settings)) from exc
    if not views:
        raise ConfigurationError(_no_views(store, settings))
    grouped: dict[str, list[FeatureView]] = {}
    for view in views:
        grouped.setdefault(view.batch_source.name, []).append(view)
    return grouped


def _no_views(store: FeatureStore, settings: Settings) -> str:
    return (
        f"the {settings.feast_profile} profile's registry ({store.config.registry.path}) holds no feature views for "
        f"project {store.project}: run `churn features apply` (or `feast apply`) with this profile first"
    )


def _source_glob(view: FeatureView) -> str:
    return view.batch_source.path


def _newest_rows(view: FeatureView, end: datetime, start: datetime = EPOCH) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the event time of their newest row in [start, end], in whole seconds (stores keep whole seconds):
    what the online store should hold."""
    source = view.batch_source
    query = f"""
        SELECT {JOIN_KEY}, epoch_us(max({source.timestamp_field})) // 1000000 FROM read_parquet(?)
        WHERE {source.timestamp_field} BETWEEN ? AND ? GROUP BY ALL ORDER BY 1
    """
    try:
        with duckdb.connect() as con:
            rows = con.execute(query, [_source_glob(view), start, end]).fetchnumpy()
    except duckdb.IOException as exc:
        raise DataError(
            f"cannot read {source.name} at {_source_glob(view)}: {exc}; run `churn features build`"
        ) from exc
    return rows[JOIN_KEY].astype(np.int64), rows[list(rows)[1]].astype(np.int64)


def _holds(state: OnlineState, views: Sequence[FeatureView], users: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Which of ``users`` the store holds, for every view, at the expected event time or later."""
    if users.size == 0:
        return np.zeros(0, dtype=bool)
    online = state.timestamps([view.name for view in views], users)
    return (online >= seconds[:, None]).all(axis=1)


def _sample_missing(state: OnlineState, views: Sequence[FeatureView], held_until: datetime) -> tuple[int, int]:
    """(lacking, sampled): of a sample of the users whose newest row up to ``held_until`` (the newest the watermark
    says the store holds: rows of later builds may be missing yet) the store should hold, how many it lacks. For
    expiring views, only of rows within the ttl before it (a refill loads no older ones)."""
    ttl = min((view.ttl for view in views if view.ttl), default=None)
    users, seconds = _newest_rows(views[0], held_until, held_until - ttl if ttl else EPOCH)
    if users.size == 0:
        return 0, 0
    pick = np.linspace(0, users.size - 1, min(SAMPLE_USERS, users.size)).astype(int)
    return int((~_holds(state, views, users[pick], seconds[pick])).sum()), pick.size


# --- deciding what to load -----------------------------------------------------------------------------------------


def _rewritten_from(source: str, builds: list[BuildRecord]) -> datetime | None:
    """The earliest event time among the source's rows these builds added or changed (None: they changed none)."""
    return min((moment for build in builds if (moment := build.changed_since(source)) is not None), default=None)


def _decide(
    state: OnlineState,
    watermark: Watermark | None,
    builds: list[BuildRecord],
    groups: dict[str, list[FeatureView]],
) -> tuple[Mode, str, list[BuildRecord]]:
    """Refill, or load what the builds after the watermark's rewrote (and whatever became due since its end)."""
    latest = builds[-1].seq
    if watermark is None:
        return "refill", "the online store holds no watermark (first run, or it lost its data)", builds
    if watermark.build > latest:
        return "refill", f"the online store holds build {watermark.build}, newer than the last build {latest}", builds
    later = [build for build in builds if build.seq > watermark.build]
    for source, views in groups.items():
        held_until = watermark.newest_of(source)
        if held_until is None:
            return "refill", f"the online store's watermark names no {source} rows", builds
        missing, sampled = _sample_missing(state, views, held_until)
        if missing:
            reason = f"the online store lacks {missing} of {sampled} sampled users' newest {source} rows"
            return "refill", reason, builds
    if not later:
        return "incremental", f"no build after {latest}: rows due since {watermark.end}", []
    return "incremental", f"builds {watermark.build + 1}..{latest}", later


def _window(
    source: str,
    views: Sequence[FeatureView],
    mode: Mode,
    builds: list[BuildRecord],
    end: datetime,
    watermark: Watermark | None,
) -> _Window | None:
    """The event-time window to load for one source: from the earliest row the new builds rewrote, or the end of
    the last run if earlier (rows that became due since, e.g. a run that stopped short of a build's newest rows);
    for a refill, the ttl (everything, for views without one) before the newest row."""
    ttls = [view.ttl for view in views]
    if mode == "refill":
        if not all(ttls):
            return _Window(EPOCH, end)
        _, seconds = _newest_rows(views[0], end)
        newest = datetime.fromtimestamp(int(seconds.max()), UTC) if seconds.size else end
        return _Window(newest - max(ttls), end)
    starts = [moment] if (moment := _rewritten_from(source, builds)) else []
    if watermark is not None and watermark.loaded_until < end:
        starts.append(watermark.loaded_until)
    return _Window(min(starts), end) if starts else None


# --- loading and checking ----------------------------------------------------------------------------------------


def _ensure_tables(store: FeatureStore, views: Sequence[FeatureView]) -> None:
    """Create the views' online tables where they are missing, as ``feast apply`` would on a new store.

    A deleted SQLite file comes back without them, and ``feast apply`` does not recreate them: the registry still
    records them as deployed. The registry is left as it is, so ``feast plan`` stays clean. Redis has no tables."""
    online_store = get_provider(store.config).online_store
    online_store.update(
        store.config,
        tables_to_delete=[],
        tables_to_keep=list(views),
        entities_to_delete=[],
        entities_to_keep=[],
        partial=True,
    )


def _load(store: FeatureStore, views: Sequence[FeatureView], window: _Window) -> None:
    """Write the views' newest rows in the window through the profile's batch engine (Feast's own code path of
    ``feast materialize``, without recording materialisation intervals in the registry)."""
    engine = get_provider(store.config).batch_engine
    tasks = [MaterializationTask(store.project, view, window.start, window.end, only_latest=True) for view in views]
    for job in engine.materialize(store.registry, tasks):
        if job.status() != MaterializationJobStatus.SUCCEEDED:
            error = job.error()
            raise FeatureStoreError(f"materialising {job.job_id()} failed: {error}") from error


def _run_source(
    store: FeatureStore, state: OnlineState, source: str, views: list[FeatureView], window: _Window
) -> tuple[SourceRun, np.ndarray]:
    """Load one source and check the store received it; the run and the users it wrote."""
    logger.info("loading %s (%s) from %s to %s", source, ", ".join(v.name for v in views), window.start, window.end)
    _load(store, views, window)
    users, seconds = _newest_rows(views[0], window.end, window.start)
    received = int(_holds(state, views, users, seconds).sum())
    if received < users.size:
        raise FeatureStoreError(
            f"the online store holds the newest {source} rows of {received} of {users.size} users after loading "
            f"{window.start}..{window.end}: it did not receive what was written"
        )
    newest = datetime.fromtimestamp(int(seconds.max()), UTC) if seconds.size else None
    run = SourceRun(source, tuple(v.name for v in views), window.start, window.end, users.size, received, newest)
    return run, users


def _run_sources(
    store: FeatureStore,
    state: OnlineState,
    groups: dict[str, list[FeatureView]],
    mode: Mode,
    todo: list[BuildRecord],
    end: datetime,
    previous: Watermark | None,
) -> tuple[list[SourceRun], int]:
    """Every source's run, and how many distinct users they wrote together."""
    runs, written = [], np.zeros(0, dtype=np.int64)
    _ensure_tables(store, [view for views in groups.values() for view in views])
    for source, views in groups.items():
        window = _window(source, views, mode, todo, end, previous)
        if window is not None:
            run, users = _run_source(store, state, source, views, window)
            runs.append(run)
            written = np.union1d(written, users)
    return runs, int(written.size)


def _newest(runs: Sequence[SourceRun], previous: Watermark | None) -> dict[str, str]:
    newest = dict(previous.newest) if previous else {}
    for run in runs:
        if run.newest is not None:
            current = newest.get(run.source)
            if current is None or datetime.fromisoformat(current) < run.newest:
                newest[run.source] = run.newest.isoformat()
    return newest


def materialize(settings: Settings, end: datetime | None = None) -> MaterializationReport:
    """Bring the online store up to the newest build; raises when a step fails or the store did not receive it."""
    began = time.perf_counter()
    end = end or settings.clock()
    store = feature_store(settings)
    groups = _views_by_source(store, settings)
    builds = read_builds(settings.paths)
    if not builds:
        raise DataError(f"no feature build recorded under {settings.paths.builds}; run `churn features build`")
    state = online_state(store)
    previous = state.watermark()
    mode, reason, todo = _decide(state, previous, builds, groups)
    logger.info("materialisation of %s (%s): %s, %s", store.project, settings.feast_profile, mode, reason)
    runs, users_written = _run_sources(store, state, groups, mode, todo, end, previous)
    if mode == "incremental" and not todo and not users_written:
        mode, reason, runs = "noop", f"the online store already holds build {builds[-1].seq}; nothing became due", []
    loaded_until = max(end, previous.loaded_until) if previous and mode != "refill" else end
    watermark = Watermark(
        builds[-1].seq, _newest(runs, previous), loaded_until.isoformat(), settings.clock().isoformat()
    )
    state.set_watermark(watermark)
    snapshots = _snapshot_source(groups)
    newest = watermark.newest_of(snapshots) if snapshots else None
    duration = time.perf_counter() - began
    report = MaterializationReport(
        store.project, settings.feast_profile, mode, reason, watermark.build, runs, newest, duration, users_written
    )
    logger.info("online store holds build %d: %d users written", report.build, report.users_written)
    return report


def _snapshot_source(groups: dict[str, list[FeatureView]]) -> str | None:
    """The source whose views expire: its newest row is the feature age operators watch."""
    return next((source for source, views in groups.items() if all(v.ttl for v in views)), None)


# --- metrics -------------------------------------------------------------------------------------------------------


def export_metrics(report: MaterializationReport, textfile: Path, pushgateway: str = "") -> CollectorRegistry:
    registry = CollectorRegistry()
    project = {"project": report.project}

    def gauge(name: str, doc: str, value: float, **labels: str) -> None:
        every = {**project, **labels}
        Gauge(name, doc, list(every), registry=registry).labels(**every).set(value)

    gauge("churn_materialize_build", "Feature build the online store holds", report.build)
    gauge("churn_materialize_duration_seconds", "Wall time of the last run", report.duration_seconds)
    gauge("churn_materialize_last_success_timestamp_seconds", "When the last run finished", time.time())
    rows = Gauge(
        "churn_materialize_rows_written",
        "Users whose newest rows the last run wrote and read back, per source (0: nothing new)",
        ["project", "source"],
        registry=registry,
    )
    for run in report.sources:
        rows.labels(report.project, run.source).set(run.received)
    if not report.sources:
        rows.labels(report.project, "none").set(0)
    mode = Gauge("churn_materialize_last_run", "Kind of the last run (value 1)", ["project", "mode"], registry=registry)
    mode.labels(report.project, report.mode).set(1)
    if report.newest_feature_timestamp is not None:
        gauge(
            "churn_materialize_newest_feature_timestamp_seconds",
            "Snapshot time of the newest feature row the online store holds",
            report.newest_feature_timestamp.timestamp(),
        )
    textfile.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(textfile), registry)
    if pushgateway:
        push_to_gateway(pushgateway, job="churn-materialize", registry=registry)
    return registry
