"""The synthetic generator: contract of its files, determinism, and the behaviours it promises."""

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from churn_common.errors import ConfigurationError
from churn_common.settings import DataPaths, Settings
from jobs.cli import app
from products import GeneratorConfig, users_as_of
from products.elearning import CATALOG as ELEARNING
from products.elearning.generator import generate, read_manifest

START = date(2026, 1, 1)
DAYS = 120
TS = pa.timestamp("us", tz="UTC")
DAY = pd.Timedelta(days=1)
PERIOD_END = pd.Timestamp(START, tz="UTC") + DAYS * DAY
LATE_LIMIT = pd.Timedelta(days=7)  # Settings.late_data_days


def _generate(root: Path, **overrides: object) -> DataPaths:
    options = {"n_users": 600, "start": START, "n_days": DAYS, "seed": 11, "late_share": 0.05} | overrides
    paths = DataPaths(root)
    generate(paths, GeneratorConfig(**options))
    return paths


def _events(paths: DataPaths) -> pd.DataFrame:
    return pd.read_parquet(paths.raw_events).sort_values(["user_id", "event_timestamp"], ignore_index=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> DataPaths:
    return _generate(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def base_events(base: DataPaths) -> pd.DataFrame:
    return _events(base)


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> DataPaths:
    return _generate(tmp_path_factory.mktemp("dirty"), n_users=300, seed=5, dirty=True)


def _drops(paths: DataPaths) -> pd.DataFrame:
    """Every raw event row with the day its partition (daily drop) is named after."""
    frames = [
        pd.read_parquet(part).assign(drop_day=pd.Timestamp(part.parent.name.removeprefix("date="), tz="UTC"))
        for part in sorted(paths.raw_events.glob("date=*/part-*.parquet"))
    ]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def base_users(base: DataPaths) -> pd.DataFrame:
    users = pd.read_parquet(base.raw_users)
    return users.merge(pd.read_parquet(base.ground_truth), on="user_id", validate="1:1")


def test_raw_files_follow_the_contract(base: DataPaths) -> None:
    users = pq.read_schema(base.raw_users)
    assert [(f.name, f.type) for f in users] == [
        ("user_id", pa.int64()),
        ("signup_at", TS),
        ("country", pa.string()),
        ("plan", pa.string()),
        ("acquisition_channel", pa.string()),
        ("closed_at", TS),
    ]
    truth = pq.read_schema(base.ground_truth)
    assert [(f.name, f.type) for f in truth] == [
        ("user_id", pa.int64()),
        ("churn_propensity", pa.float64()),
        ("churn_at", TS),
    ]
    for part in base.raw_events.glob("date=*/part-*.parquet"):
        table = pq.read_table(part)
        assert [(f.name, f.type) for f in table.schema] == [
            ("user_id", pa.int64()),
            ("event_timestamp", TS),
            ("event_type", pa.string()),
            ("value", pa.float64()),
            ("ingested_at", TS),
        ]
        days = {ts.date().isoformat() for ts in table["ingested_at"].to_pylist()}
        assert days == {part.parent.name.removeprefix("date=")}


def test_event_types_and_values_follow_the_catalogue(base_events: pd.DataFrame) -> None:
    assert set(base_events["event_type"]) == set(ELEARNING.names)
    for event_type in ELEARNING.event_types:
        values = base_events.loc[base_events["event_type"] == event_type.name, "value"]
        if event_type.has_value:
            assert values.notna().all()
            assert values.between(event_type.value_min, event_type.value_max).all()
        else:
            assert values.isna().all()


def test_events_respect_signup_closure_and_arrival(base_events: pd.DataFrame, base_users: pd.DataFrame) -> None:
    joined = base_events.merge(base_users, on="user_id", validate="m:1")
    assert (joined["event_timestamp"] >= joined["signup_at"]).all()
    closed = joined["closed_at"].notna()
    assert (joined.loc[closed, "event_timestamp"] < joined.loc[closed, "closed_at"]).all()
    assert (base_events["ingested_at"] > base_events["event_timestamp"]).all()
    end = pd.Timestamp(START, tz="UTC") + DAYS * DAY
    assert base_events["event_timestamp"].between(pd.Timestamp(START, tz="UTC"), end, inclusive="left").all()


def test_users_sign_up_over_time_and_only_churners_close(base_users: pd.DataFrame) -> None:
    start = pd.Timestamp(START, tz="UTC")
    before = (base_users["signup_at"] < start).mean()
    assert 0.35 < before < 0.65
    assert base_users["signup_at"].max() > start + 60 * DAY
    closed = base_users[base_users["closed_at"].notna()]
    assert len(closed) > 0
    assert closed["churn_at"].notna().all()
    assert (closed["closed_at"] >= closed["churn_at"]).all()
    churners = base_users["churn_at"].notna()
    assert 0 < len(closed) < churners.sum()
    assert set(base_users["plan"]) == {"free", "paid"}


def test_only_paid_users_pay_about_monthly(base_events: pd.DataFrame, base_users: pd.DataFrame) -> None:
    payments = base_events[base_events["event_type"].isin(["payment_success", "payment_failed"])]
    plans = payments.merge(base_users[["user_id", "plan"]], on="user_id")["plan"]
    assert set(plans) == {"paid"}
    gaps = payments.groupby("user_id")["event_timestamp"].diff().dropna().dt.days
    assert gaps.between(29, 31).all()


def test_active_days_have_one_to_three_events(base_events: pd.DataFrame) -> None:
    activity = base_events[base_events["event_type"].isin(ELEARNING.activity_types)]
    per_day = activity.groupby(["user_id", activity["event_timestamp"].dt.floor("D")]).size()
    assert 1.0 <= per_day.mean() <= 3.0


def _weekly_activity(events: pd.DataFrame, users: pd.DataFrame, first_week: int, last_week: int) -> pd.Series:
    """Activity events per user per week, for weeks ``first_week..last_week`` before (negative: after) churn."""
    activity = events[events["event_type"].isin(ELEARNING.activity_types)]
    joined = activity.merge(users[["user_id", "churn_at"]], on="user_id")
    weeks_before = (joined["churn_at"] - joined["event_timestamp"]) / pd.Timedelta(weeks=1)
    in_window = (weeks_before > first_week - 1) & (weeks_before <= last_week)
    counts = joined[in_window].groupby("user_id").size().reindex(users["user_id"], fill_value=0)
    return counts / (last_week - first_week + 1)


def test_engagement_declines_over_weeks_before_churn(base_events: pd.DataFrame, base_users: pd.DataFrame) -> None:
    start = pd.Timestamp(START, tz="UTC")
    # Churners observed for 12 full weeks before churning (signed up and inside the period all along).
    history_from = base_users["churn_at"] - pd.Timedelta(weeks=12)
    cohort = base_users[(history_from >= start) & (base_users["signup_at"] <= history_from)]
    assert len(cohort) >= 20
    early = _weekly_activity(base_events, cohort, 8, 12).mean()
    late = _weekly_activity(base_events, cohort, 1, 4).mean()
    last_week = _weekly_activity(base_events, cohort, 1, 1).mean()
    assert late < 0.8 * early
    assert last_week > 0.05 * early  # a decline, not a cliff: the last week still has activity
    after = _weekly_activity(base_events, cohort, -3, 0).mean()
    assert after < 0.1 * early


def test_failures_and_tickets_rise_before_churn(base_events: pd.DataFrame, base_users: pd.DataFrame) -> None:
    joined = base_events.merge(base_users[["user_id", "churn_at"]], on="user_id")
    before_churn = joined["churn_at"] - joined["event_timestamp"]
    declining = (before_churn > pd.Timedelta(0)) & (before_churn <= pd.Timedelta(weeks=3))
    stable = joined["churn_at"].isna()
    for kind in ("support_ticket", "payment_failed"):
        is_kind = joined["event_type"] == kind
        share_declining = is_kind[declining].mean()
        share_stable = is_kind[stable].mean()
        assert share_declining > 2 * share_stable, kind


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path, base: DataPaths) -> None:
    again = _generate(tmp_path / "again")
    other = _generate(tmp_path / "other", seed=12)
    reference = _file_bytes(base.raw)
    assert len(reference) > DAYS
    assert _file_bytes(again.raw) == reference
    other_bytes = _file_bytes(other.raw)
    assert other_bytes["users.parquet"] != reference["users.parquet"]
    assert not pd.read_parquet(other.raw_events).equals(pd.read_parquet(base.raw_events))


def test_late_events_arrive_one_to_five_days_late(base_events: pd.DataFrame, tmp_path: Path) -> None:
    delay = base_events["ingested_at"] - base_events["event_timestamp"]
    late = delay > DAY
    assert 0.04 < late.mean() < 0.06
    assert (delay[late] <= 5 * DAY + pd.Timedelta(seconds=1)).all()
    assert (delay[~late] <= pd.Timedelta(minutes=5)).all()
    on_time = _events(_generate(tmp_path, late_share=0.0))
    assert ((on_time["ingested_at"] - on_time["event_timestamp"]) <= pd.Timedelta(minutes=5)).all()


def test_drift_cuts_watch_minutes_by_30_percent_and_adds_a_channel(
    tmp_path: Path, base: DataPaths, base_events: pd.DataFrame
) -> None:
    drift_day = START + timedelta(days=60)
    drifted = _generate(tmp_path, drift_date=drift_day)
    events = _events(drifted)
    # Same seed: the very same events, only values after the drift date differ.
    assert events[["user_id", "event_timestamp", "event_type"]].equals(
        base_events[["user_id", "event_timestamp", "event_type"]]
    )
    watch = (events["event_type"] == "video_watch").to_numpy()
    after = (events["event_timestamp"] >= pd.Timestamp(drift_day, tz="UTC")).to_numpy()
    assert events["value"][watch & ~after].equals(base_events["value"][watch & ~after])
    ratio = events["value"][watch & after].sum() / base_events["value"][watch & after].sum()
    assert ratio == pytest.approx(0.7, abs=0.01)

    users = pd.read_parquet(drifted.raw_users)
    new_channel = users["acquisition_channel"] == "tiktok_ads"
    from_drift = users["signup_at"] >= pd.Timestamp(drift_day, tz="UTC")
    assert not (new_channel & ~from_drift).any()
    assert 0.15 < new_channel[from_drift].mean() < 0.45
    assert "tiktok_ads" not in set(pd.read_parquet(base.raw_users)["acquisition_channel"])


def test_cli_generates_into_the_settings_data_dir(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["data", "generate", "--users", "40", "--days", "20", "--start", "2026-02-01"])
    assert result.exit_code == 0, result.output
    users = pd.read_parquet(settings.paths.raw_users)
    assert len(users) == 40
    dates = sorted(p.name for p in settings.paths.raw_events.glob("date=*"))
    assert dates[0] >= "date=2026-02-01"
    assert dates[-1] <= "date=2026-02-20"


def test_cli_rejects_an_impossible_late_share(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["data", "generate", "--users", "10", "--late-events", "1.5"])
    assert result.exit_code != 0
    assert "late-events share must be within [0, 1]" in result.output
    assert not settings.paths.raw.exists()


def test_cli_default_period_ends_yesterday_by_the_settings_clock(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURN_NOW", "2026-03-15T08:30:00Z")
    monkeypatch.setenv("CHURN_N_USERS", "200")
    monkeypatch.setenv("CHURN_N_DAYS", "30")
    result = CliRunner().invoke(app, ["data", "generate"])
    assert result.exit_code == 0, result.output
    assert "in the period 2026-02-13..2026-03-14" in result.output
    event_days = pd.read_parquet(settings.paths.raw_events)["event_timestamp"].dt.date
    assert event_days.min() == date(2026, 2, 13)
    assert event_days.max() == date(2026, 3, 14)
    dates = sorted(p.name for p in settings.paths.raw_events.glob("date=*"))
    assert (dates[0], dates[-1], len(dates)) == ("date=2026-02-13", "date=2026-03-14", 30)


# --- daily drops: raw events partitioned by the day they arrived -------------------------------------------


def test_events_land_in_the_drop_of_the_day_they_arrived(base: DataPaths) -> None:
    events = _drops(base)
    assert (events["ingested_at"] >= events["drop_day"]).all()
    assert (events["ingested_at"] < events["drop_day"] + DAY).all()
    # Nothing has arrived at or after the period end, yet its last day has a drop.
    assert (events["ingested_at"] < PERIOD_END).all()
    assert events["drop_day"].max() == PERIOD_END - DAY
    late = events["ingested_at"] - events["event_timestamp"] > DAY
    assert late.sum() > 100
    event_day = events["event_timestamp"].dt.floor("D")
    assert (events.loc[late, "drop_day"] > event_day[late]).all()
    assert (events.loc[~late, "drop_day"] - event_day[~late]).isin([pd.Timedelta(0), DAY]).all()


def test_summary_counts_written_events_and_ingestion_day_drops(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    summary = generate(paths, GeneratorConfig(n_users=100, start=START, n_days=30, seed=3, late_share=0.3))
    drops = list(paths.raw_events.glob("date=*"))
    assert summary.n_partitions == len(drops) == 30
    assert summary.n_events == sum(pq.read_metadata(p).num_rows for p in paths.raw_events.rglob("*.parquet"))


# --- the accounts export as of an instant ------------------------------------------------------------------


def test_users_as_of_hides_later_signups_and_closures(base: DataPaths) -> None:
    full = pq.read_table(base.raw_users)
    instant = datetime(2026, 3, 1, tzinfo=UTC)
    as_of = users_as_of(full, instant)
    assert as_of.schema == full.schema
    everyone, frame = full.to_pandas(), as_of.to_pandas()
    at = pd.Timestamp(instant)
    known = everyone[everyone["signup_at"] < at].reset_index(drop=True)
    assert 0 < len(known) < len(everyone)
    assert frame.drop(columns="closed_at").equals(known.drop(columns="closed_at"))
    closed_before, closed_after = known["closed_at"] < at, known["closed_at"] >= at
    assert closed_before.sum() > 0 and closed_after.sum() > 0
    assert frame.loc[closed_before, "closed_at"].equals(known.loc[closed_before, "closed_at"])
    assert frame.loc[~closed_before, "closed_at"].isna().all()


def test_users_as_of_excludes_the_instant_itself() -> None:
    at = datetime(2026, 2, 1, tzinfo=UTC)
    second = timedelta(seconds=1)
    users = pa.table(
        {
            "user_id": pa.array([1, 2, 3, 4], pa.int64()),
            "signup_at": pa.array([at - 2 * second, at - second, at, at - second], TS),
            "closed_at": pa.array([at - second, at, None, None], TS),
        }
    )
    as_of = users_as_of(users, at).to_pydict()
    assert as_of == {
        "user_id": [1, 2, 4],
        "signup_at": [at - 2 * second, at - second, at - second],
        "closed_at": [at - second, None, None],
    }
    # A naive instant is UTC, as everywhere in the platform.
    assert users_as_of(users, at.replace(tzinfo=None)).equals(users_as_of(users, at))


def test_users_as_of_rejects_a_dirty_string_typed_export(dirty: DataPaths) -> None:
    with pytest.raises(ConfigurationError, match="signup_at"):
        users_as_of(pq.read_table(dirty.raw_users), datetime(2026, 3, 1, tzinfo=UTC))


# --- dirty mode: the new bad-row classes -------------------------------------------------------------------


def _parsed_dirty(paths: DataPaths) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw dirty events and users with ids and timestamps parsed where they parse (garbage -> NaN/NaT)."""
    events = _drops(paths)
    events["uid"] = pd.to_numeric(events["user_id"], errors="coerce")
    events["ts"] = pd.to_datetime(events["event_timestamp"], utc=True, errors="coerce", format="ISO8601")
    users = pd.read_parquet(paths.raw_users)
    users["uid"] = pd.to_numeric(users["user_id"], errors="coerce")
    users["signup"] = pd.to_datetime(users["signup_at"], utc=True, errors="coerce", format="ISO8601")
    return events, users.dropna(subset=["uid"]).drop_duplicates("uid")


def test_dirty_arrival_defects_match_the_manifest(dirty: DataPaths) -> None:
    counts = read_manifest(dirty)["events"]
    events, _ = _parsed_dirty(dirty)
    lateness = events["ingested_at"] - events["ts"]
    future = events["ingested_at"] > PERIOD_END
    assert future.sum() == counts["future_ingestion"] > 0
    # Written to the drop of their event day, so they reach the gate at all.
    assert (events.loc[future, "drop_day"] == events.loc[future, "ts"].dt.floor("D")).all()
    arrived = events[~future]
    assert (arrived["ingested_at"] >= arrived["drop_day"]).all()
    assert (arrived["ingested_at"] < arrived["drop_day"] + DAY).all()
    too_late = ~future & (lateness > LATE_LIMIT)
    assert too_late.sum() == counts["too_late"] > 0
    assert (lateness[too_late] == pd.Timedelta(days=20)).all()
    # Ten years on, yet arrived: negative lateness, never too late.
    future_ts = events["ts"] > PERIOD_END
    assert future_ts.sum() == counts["future_timestamp"] > 0
    assert (lateness[future_ts] < pd.Timedelta(0)).all()


def test_dirty_events_around_signup_and_closure_match_the_manifest(dirty: DataPaths) -> None:
    counts = read_manifest(dirty)["events"]
    events, users = _parsed_dirty(dirty)
    joined = events.merge(users[["uid", "signup", "closed_at"]], on="uid", validate="m:1")
    lateness = joined["ingested_at"] - joined["ts"]
    after_closure = (joined["ts"] > joined["closed_at"]) & (joined["ts"] < PERIOD_END)
    assert after_closure.sum() == counts["after_closure"] > 0
    assert lateness[after_closure].between(pd.Timedelta(0), pd.Timedelta(minutes=5)).all()
    before_signup = joined["ts"] < joined["signup"]
    assert before_signup.sum() == counts["before_signup"] > 0
    # Arrived after the signup (the user is in that day's export), well within the lateness limit.
    assert (joined.loc[before_signup, "ingested_at"] > joined.loc[before_signup, "signup"]).all()
    assert (lateness[before_signup] <= LATE_LIMIT).all()


def test_dirty_user_defects_match_the_manifest_and_no_event_refers_to_them(dirty: DataPaths) -> None:
    counts = read_manifest(dirty)["users"]
    events, users = _parsed_dirty(dirty)
    assert pq.read_schema(dirty.raw_users).field("closed_at").type == TS
    future_signup = users["signup"] > PERIOD_END
    assert future_signup.sum() == counts["future_signup"] > 0
    closed_early = users["closed_at"] < users["signup"]
    assert closed_early.sum() == counts["closed_before_signup"] > 0
    assert (users.loc[closed_early, "signup"] - users.loc[closed_early, "closed_at"] == DAY).all()
    fresh = set(users.loc[future_signup | closed_early, "uid"])
    assert len(fresh) == counts["future_signup"] + counts["closed_before_signup"]
    assert min(fresh) > 300
    assert not fresh & set(events["uid"].dropna())
