"""The rolling feature snapshots: hand-computed values, an independent pandas re-computation, no look-ahead,
idempotence, late data, a bring-your-own catalogue and the snapshot schema (pandera and the vectorised check
the build runs on every row must accept and reject the same tables)."""

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from churn_common.catalog import EventCatalog, EventType, Ratio
from churn_common.errors import DataError, SchemaError
from churn_common.names import ACCOUNT_TABLE, SNAPSHOT_TABLE
from churn_common.settings import Settings
from jobs import feature_commands
from products.elearning import CATALOG as ELEARNING
from tests.factories import make_events, make_users, utc, write_validated
from transformations.features import build_features, read_builds
from transformations.snapshot_schema import (
    ACCOUNT_SCHEMA,
    check_arrow,
    snapshot_columns,
    snapshot_schema,
    to_frame,
    validate_snapshots,
)

TS = pa.timestamp("us", tz="UTC")


def read_snapshots(settings: Settings, versions: str = "latest") -> pd.DataFrame:
    """Every snapshot row; with ``versions="latest"`` only the newest version of each (user, day)."""
    files = sorted(settings.paths.snapshots.glob("*/*.parquet"))
    frame = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    if versions == "all":
        return frame
    latest = frame.groupby(["user_id", "event_timestamp"]).created.transform("max") == frame.created
    return frame[latest].reset_index(drop=True)


def known_at(frame: pd.DataFrame, instant: pd.Timestamp) -> pd.DataFrame:
    """The newest version of each (user, day) row that was known at ``instant``."""
    known = frame[(frame.created <= instant) & (frame.event_timestamp <= instant)]
    return known.sort_values("created").groupby(["user_id", "event_timestamp"]).tail(1)


def row(frame: pd.DataFrame, user_id: int, day: date) -> pd.Series:
    end = pd.Timestamp(day + timedelta(days=1), tz="UTC")
    match = frame[(frame.user_id == user_id) & (frame.event_timestamp == end)]
    assert len(match) == 1, f"expected one row for user {user_id} on {day}, found {len(match)}"
    return match.iloc[0]


def accounts(settings: Settings) -> pd.DataFrame:
    return pq.read_table(settings.paths.features / "user_account" / "part-0.parquet").to_pandas()


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


# ----------------------------------------------------------------------------------------- hand-computed


@pytest.fixture
def small_world(settings: Settings) -> Settings:
    users = make_users(3, signup=utc(2026, 1, 1, 10))
    users.loc[1, "signup_at"] = utc(2026, 1, 3, 8)
    users["closed_at"] = pd.Series([None, utc(2026, 1, 8, 12), utc(2026, 1, 6)], dtype="datetime64[us, UTC]")
    events = make_events(
        [
            (1, utc(2026, 1, 1, 11), "login", None),
            (1, utc(2026, 1, 2, 9), "video_watch", 30.0),
            (1, utc(2026, 1, 2, 9, 30), "video_watch", None),
            (1, utc(2026, 1, 2, 10), "quiz_attempt", 80.0),
            (1, utc(2026, 1, 5, 10), "quiz_attempt", 60.0),
            (1, utc(2026, 1, 5, 11), "payment_success", 19.99),
            (1, utc(2026, 1, 9, 3), "payment_failed", None),
            (1, utc(2026, 1, 20, 7), "login", None),
            (3, utc(2026, 1, 2, 4), "payment_failed", None),
        ]
    )
    # Ingested 90 s after it happened, i.e. on the next day: the row of its day gets a later version with it.
    late = (events.user_id == 1) & (events.event_type == "quiz_attempt") & (events.value == 80.0)
    events.loc[late, "event_timestamp"] = utc(2026, 1, 2, 23, 59, 30)
    events.loc[late, "ingested_at"] = utc(2026, 1, 3, 0, 1)
    write_validated(settings.paths, users, events)
    build_features(settings)
    return settings


def test_windows_means_ratios_recency_and_trends_match_hand_computation(small_world: Settings) -> None:
    snaps = read_snapshots(small_world)

    jan5 = row(snaps, 1, date(2026, 1, 5))  # 7d window: Dec 30 .. Jan 5
    assert (jan5.active_days_7d, jan5.sessions_7d, jan5.videos_watched_7d) == (3, 1, 2)
    assert jan5.watch_minutes_7d == pytest.approx(30.0)  # the NULL-valued watch counts, adds nothing
    assert (jan5.quiz_attempts_7d, jan5.quiz_score_mean_7d) == (2, pytest.approx(70.0))
    assert (jan5.payments_7d, jan5.amount_paid_7d) == (1, pytest.approx(19.99))
    assert jan5.payment_fail_rate_7d == 0.0
    assert (jan5.days_since_last_activity, jan5.tenure_days) == (0, 4)

    jan9 = row(snaps, 1, date(2026, 1, 9))  # 7d: Jan 3 .. Jan 9; 14d: Dec 27 .. Jan 9
    assert (jan9.active_days_7d, jan9.watch_minutes_7d, jan9.quiz_score_mean_7d) == (1, 0.0, 60.0)
    assert jan9.payment_fail_rate_7d == 0.5
    assert (jan9.active_days_14d, jan9.quiz_score_mean_14d) == (3, pytest.approx(70.0))
    assert jan9.days_since_last_activity == 4

    jan12 = row(snaps, 1, date(2026, 1, 12))  # 7d: Jan 6 .. Jan 12 (only the failed payment)
    assert jan12.active_days_7d == 0 and np.isnan(jan12.quiz_score_mean_7d)
    assert jan12.payment_fail_rate_7d == 1.0
    # last 7 days (Jan 6..12) minus the 7 before (Dec 30..Jan 5): 0 - 3 active days, 0 - 30 minutes
    assert (jan12.active_days_trend_7d, jan12.watch_minutes_trend_7d) == (-3, -30.0)

    jan16 = row(snaps, 1, date(2026, 1, 16))  # 7d: Jan 10 .. Jan 16: no payment of any kind
    assert np.isnan(jan16.payment_fail_rate_7d) and jan16.payment_failures_14d == 1
    assert jan16.days_since_last_activity == 11

    jan20 = row(snaps, 1, date(2026, 1, 20))
    assert (jan20.sessions_7d, jan20.active_days_30d, jan20.sessions_90d, jan20.days_since_last_activity) == (
        1,
        4,
        2,
        0,
    )
    assert jan20.tenure_days == 19


def test_rows_exist_only_while_a_customer_and_never_active_recency_counts_from_signup(small_world: Settings) -> None:
    snaps = read_snapshots(small_world)
    days = snaps.groupby("user_id").event_timestamp.agg(["min", "max", "count"])
    # user 1: all 20 days; user 2: signed up Jan 3, closed during Jan 8 -> Jan 3..7;
    # user 3: closed at Jan 6 00:00 exactly -> closed at the end of Jan 5 (churn_common.population): Jan 1..4.
    assert days.loc[1].tolist() == [utc(2026, 1, 2), utc(2026, 1, 21), 20]
    assert days.loc[2].tolist() == [utc(2026, 1, 4), utc(2026, 1, 8), 5]
    assert days.loc[3].tolist() == [utc(2026, 1, 2), utc(2026, 1, 5), 4]
    user2 = snaps[snaps.user_id == 2]
    assert user2.days_since_last_activity.tolist() == [0, 1, 2, 3, 4] == user2.tenure_days.tolist()
    user3 = snaps[snaps.user_id == 3]  # a failed payment is not activity
    assert user3.days_since_last_activity.tolist() == [0, 1, 2, 3]
    assert row(snaps, 3, date(2026, 1, 2)).payment_fail_rate_7d == 1.0


def test_the_account_table_holds_each_accounts_history(small_world: Settings) -> None:
    table = accounts(small_world)
    assert table.columns.tolist() == ACCOUNT_SCHEMA.names
    closed = table[table.account_status == "closed"].set_index("user_id").valid_from
    assert closed.to_dict() == {2: utc(2026, 1, 8, 12), 3: utc(2026, 1, 6)}
    opened = table[table.account_status == "open"].set_index("user_id").valid_from
    assert opened.to_dict() == {1: utc(2026, 1, 1, 10), 2: utc(2026, 1, 3, 8), 3: utc(2026, 1, 1, 10)}
    assert (table.plan == "free").all() and (table.country == "DE").all()


def test_a_late_arrival_leaves_the_on_time_version_and_appends_one_known_from_its_day(small_world: Settings) -> None:
    versions = read_snapshots(small_world, versions="all")
    jan2 = versions[(versions.user_id == 1) & (versions.event_timestamp == utc(2026, 1, 3))].sort_values("created")
    # On time: known at the end of Jan 2, without the quiz that arrived at 00:01 on Jan 3.
    assert jan2.created.tolist() == [utc(2026, 1, 3), utc(2026, 1, 4)]
    assert jan2.quiz_attempts_7d.tolist() == [0, 1] and np.isnan(jan2.quiz_score_mean_7d.iloc[0])
    assert jan2.quiz_score_mean_7d.iloc[1] == 80.0
    # From Jan 3 on the quiz is known when the day ends: one version each.
    jan3 = versions[(versions.user_id == 1) & (versions.event_timestamp == utc(2026, 1, 4))]
    assert jan3.created.tolist() == [utc(2026, 1, 4)] and jan3.quiz_attempts_7d.tolist() == [1]
    assert (versions.created >= versions.event_timestamp).all()
    later = versions[versions.created > versions.event_timestamp]
    assert list(zip(later.user_id, later.event_timestamp, strict=True)) == [(1, utc(2026, 1, 3))]
    schema = pq.read_schema(next(small_world.paths.snapshots.glob("*/part-0.parquet")))
    assert schema.names == snapshot_columns(ELEARNING)
    assert schema.field("event_timestamp").type == TS and schema.field("created").type == TS


# ------------------------------------------------------------------------------- independent re-computation


def random_world(seed: int, n_users: int = 12, n_days: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    users = make_users(n_users)
    users["signup_at"] = [utc(2026, 1, 1) + pd.Timedelta(hours=int(h)) for h in rng.integers(0, 24 * 20, n_users)]
    users["signup_at"] = users["signup_at"].astype("datetime64[us, UTC]")
    closing = [utc(2026, 1, 25) + pd.Timedelta(hours=int(h)) if rng.random() < 0.3 else None for h in range(n_users)]
    users["closed_at"] = pd.Series(closing, dtype="datetime64[us, UTC]")
    n_events = 600
    types = rng.choice(ELEARNING.names, n_events)
    value = np.round(rng.uniform(0, 100, n_events), 3)
    has_value = np.isin(types, ["video_watch", "quiz_attempt", "payment_success"]) & (rng.random(n_events) < 0.8)
    stamps = utc(2026, 1, 1) + pd.to_timedelta(rng.integers(0, n_days * 86_400, n_events), unit="s")
    rows = list(
        zip(rng.integers(1, n_users + 1, n_events), stamps, types, np.where(has_value, value, None), strict=True)
    )
    events = make_events(rows)
    events["ingested_at"] += pd.to_timedelta(rng.integers(0, 3 * 86_400, n_events), unit="s")
    return users, events


def pandas_windows(events: pd.DataFrame, catalog: EventCatalog, days: pd.DatetimeIndex) -> pd.DataFrame:
    """Every window feature, by reindexing per-day counts onto a full calendar and summing `rolling(w)`."""
    frame = events.assign(day=events.event_timestamp.dt.tz_localize(None).dt.normalize())
    base = {"act": frame[frame.event_type.isin(catalog.activity_types)].groupby(["user_id", "day"]).size() > 0}
    for t in catalog.event_types:
        of_type = frame[frame.event_type == t.name].groupby(["user_id", "day"]).value
        base[f"count:{t.name}"], base[f"sum:{t.name}"], base[f"n:{t.name}"] = (
            of_type.size(),
            of_type.sum(),
            of_type.count(),
        )
    daily = pd.DataFrame(base).fillna(0).astype(float)
    out = []
    for user_id, per_user in daily.groupby(level="user_id"):
        full = per_user.droplevel("user_id").reindex(days, fill_value=0.0)
        for w in catalog.windows:
            rolled = full.rolling(w, min_periods=1).sum()
            features = {"user_id": user_id, "day": days, "window": w, "active_days": rolled["act"]}
            for t in catalog.event_types:
                features[t.count_feature] = rolled[f"count:{t.name}"]
                if t.value_aggregate == "mean":
                    features[t.value_feature] = rolled[f"sum:{t.name}"] / rolled[f"n:{t.name}"].replace(0, np.nan)
                elif t.value_feature:
                    features[t.value_feature] = rolled[f"sum:{t.name}"]
            for r in catalog.ratios:
                denominator = sum(rolled[f"count:{name}"] for name in r.denominator).replace(0, np.nan)
                features[r.feature] = rolled[f"count:{r.numerator}"] / denominator
            out.append(pd.DataFrame(features).reset_index(drop=True))
    return pd.concat(out, ignore_index=True)


def test_every_window_feature_equals_an_independent_pandas_computation(settings: Settings) -> None:
    users, events = random_world(seed=3, n_days=130)
    write_validated(settings.paths, users, events)
    build_features(settings)
    snaps = read_snapshots(settings)
    # Through the last day anything arrived on (late events arrive up to 3 days after the last event).
    days = pd.date_range("2026-01-01", events.ingested_at.max().tz_localize(None).normalize(), freq="D")
    expected = pandas_windows(events, ELEARNING, days)

    # Rows: exactly the customer days (signup_at < end of D < closed_at).
    customer = users.merge(pd.DataFrame({"day": days}), how="cross")
    end = customer.day.dt.tz_localize("UTC") + pd.Timedelta(days=1)
    customer = customer[(customer.signup_at < end) & (customer.closed_at.isna() | (customer.closed_at > end))]
    assert sorted(zip(snaps.user_id, snaps.event_timestamp, strict=True)) == sorted(
        zip(customer.user_id, end[customer.index], strict=True)
    )

    snaps["day"] = snaps.event_timestamp.dt.tz_localize(None) - pd.Timedelta(days=1)
    checked = 0
    for w in ELEARNING.windows:
        want = expected[expected.window == w].set_index(["user_id", "day"])
        got = snaps.set_index(["user_id", "day"])
        want = want.reindex(got.index).fillna({"active_days": 0})  # users with no events at all
        for stem in ELEARNING.window_stems():
            mine, theirs = got[f"{stem}_{w}d"].to_numpy(float), want[stem].to_numpy(float)
            no_events = np.isnan(theirs) & ~want.index.get_level_values(0).isin(events.user_id)
            theirs = np.where(no_events & ~np.isnan(mine), 0.0, theirs)
            np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-6, err_msg=f"{stem}_{w}d")
            checked += 1
    assert checked == len(ELEARNING.window_features())


# ------------------------------------------------------------------------ look-ahead, idempotence, late data


def test_features_of_a_day_do_not_depend_on_later_events(settings: Settings, tmp_path: Path) -> None:
    users, events = random_world(seed=5)
    cut = pd.Timestamp("2026-02-01", tz="UTC")
    write_validated(settings.paths, users, events)
    build_features(settings)
    truncated = Settings(data_dir=tmp_path / "truncated")
    write_validated(truncated.paths, users, events[events.event_timestamp < cut])
    build_features(truncated)

    full, short = read_snapshots(settings, "all"), read_snapshots(truncated, "all")
    full = full[full.event_timestamp <= cut].reset_index(drop=True)
    short = short[short.event_timestamp <= cut].reset_index(drop=True)
    assert len(short) > 0 and short.event_timestamp.max() == cut
    pd.testing.assert_frame_equal(full, short)


@pytest.mark.parametrize("seed", [4, 8])
def test_what_was_known_at_each_day_boundary_equals_a_build_from_what_had_arrived(
    settings: Settings, tmp_path: Path, seed: int
) -> None:
    """The truncation check: for every day boundary T, the newest version known at T of every row equals the row a
    build from only the events that had arrived by T computes. Late data on: about half the events arrive late."""
    users, events = random_world(seed=seed, n_users=20, n_days=40)
    assert (events.ingested_at.dt.floor("D") > events.event_timestamp.dt.floor("D")).mean() > 0.3
    write_validated(settings.paths, users, events)
    build_features(settings)
    versions = read_snapshots(settings, "all")
    assert (versions.created > versions.event_timestamp).sum() > 100
    for day in range(2, 44):
        instant = pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=day)
        arrived = Settings(data_dir=tmp_path / f"arrived-{day}")
        write_validated(arrived.paths, users, events[events.ingested_at < instant])
        build_features(arrived, end=(instant - pd.Timedelta(days=1)).date())
        expected = known_at(read_snapshots(arrived, "all"), instant)
        got = known_at(versions, instant)
        key = ["user_id", "event_timestamp"]
        pd.testing.assert_frame_equal(
            got.drop(columns="created").sort_values(key).reset_index(drop=True),
            expected.drop(columns="created").sort_values(key).reset_index(drop=True),
            obj=f"rows known at {instant}",
        )


def test_rebuilding_a_window_gives_identical_bytes_and_an_incremental_build_equals_a_full_one(
    settings: Settings, tmp_path: Path
) -> None:
    users, events = random_world(seed=11)
    cut = pd.Timestamp("2026-02-05", tz="UTC")
    arrived = events.ingested_at < cut
    write_validated(settings.paths, users, events[arrived])
    build_features(settings)
    first_build = file_bytes(settings.paths.features)
    build_features(settings, date(2026, 1, 20), date(2026, 1, 30))
    assert file_bytes(settings.paths.features) == first_build

    # The next days' drops: what arrived from the cut on, late events of earlier days included.
    write_validated(settings.paths, None, events[~arrived], batch="b1")
    build_features(settings, start=date(2026, 2, 5))
    fresh = Settings(data_dir=tmp_path / "fresh")
    write_validated(fresh.paths, users, events)
    build_features(fresh)
    incremental = file_bytes(settings.paths.features)
    assert incremental == file_bytes(fresh.paths.features)
    assert not [p for p in settings.paths.features.rglob("*") if p.name.startswith(".")]


def test_every_build_is_recorded_with_what_it_rewrote(settings: Settings) -> None:
    users, events = random_world(seed=2)
    write_validated(settings.paths, users, events)
    first = build_features(settings)
    second = build_features(Settings(data_dir=settings.data_dir, late_data_days=3), start=date(2026, 2, 10))
    builds = read_builds(settings.paths)
    assert [b.seq for b in builds] == [first.seq, second.seq] == [1, 2]
    assert (builds[1].first_day, builds[1].last_day) == ("2026-02-07", second.last_day.isoformat())
    assert builds[1].changed_since(SNAPSHOT_TABLE) == utc(2026, 2, 8)
    # The first build wrote every account row; the second found none new.
    assert builds[0].changed_since(ACCOUNT_TABLE) == users.signup_at.min()
    assert builds[1].changed_since(ACCOUNT_TABLE) is None
    assert read_builds(settings.paths, after=1) == builds[1:]


# --------------------------------------------------------------------------------- catalogue and schema

MUSIC = EventCatalog(
    event_types=(
        EventType("play", "plays", True, "minutes_played", "sum", 0.0, 600.0),
        EventType("skip", "skips", is_activity=True),
        EventType("subscribe_fail", "subscribe_failures", is_activity=False),
    ),
    ratios=(Ratio("skip_rate", "skip", ("play", "skip")),),
    trend_features=("minutes_played",),
    windows=(7, 28),
)


def test_a_bring_your_own_catalogue_produces_its_own_columns(settings: Settings) -> None:
    users = make_users(2)
    users["plan"] = pd.array([None, None], dtype="string")  # bring-your-own users may have no plan at all
    events = make_events(
        [
            (1, utc(2026, 1, 1, 9), "play", 3.5),
            (1, utc(2026, 1, 1, 9, 5), "skip", None),
            (1, utc(2026, 1, 3, 9), "play", 4.0),
            (2, utc(2026, 1, 9, 9), "subscribe_fail", None),
        ]
    )
    write_validated(settings.paths, users, events)
    summary = build_features(settings, catalog=MUSIC)
    snaps = read_snapshots(settings)
    assert list(snaps.columns) == snapshot_columns(MUSIC)
    assert "minutes_played_28d" in snaps and "sessions_7d" not in snaps and summary.columns == len(snaps.columns)
    jan3 = row(snaps, 1, date(2026, 1, 3))
    assert (jan3.plays_7d, jan3.minutes_played_28d, jan3.skip_rate_7d, jan3.minutes_played_trend_7d) == (
        2,
        7.5,
        pytest.approx(1 / 3),
        7.5,
    )
    assert row(snaps, 2, date(2026, 1, 9)).days_since_last_activity == 8
    assert accounts(settings).plan.isna().all()


def test_the_snapshot_schema_rejects_a_negative_count(small_world: Settings) -> None:
    schema = snapshot_schema(ELEARNING)
    frame = to_frame(pq.read_table(small_world.paths.snapshots / "date=2026-01-05" / "part-0.parquet"))
    validate_snapshots(frame.copy(), schema)
    frame.loc[0, "sessions_7d"] = -1
    with pytest.raises(SchemaError, match="sessions_7d"):
        validate_snapshots(frame, schema)


def with_value(table: pa.Table, name: str, value: object, row: int = 0) -> pa.Table:
    field = table.schema.field(name)
    values = table[name].to_pylist()
    values[row] = value
    return table.set_column(table.schema.get_field_index(name), field, pa.array(values, field.type))


def retyped(table: pa.Table, name: str, arrow_type: pa.DataType) -> pa.Table:
    field = pa.field(name, arrow_type)
    return table.set_column(table.schema.get_field_index(name), field, pc.cast(table[name], arrow_type))


BROKEN_TABLES = {
    "negative count": lambda t: with_value(t, "sessions_7d", -1),
    "more active days than the window": lambda t: with_value(t, "active_days_7d", 8),
    "mean above value_max": lambda t: with_value(t, "quiz_score_mean_30d", 100.5),
    "negative value sum": lambda t: with_value(t, "amount_paid_90d", -0.01),
    "ratio above 1": lambda t: with_value(t, "payment_fail_rate_14d", 1.5),
    "null in a non-nullable float": lambda t: with_value(t, "watch_minutes_7d", None),
    "NaN in a non-nullable float": lambda t: with_value(t, "watch_minutes_7d", float("nan")),
    "null in a non-nullable integer": lambda t: with_value(t, "tenure_days", None),
    "null in a non-nullable timestamp": lambda t: with_value(t, "created", None),
    "created before the end of the day": lambda t: with_value(t, "created", utc(2026, 1, 5)),
    "duplicate user and day": lambda t: pa.concat_tables([t, t.slice(0, 1)]),
    "duplicate next to its twin": lambda t: pa.concat_tables([t.slice(0, 1), t]),
    "nanosecond timestamps": lambda t: retyped(t, "event_timestamp", pa.timestamp("ns", tz="UTC")),
    "naive timestamps": lambda t: retyped(t, "created", pa.timestamp("us")),
    "int32 count": lambda t: retyped(t, "sessions_7d", pa.int32()),
    "a float in an integer column": lambda t: retyped(t, "tenure_days", pa.float64()),
    "a column missing": lambda t: t.drop_columns(["payments_14d"]),
    "an extra column": lambda t: t.append_column("extra", pa.array([0] * t.num_rows)),
    "columns out of order": lambda t: t.select([*t.column_names[1:], t.column_names[0]]),
}
ACCEPTED_TABLES = {
    "unchanged": lambda t: t,
    "NaN in a nullable mean": lambda t: with_value(t, "quiz_score_mean_7d", float("nan")),
    "null in a nullable ratio": lambda t: with_value(t, "payment_fail_rate_90d", None),
    "no rows": lambda t: t.slice(0, 0),
    "rows in another order": lambda t: t.take([1, 0]),
    "a later version of a row": lambda t: pa.concat_tables([t, with_value(t.slice(0, 1), "created", utc(2026, 1, 9))]),
}


@pytest.mark.parametrize("break_it", BROKEN_TABLES.values(), ids=BROKEN_TABLES.keys())
def test_the_vectorised_check_rejects_what_pandera_rejects(small_world: Settings, break_it) -> None:
    schema = snapshot_schema(ELEARNING)
    table = break_it(pq.read_table(small_world.paths.snapshots / "date=2026-01-05" / "part-0.parquet"))
    with pytest.raises(SchemaError):
        validate_snapshots(to_frame(table), schema)
    with pytest.raises(SchemaError):
        check_arrow(table, schema)


@pytest.mark.parametrize("change", ACCEPTED_TABLES.values(), ids=ACCEPTED_TABLES.keys())
def test_the_vectorised_check_accepts_what_pandera_accepts(small_world: Settings, change) -> None:
    schema = snapshot_schema(ELEARNING)
    table = change(pq.read_table(small_world.paths.snapshots / "date=2026-01-05" / "part-0.parquet"))
    validate_snapshots(to_frame(table), schema)
    check_arrow(table, schema)


def test_a_schema_rule_without_a_vectorised_form_is_refused_not_skipped(small_world: Settings) -> None:
    schema = snapshot_schema(ELEARNING)
    custom = schema.update_column("sessions_7d", checks=[pandera.Check(lambda s: s < 1_000, name="below_1000")])
    table = pq.read_table(small_world.paths.snapshots / "date=2026-01-05" / "part-0.parquet")
    with pytest.raises(TypeError, match="below_1000"):
        check_arrow(table, custom)


def test_a_users_table_with_a_wrong_type_is_a_schema_error(settings: Settings) -> None:
    users = make_users(1)
    users["signup_at"] = users["signup_at"].astype(str)
    write_validated(settings.paths, users, make_events([(1, utc(2026, 1, 1, 9), "login", None)]))
    with pytest.raises(SchemaError, match="signup_at"):
        build_features(settings)


def test_cli_build_reports_what_the_snapshots_hold(small_world: Settings) -> None:
    # Mounted like jobs/cli.py mounts it, without importing every other stage's commands.
    root = typer.Typer()
    root.add_typer(feature_commands.app, name="features")
    result = CliRunner().invoke(root, ["features", "build", "--start", "2026-01-10"])
    assert result.exit_code == 0, result.output
    assert str(small_world.paths.snapshots) in result.output
    assert "build 2: rebuilt days 2026-01-03 .. 2026-01-20" in result.output
    # Jan 3..20: user 1 every day (18), user 2 through Jan 7 (5), user 3 through Jan 4 (2); the one later version
    # is of Jan 2, before the days rebuilt.
    assert "25 snapshot rows written (0 later versions)" in result.output
    assert "3 users, 59 columns, days 2026-01-01 .. 2026-01-20" in result.output


def test_a_catalogue_that_declares_none_of_the_datas_events_fails_loudly(settings: Settings) -> None:
    # E-learning events built with the music catalogue: every feature would be 0. The build refuses, writes nothing.
    write_validated(settings.paths, make_users(2), make_events([(1, utc(2026, 1, 1, 9), "login", None)]))
    with pytest.raises(DataError, match="none of the 1 validated events .* is of a type the catalogue declares"):
        build_features(settings, catalog=MUSIC)
    assert not settings.paths.snapshots.exists() or not any(settings.paths.snapshots.rglob("*.parquet"))
