"""`churn materialize` as the CronJob runs it: follows the builds, refills an emptied store, counts what the store
received, fails loudly, and exports metrics that a run with nothing new never moves back."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from churn_common.settings import Settings
from churn_common.store import apply_repo, feature_store
from jobs.cli import app
from jobs.materialize import materialize
from products.elearning import FEATURE_SERVICE
from tests.feature_repo.conftest import delete_project_keys, feast_hashes, hashed_user_ids
from tests.feature_repo.factories import (
    day_end,
    feature_columns,
    later_versions,
    newest_versions,
    random_accounts,
    random_snapshots,
    write_features,
)

DAYS = [date(2026, 4, 1) + timedelta(days=i) for i in range(5)]
USERS = range(1, 41)
ACCOUNT_COLUMNS = ["plan", "country", "acquisition_channel", "account_status"]
CHURN = Path(sys.executable).with_name("churn")


@pytest.fixture
def redis_settings(settings: Settings, redis_client: redis.Redis) -> Iterator[Settings]:
    """Settings on the redis profile, in the test Redis db, with the project's keys removed afterwards."""
    on_redis = settings.model_copy(update={"feast_profile": "redis"})
    yield on_redis
    delete_project_keys(redis_client, on_redis.feast_project)


def _end(day: date) -> datetime:
    """An instant of the day after ``day``: its snapshot (event time = end of ``day``) has been built."""
    return (day_end(day) + timedelta(hours=3)).to_pydatetime()


def _snapshots(days: list[date], seed: int) -> pd.DataFrame:
    return random_snapshots(USERS, days, seed=seed, created_delay=timedelta(0))


def _accounts() -> pd.DataFrame:
    return random_accounts(USERS, seed=5, closed={7: day_end(DAYS[1]) - timedelta(hours=5)})


def _served(settings: Settings, user_ids) -> pd.DataFrame:
    store = feature_store(settings)
    rows = [{"user_id": int(u)} for u in user_ids]
    frame = store.get_online_features(features=store.get_feature_service(FEATURE_SERVICE), entity_rows=rows).to_df()
    return frame.set_index("user_id")[[*feature_columns(), *ACCOUNT_COLUMNS]]


def _assert_serves(settings: Settings, snapshots: pd.DataFrame, accounts: pd.DataFrame) -> None:
    """Every user's newest rows, as the offline tables hold them, are what the online store serves."""
    expected = newest_versions(snapshots, accounts)[[*feature_columns(), *ACCOUNT_COLUMNS]]
    served = _served(settings, expected.index)
    pd.testing.assert_frame_equal(served, expected.astype(served.dtypes.to_dict()), check_names=False)


def _samples(prom_file: Path) -> dict[tuple[str, tuple], float]:
    """Every sample of the textfile by (name, sorted labels but the project)."""
    families = text_string_to_metric_families(prom_file.read_text())
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "project"))): s.value
        for family in families
        for s in family.samples
    }


def _cli(settings: Settings, *args: str):
    env = {
        "CHURN_FEAST_PROJECT": settings.feast_project,
        "CHURN_FEAST_PROFILE": settings.feast_profile,
        "CHURN_DATA_DIR": str(settings.paths.root),
        "CHURN_REDIS_DB": str(settings.redis_db),
    }
    result = CliRunner().invoke(app, ["materialize", *args], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


def _job(settings: Settings, now: datetime) -> subprocess.CompletedProcess:
    """The job as the CronJob runs it: its own process, its clock at ``now``."""
    env = {
        **os.environ,
        "CHURN_FEAST_PROJECT": settings.feast_project,
        "CHURN_FEAST_PROFILE": settings.feast_profile,
        "CHURN_DATA_DIR": str(settings.paths.root),
        "CHURN_REDIS_DB": str(settings.redis_db),
        "CHURN_NOW": now.isoformat(),
    }
    return subprocess.run([str(CHURN), "materialize"], env=env, capture_output=True, text=True, timeout=240)


def _report(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.index("{") :])


# --- nothing written is never a success ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.redis
def test_no_registry_or_another_profiles_registry_fails_then_counts_what_redis_received(redis_settings, redis_client):
    embedded = redis_settings.model_copy(update={"feast_profile": "embedded"})
    write_features(embedded.paths, _snapshots(DAYS[:3], seed=1), _accounts())

    never_applied = _job(embedded, _end(DAYS[2]))
    assert never_applied.returncode == 1
    assert "holds no feature views" in never_applied.stderr and "churn features apply" in never_applied.stderr
    assert "Traceback" not in never_applied.stderr

    apply_repo(embedded)
    other_profile = _job(redis_settings, _end(DAYS[2]))
    assert other_profile.returncode == 1 and "Traceback" not in other_profile.stderr
    redis_registry = redis_settings.paths.feast / "redis" / "registry.db"
    assert f"redis profile's registry ({redis_registry})" in other_profile.stderr
    assert not feast_hashes(redis_client, redis_settings.feast_project)

    apply_repo(redis_settings)
    report = _report(_job(redis_settings, _end(DAYS[2])))
    assert hashed_user_ids(redis_client, redis_settings.feast_project) == set(USERS)
    assert report["users_written"] == len(feast_hashes(redis_client, redis_settings.feast_project))
    assert (report["mode"], report["profile"]) == ("refill", "redis")


@pytest.mark.slow
def test_without_a_feature_build_the_job_exits_non_zero_with_a_clear_message(settings):
    apply_repo(settings)
    done = _job(settings, _end(DAYS[0]))
    assert done.returncode == 1
    assert "no feature build recorded" in done.stderr and "churn features build" in done.stderr
    assert "Traceback" not in done.stderr


# --- metrics -------------------------------------------------------------------------------------------------------


@pytest.mark.redis
def test_a_noop_run_keeps_the_build_and_newest_timestamp_metrics(redis_settings, redis_client):
    write_features(redis_settings.paths, _snapshots(DAYS[:3], seed=2), _accounts())
    apply_repo(redis_settings)
    prom = redis_settings.paths.metrics / "materialize.prom"

    first = _cli(redis_settings, "--end", _end(DAYS[2]).strftime("%Y-%m-%dT%H:%M:%S"))
    assert first["mode"] == "refill" and first["users_written"] == len(USERS)
    after_refill = _samples(prom)
    newest = day_end(DAYS[2]).timestamp()
    assert after_refill[("churn_materialize_build", ())] == 1
    assert after_refill[("churn_materialize_newest_feature_timestamp_seconds", ())] == newest
    assert after_refill[("churn_materialize_rows_written", (("source", "user_daily_snapshots"),))] == len(USERS)
    assert after_refill[("churn_materialize_rows_written", (("source", "user_account"),))] == len(USERS)
    assert after_refill[("churn_materialize_last_run", (("mode", "refill"),))] == 1

    # A day later, no new build: nothing to load, nothing moves back.
    second = _cli(redis_settings, "--end", _end(DAYS[3]).strftime("%Y-%m-%dT%H:%M:%S"))
    assert (second["mode"], second["users_written"], second["sources"]) == ("noop", 0, [])
    after_noop = _samples(prom)
    assert after_noop[("churn_materialize_build", ())] == 1
    assert after_noop[("churn_materialize_newest_feature_timestamp_seconds", ())] == newest
    assert after_noop[("churn_materialize_rows_written", (("source", "none"),))] == 0
    assert after_noop[("churn_materialize_last_run", (("mode", "noop"),))] == 1
    assert after_noop[("churn_materialize_last_success_timestamp_seconds", ())] > 0
    assert len(feast_hashes(redis_client, redis_settings.feast_project)) == len(USERS)

    check = subprocess.run(["promtool", "check", "metrics"], input=prom.read_text(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# --- an emptied store is refilled; builds are followed ---------------------------------------------------------


@pytest.mark.redis
def test_a_store_that_lost_its_keys_is_refilled(redis_settings, redis_client):
    snapshots, accounts = _snapshots(DAYS[:3], seed=3), _accounts()
    write_features(redis_settings.paths, snapshots, accounts)
    apply_repo(redis_settings)
    assert materialize(redis_settings, end=_end(DAYS[2])).mode == "refill"
    assert materialize(redis_settings, end=_end(DAYS[2])).mode == "noop"

    # Redis restarted without its data: Feast's hashes and the watermark beside them are gone.
    deleted = delete_project_keys(redis_client, redis_settings.feast_project)
    assert deleted == len(USERS) + 1
    report = materialize(redis_settings, end=_end(DAYS[3]))
    assert report.mode == "refill" and "no watermark" in report.reason
    assert hashed_user_ids(redis_client, redis_settings.feast_project) == set(USERS)
    assert report.users_written == len(USERS)
    _assert_serves(redis_settings, snapshots, accounts)


@pytest.mark.redis
def test_a_store_that_lost_its_hashes_but_kept_the_watermark_fails_the_sample_check_and_is_refilled(
    redis_settings, redis_client
):
    snapshots, accounts = _snapshots(DAYS[:3], seed=4), _accounts()
    write_features(redis_settings.paths, snapshots, accounts)
    apply_repo(redis_settings)
    materialize(redis_settings, end=_end(DAYS[2]))
    hashes = feast_hashes(redis_client, redis_settings.feast_project)
    redis_client.delete(*hashes[::2])

    report = materialize(redis_settings, end=_end(DAYS[2]))
    assert report.mode == "refill" and "lacks" in report.reason
    assert hashed_user_ids(redis_client, redis_settings.feast_project) == set(USERS)
    _assert_serves(redis_settings, snapshots, accounts)
    assert materialize(redis_settings, end=_end(DAYS[2])).mode == "noop"


def test_an_embedded_store_whose_file_was_deleted_is_refilled(settings):
    snapshots, accounts = _snapshots(DAYS[:3], seed=6), _accounts()
    write_features(settings.paths, snapshots, accounts)
    apply_repo(settings)
    materialize(settings, end=_end(DAYS[2]))
    # Deleted with its tables and the watermark; the registry still records the tables, so no apply recreates them.
    (settings.paths.feast / "embedded" / "online.db").unlink()

    report = materialize(settings, end=_end(DAYS[2]))
    assert report.mode == "refill" and report.users_written == len(USERS)
    _assert_serves(settings, snapshots, accounts)


@pytest.mark.redis
def test_late_builds_are_loaded_by_the_next_run_and_a_run_without_one_is_a_noop(redis_settings):
    on_time, accounts = _snapshots(DAYS[:3], seed=7), _accounts()
    write_features(redis_settings.paths, on_time, accounts)
    apply_repo(redis_settings)
    first = materialize(redis_settings, end=_end(DAYS[2]))
    assert (first.mode, first.build) == ("refill", 1)

    # Late events of the newest day arrived a day later: build 2 re-derives that day with a later version for some
    # users (the same event time), and a user's account closed.
    revised = later_versions(on_time, range(1, 11), DAYS[2], days_late=1, seed=8)
    newest_day = pd.concat([on_time[on_time["event_timestamp"].eq(day_end(DAYS[2]))], revised], ignore_index=True)
    accounts = random_accounts(USERS, seed=5, closed={7: day_end(DAYS[1]) - timedelta(hours=5), 9: day_end(DAYS[2])})
    assert write_features(redis_settings.paths, newest_day, accounts) == 2
    late = materialize(redis_settings, end=_end(DAYS[3]))
    assert (late.mode, late.build, late.reason) == ("incremental", 2, "builds 2..2")
    assert {run.source: run.start for run in late.sources}["user_daily_snapshots"] == day_end(DAYS[2])
    snapshots = pd.concat([on_time, revised], ignore_index=True)
    _assert_serves(redis_settings, snapshots, accounts)
    assert _served(redis_settings, [9])["account_status"].item() == "closed"

    assert materialize(redis_settings, end=_end(DAYS[3])).mode == "noop"

    # Build 3 adds the next day; a run long after it (a missed schedule) still loads it.
    next_day = _snapshots(DAYS[3:4], seed=9)
    assert write_features(redis_settings.paths, next_day, accounts) == 3
    caught_up = materialize(redis_settings, end=_end(DAYS[4]) + timedelta(days=1))
    assert (caught_up.mode, caught_up.build, caught_up.newest_feature_timestamp) == (
        "incremental",
        3,
        day_end(DAYS[3]).to_pydatetime(),
    )
    _assert_serves(redis_settings, pd.concat([snapshots, next_day], ignore_index=True), accounts)
