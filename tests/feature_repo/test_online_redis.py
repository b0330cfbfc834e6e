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
from churn_common.online import OnlineReader
from churn_common.store import apply_repo, feature_store
from jobs.materialize import materialize
from products.elearning import FEATURE_SERVICE
from tests.feature_repo.conftest import delete_project_keys, feast_hashes
from tests.feature_repo.factories import (
    ACCOUNT_VALID_FROM,
    day_end,
    random_accounts,
    random_snapshots,
    write_features,
)
from training.dataset import get_training_frame

pytestmark = pytest.mark.redis

ACCOUNTS_FROM = ACCOUNT_VALID_FROM.to_pydatetime()  # Feast's own materialize: from the account rows on

DAYS = [date(2026, 3, 1) + timedelta(days=i) for i in range(10)]
FRESH_USERS = range(1, 31)
STALE_USERS = range(31, 41)
CLOSED_USER = 5
T = day_end(DAYS[-1]) + timedelta(hours=3)  # a few hours into the day after the newest snapshots
SNAPSHOT_VIEWS = {f"user_activity_{w}d" for w in (7, 14, 30, 90)} | {"user_status_daily"}


def _accounts(user_ids) -> pd.DataFrame:
    return random_accounts(user_ids, seed=10, closed={CLOSED_USER: day_end(DAYS[6])})


def _snapshots(user_ids, days, seed: int) -> pd.DataFrame:
    """On-time versions, as the build writes them (created = event time)."""
    return random_snapshots(user_ids, days, seed=seed, created_delay=timedelta(0))


@pytest.fixture
def materialized(redis_settings):
    fresh = _snapshots(FRESH_USERS, DAYS, seed=11)
    stale = _snapshots(STALE_USERS, DAYS[:4], seed=12)  # newest snapshot 6 days before T, ttl is 2
    snapshots = pd.concat([fresh, stale], ignore_index=True)
    write_features(redis_settings.paths, snapshots, _accounts([*FRESH_USERS, *STALE_USERS]))
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
    assert report.mode == "refill" and report.users_written == len(FRESH_USERS) + len(STALE_USERS)
    assert online.loc[: len(FRESH_USERS) - 1, "sessions_7d"].notna().all()
    assert online["account_status"].tolist() == ["closed" if u == CLOSED_USER else "open" for u in users[:-1]] + [None]


def test_stale_users_have_no_snapshot_online_as_offline_but_keep_their_account(materialized):
    store, _ = materialized
    service = store.get_feature_service(FEATURE_SERVICE)
    stale_user = STALE_USERS[0]
    # A refill loads no snapshot older than the ttl: the store has none of theirs, the account view no ttl.
    (vector,) = OnlineReader(store, service).read([stale_user], now=T.to_pydatetime())
    assert set(vector.missing_views) == SNAPSHOT_VIEWS and not vector.stale_views
    assert vector.features["account_status"] == "open" and vector.features["sessions_7d"] is None
    offline = offline_at(store, [stale_user], T)
    assert offline["sessions_7d"].isna().all() and offline["account_status"].item() == "open"


def test_unknown_user_has_every_view_missing(materialized):
    store, _ = materialized
    service = store.get_feature_service(FEATURE_SERVICE)
    (vector,) = OnlineReader(store, service).read([424242], now=T.to_pydatetime())
    assert vector.as_of is None and not vector.usable
    assert len(vector.missing_views) == len(service.feature_view_projections)


def test_a_new_build_is_loaded_by_the_next_run(materialized, redis_settings):
    store, first = materialized
    later_day = DAYS[-1] + timedelta(days=1)
    snapshots = _snapshots(FRESH_USERS, [later_day], seed=13)
    assert write_features(redis_settings.paths, snapshots, _accounts([*FRESH_USERS, *STALE_USERS])) == first.build + 1
    now = (day_end(later_day) + timedelta(hours=3)).to_pydatetime()
    second = materialize(redis_settings, end=now)
    assert (second.mode, second.build) == ("incremental", first.build + 1)
    assert second.newest_feature_timestamp == day_end(later_day).to_pydatetime()
    (vector,) = OnlineReader(store, store.get_feature_service(FEATURE_SERVICE)).read([1], now=now)
    assert vector.as_of == day_end(later_day).to_pydatetime() and vector.usable
    assert vector.features["sessions_7d"] == snapshots.loc[snapshots["user_id"].eq(1), "sessions_7d"].item()


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
        store.materialize(start_date=ACCOUNTS_FROM, end_date=T.to_pydatetime())
    finally:
        done.set()
        reader.join()
    assert service.name == FEATURE_SERVICE
    return counts["reads"], counts["failures"]


@pytest.mark.slow
def test_reads_keep_working_while_materializing(redis_settings):
    users = range(1, 20_001)
    write_features(redis_settings.paths, _snapshots(users, DAYS[-1:], seed=5), _accounts(users))
    apply_repo(redis_settings)
    store = feature_store(redis_settings)
    store.materialize(start_date=ACCOUNTS_FROM, end_date=T.to_pydatetime())

    reads, failures = _reads_during_materialization(redis_settings, serve_while_materializing=True)
    assert reads > 5 and failures == 0
    # The control: without the setting, Feast refuses reads of MATERIALIZING views, so the probe does see it.
    reads, failures = _reads_during_materialization(redis_settings, serve_while_materializing=False)
    assert reads > 5 and failures > 0


def _project_contents(client: redis.Redis, project: str) -> dict[bytes, dict[bytes, bytes]]:
    suffix = project.encode()
    return {key[: -len(suffix)]: client.hgetall(key) for key in feast_hashes(client, project)}


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
    users = range(1, 3_001)
    write_features(redis_settings.paths, _snapshots(users, DAYS[-2:], seed=9), _accounts(users))
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
    return next(iter(client.scan_iter(match=f"*{project}", count=1000, _type="hash")), None) is not None


def test_reader_reports_freshness_against_now(materialized):
    store, _ = materialized
    service = store.get_feature_service(FEATURE_SERVICE)
    too_late = (day_end(DAYS[-1]) + timedelta(days=2, seconds=1)).to_pydatetime()
    # Feast itself returns the value however old it is (feast issue 6821) ...
    raw = store.get_online_features(features=service, entity_rows=[{"user_id": 1}]).to_dict()
    assert raw["sessions_7d"][0] is not None
    # ... the reader applies the ttl as the offline join does; the account view has none.
    (vector,) = OnlineReader(store, service).read([1], now=too_late)
    assert set(vector.stale_views) == SNAPSHOT_VIEWS and vector.as_of == day_end(DAYS[-1]).to_pydatetime()
    assert vector.features["sessions_7d"] is None and vector.features["plan"] is not None
    (vector,) = OnlineReader(store, service).read([1], now=datetime(2026, 3, 12, tzinfo=UTC))
    assert vector.usable
