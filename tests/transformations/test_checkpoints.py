"""The rolling-state checkpoints: a daily build resumes from the state the previous build left and writes the bytes
a build from scratch writes; a checkpoint the events no longer agree with is not used."""

import logging
from datetime import date, timedelta

import pandas as pd
import pytest

from churn_common.settings import Settings
from tests.factories import write_validated
from tests.transformations.test_features import file_bytes, random_world
from transformations import checkpoints
from transformations.features import build_features

FIRST_DAILY = date(2026, 1, 25)
LAST_DAILY = date(2026, 2, 12)


def _arrival_day(events: pd.DataFrame) -> pd.Series:
    return events.ingested_at.dt.tz_convert("UTC").dt.date


def _resumed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming from the rolling state")]


def _day_by_day(settings: Settings, users: pd.DataFrame, events: pd.DataFrame) -> None:
    """A first build of what arrived before FIRST_DAILY, then one drop and one build per day, as the pipeline
    runs them."""
    arrival = _arrival_day(events)
    write_validated(settings.paths, users, events[arrival < FIRST_DAILY])
    build_features(settings, end=FIRST_DAILY - timedelta(days=1))
    day = FIRST_DAILY
    while day <= LAST_DAILY:
        write_validated(settings.paths, None, events[arrival == day], batch=day.isoformat())
        build_features(settings, start=day, end=day)
        day += timedelta(days=1)


@pytest.fixture
def world() -> tuple[pd.DataFrame, pd.DataFrame]:
    users, events = random_world(seed=11, n_users=30, n_days=45)
    # The windows' late versions need late arrivals; the truncation keeps every arrival inside the daily days.
    assert (_arrival_day(events) > events.event_timestamp.dt.date).mean() > 0.3
    return users, events[_arrival_day(events) <= LAST_DAILY]


def test_daily_builds_resume_from_the_rolling_state_and_equal_a_build_from_scratch(
    settings: Settings, tmp_path, world, caplog: pytest.LogCaptureFixture
) -> None:
    users, events = world
    caplog.set_level(logging.INFO, logger="transformations.features")
    _day_by_day(settings, users, events)
    daily_builds = (LAST_DAILY - FIRST_DAILY).days + 1
    assert len(_resumed(caplog)) == daily_builds, _resumed(caplog)

    fresh = Settings(data_dir=tmp_path / "fresh")
    write_validated(fresh.paths, users, events)
    build_features(fresh, end=LAST_DAILY)
    assert file_bytes(settings.paths.snapshots) == file_bytes(fresh.paths.snapshots)
    kept = sorted(path.name for path in checkpoints.state_root(settings.paths).glob("day=*"))
    assert len(kept) == checkpoints.KEEP and kept[-1] == f"day={LAST_DAILY - timedelta(days=7)}"


def test_a_drop_holding_events_known_before_the_checkpoint_makes_the_build_start_over(
    settings: Settings, tmp_path, world, caplog: pytest.LogCaptureFixture
) -> None:
    users, events = world
    _day_by_day(settings, users, events)
    # A drop nobody validated in time: events of ten days ago, arrived then. The state the next build would resume
    # from (seven days back) did not count them.
    missed = LAST_DAILY - timedelta(days=10)
    extra = events[events.event_timestamp.dt.date == missed].head(8).copy()
    extra["ingested_at"] = extra["event_timestamp"]
    write_validated(settings.paths, None, extra, batch="missed")
    caplog.set_level(logging.INFO, logger="transformations")
    caplog.clear()
    build_features(settings, start=LAST_DAILY, end=LAST_DAILY)
    assert not _resumed(caplog)
    assert any("not used" in r.getMessage() and "batch=missed" in r.getMessage() for r in caplog.records)

    fresh = Settings(data_dir=tmp_path / "fresh")
    write_validated(fresh.paths, users, pd.concat([events, extra]))
    build_features(fresh, end=LAST_DAILY)
    rebuilt = {f"date={LAST_DAILY - timedelta(days=n)}/part-0.parquet" for n in range(8)}
    got, expected = file_bytes(settings.paths.snapshots), file_bytes(fresh.paths.snapshots)
    assert {name: got[name] for name in rebuilt} == {name: expected[name] for name in rebuilt}


def test_a_user_the_checkpoint_counted_and_the_users_table_no_longer_holds_makes_the_build_start_over(
    settings: Settings, world, caplog: pytest.LogCaptureFixture
) -> None:
    users, events = world
    _day_by_day(settings, users, events)
    gone = int(users.user_id.iloc[0])
    write_validated(settings.paths, users[users.user_id != gone], events.iloc[:0])
    caplog.set_level(logging.INFO, logger="transformations.features")
    caplog.clear()
    build_features(settings, start=LAST_DAILY, end=LAST_DAILY)
    assert not _resumed(caplog)


def test_a_damaged_checkpoint_is_not_used(settings: Settings, tmp_path, world, caplog) -> None:
    users, events = world
    _day_by_day(settings, users, events)
    newest = sorted(checkpoints.state_root(settings.paths).glob("day=*"))[-1]
    (newest / "total.npy").write_bytes(b"\x93NUMPY truncated")
    caplog.set_level(logging.INFO, logger="transformations")
    caplog.clear()
    build_features(settings, start=LAST_DAILY + timedelta(days=1), end=LAST_DAILY + timedelta(days=1))
    assert any(newest.name in r.getMessage() and "not used" in r.getMessage() for r in caplog.records)

    fresh = Settings(data_dir=tmp_path / "fresh")
    write_validated(fresh.paths, users, events)
    build_features(fresh, end=LAST_DAILY + timedelta(days=1))
    assert file_bytes(settings.paths.snapshots) == file_bytes(fresh.paths.snapshots)
