"""Offline/online parity, the stale-value rule, reads during materialisation and interrupted runs, on real Redis."""

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest
import redis

from churn_common.feature_frame import normalize, service_schema
from churn_common.names import FEATURE_SERVICE
from churn_common.online import OnlineReader
from churn_common.store import apply_repo, feature_store
from jobs.materialize import materialize
from tests.feature_repo.conftest import delete_project_keys
from tests.feature_repo.factories import day_end, random_snapshots, write_snapshots
from training.dataset import get_training_frame

pytestmark = pytest.mark.redis

DAYS = [date(2026, 3, 1) + timedelta(days=i) for i in range(10)]
FRESH_USERS = range(1, 31)
STALE_USERS = range(31, 41)
T = day_end(DAYS[-1]) + timedelta(hours=3)  # after the newest rows' created time (+2h in the factory)


@pytest.fixture
def materialized(redis_settings):
    fresh = random_snapshots(FRESH_USERS, DAYS, seed=11)
    stale = random_snapshots(STALE_USERS, DAYS[:4], seed=12)  # newest snapshot 6 days before T, ttl is 2
    write_snapshots(pd.concat([fresh, stale], ignore_index=True), redis_settings.paths.snapshots)
    apply_repo(redis_settings)
    report = materialize(redis_settings, end=T.to_pydatetime())
    return feature_store(redis_settings), report


def offline_at(store, user_ids, when) -> pd.DataFrame:
    entities = pd.DataFrame({"user_id": list(user_ids), "event_timestamp": [when] * len(user_ids)})
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[us, UTC]")
    return get_training_frame(store, entities, FEATURE_SERVICE)


def test_online_vectors_equal_offline_vectors_feature_by_feature(materialized):
    store, report = materialized
    service = store.get_feature_service(FEATURE_SERVICE)
    schema = service_schema(service)
    users = [*FRESH_USERS, *STALE_USERS, 999]

    vectors = OnlineReader(store, service).read(users, now=T.to_pydatetime())
    online = normalize(pd.DataFrame([v.features for v in vectors]), schema)
    offline = offline_at(store, users, T)[list(schema.features)].reset_index(drop=True)

    pd.testing.assert_frame_equal(online, offline, check_exact=True)
    assert report.seeded and report.rows_written == len(FRESH_USERS) + len(STALE_USERS)
    assert online.loc[: len(FRESH_USERS) - 1, "sessions_7d"].notna().all()


def test_stale_users_are_missing_online_as_they_are_offline(materialized):
    store, _ = materialized
    service = store.get_feature_service(FEATURE_SERVICE)
    stale_user = STALE_USERS[0]
    # Feast itself returns the stale value (feast issue 6821) ...
    raw = store.get_online_features(features=service, entity_rows=[{"user_id": stale_user}]).to_dict()
    assert raw["sessions_7d"][0] is not None
    # ... the reader applies the ttl as the offline join does.
    (vector,) = OnlineReader(store, service).read([stale_user], now=T.to_pydatetime())
    assert set(vector.stale_views) == {p.name for p in service.feature_view_projections}
    assert all(value is None for value in vector.features.values())
    assert vector.as_of == day_end(DAYS[3]).to_pydatetime()
    assert offline_at(store, [stale_user], T)["sessions_7d"].isna().all()


def test_unknown_user_has_every_view_missing(materialized):
    store, _ = materialized
    service = store.get_feature_service(FEATURE_SERVICE)
    (vector,) = OnlineReader(store, service).read([424242], now=T.to_pydatetime())
    assert vector.as_of is None and not vector.usable
    assert len(vector.missing_views) == len(service.feature_view_projections)


def test_incremental_run_continues_where_the_seed_ended(materialized, redis_settings):
    store, first = materialized
    later_day = DAYS[-1] + timedelta(days=1)
    write_snapshots(random_snapshots(FRESH_USERS, [later_day], seed=13), redis_settings.paths.snapshots)
    second = materialize(redis_settings, end=(day_end(later_day) + timedelta(hours=3)).to_pydatetime())
    assert not second.seeded and second.start == first.end
    assert second.newest_feature_timestamp == day_end(later_day).to_pydatetime()
    (vector,) = OnlineReader(store, store.get_feature_service(FEATURE_SERVICE)).read([1], now=second.end)
    assert vector.as_of == day_end(later_day).to_pydatetime()


def _reads_during_materialization(settings, serve_while_materializing: bool) -> tuple[int, int]:
    """Read in a loop (refreshing the registry each time, as a long-running server eventually does) while a
    materialisation runs; return (reads, failures)."""
    store = feature_store(settings)
    store.config.registry.serve_features_while_materializing = serve_while_materializing
    reader_store = feature_store(settings)
    reader_store.config.registry.serve_features_while_materializing = serve_while_materializing
    service = reader_store.get_feature_service(FEATURE_SERVICE)
    done, counts = threading.Event(), {"reads": 0, "failures": 0}

    def read_loop() -> None:
        while not done.is_set():
            reader_store.refresh_registry()
            try:
                OnlineReader(reader_store, reader_store.get_feature_service(FEATURE_SERVICE)).read([1, 2], T)
            except Exception:  # noqa: BLE001 - counting every failure kind is the point of this probe
                counts["failures"] += 1
            counts["reads"] += 1

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        store.materialize(start_date=day_end(DAYS[0]).to_pydatetime(), end_date=T.to_pydatetime())
    finally:
        done.set()
        reader.join()
    assert service.name == FEATURE_SERVICE
    return counts["reads"], counts["failures"]


@pytest.mark.slow
def test_reads_keep_working_while_materializing(redis_settings):
    write_snapshots(random_snapshots(range(1, 20_001), DAYS[-1:], seed=5), redis_settings.paths.snapshots)
    apply_repo(redis_settings)
    store = feature_store(redis_settings)
    store.materialize(start_date=day_end(DAYS[0]).to_pydatetime(), end_date=T.to_pydatetime())

    reads, failures = _reads_during_materialization(redis_settings, serve_while_materializing=True)
    assert reads > 5 and failures == 0
    # The control: without the setting, Feast refuses reads of MATERIALIZING views, so the probe does see it.
    reads, failures = _reads_during_materialization(redis_settings, serve_while_materializing=False)
    assert reads > 5 and failures > 0


def _project_contents(client: redis.Redis, project: str) -> dict[bytes, dict[bytes, bytes]]:
    suffix = project.encode()
    return {key[: -len(suffix)]: client.hgetall(key) for key in client.scan_iter(match=f"*{project}", count=1000)}


def _materialize_env(settings, project: str) -> dict[str, str]:
    return {
        **os.environ,
        "CHURN_DATA_DIR": str(settings.paths.root),
        "CHURN_FEAST_PROFILE": "redis",
        "CHURN_FEAST_PROJECT": project,
        "CHURN_REDIS_DB": str(settings.redis_db),
        "CHURN_ONLINE_WRITE_BATCH_SIZE": "1000",
    }


MATERIALIZE_COMMAND = [sys.executable, "-m", "jobs.cli", "materialize", "--end", T.strftime("%Y-%m-%dT%H:%M:%S")]


def _materialize_to_completion(settings, project: str) -> None:
    done = subprocess.run(
        MATERIALIZE_COMMAND, env=_materialize_env(settings, project), capture_output=True, timeout=240
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


@pytest.mark.slow
def test_killed_materialization_converges_after_rerun(redis_settings, redis_client):
    write_snapshots(random_snapshots(range(1, 3_001), DAYS[-2:], seed=9), redis_settings.paths.snapshots)
    clean_project = redis_settings.feast_project + "_clean"
    clean = redis_settings.model_copy(update={"feast_project": clean_project})
    try:
        for target in (redis_settings, clean):
            apply_repo(target)
        _materialize_to_completion(redis_settings, clean_project)

        victim = subprocess.Popen(
            MATERIALIZE_COMMAND,
            env=_materialize_env(redis_settings, redis_settings.feast_project),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not _has_keys(redis_client, redis_settings.feast_project) and time.monotonic() < deadline:
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        interrupted = _project_contents(redis_client, redis_settings.feast_project)
        expected = _project_contents(redis_client, clean_project)
        assert len(interrupted) > 0 and interrupted != expected  # really killed mid-run

        _materialize_to_completion(redis_settings, redis_settings.feast_project)
        assert _project_contents(redis_client, redis_settings.feast_project) == expected
        assert len(expected) == 3_000
    finally:
        delete_project_keys(redis_client, clean_project)


def _has_keys(client: redis.Redis, project: str) -> bool:
    return next(iter(client.scan_iter(match=f"*{project}", count=1000)), None) is not None


def test_reader_reports_freshness_against_now(materialized):
    store, _ = materialized
    service = store.get_feature_service(FEATURE_SERVICE)
    too_late = (day_end(DAYS[-1]) + timedelta(days=2, seconds=1)).to_pydatetime()
    (vector,) = OnlineReader(store, service).read([1], now=too_late)
    assert vector.stale_views and vector.as_of == day_end(DAYS[-1]).to_pydatetime()
    (vector,) = OnlineReader(store, service).read([1], now=datetime(2026, 3, 12, tzinfo=UTC))
    assert vector.usable
