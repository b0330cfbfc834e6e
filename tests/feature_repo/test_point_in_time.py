"""get_historical_features through the FeatureService against an independent oracle.

The oracle is a plain-Python scan of the rows implementing the point-in-time rule as documented, per source: the
newest row (by its time, then its ``created``) with time ``<= t`` (and ``created <= t`` when filtering by created
timestamp); for the snapshots also ``event_timestamp >= t - ttl``, for the account history no ttl.
"""

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from churn_common.errors import FeatureServiceNotFound, SchemaError
from churn_common.feature_frame import normalize, service_schema
from churn_common.store import apply_repo
from products.elearning import FEATURE_SERVICE
from tests.feature_repo.factories import (
    day_end,
    later_versions,
    random_accounts,
    random_snapshots,
    write_features,
)
from training.dataset import get_training_frame

TTL = timedelta(days=2)
DAYS = [date(2026, 3, 1) + timedelta(days=i) for i in range(20)]
CLOSED = {u: day_end(DAYS[15]) + timedelta(hours=4) for u in range(26, 31)}
UPGRADED = [2, 4, 6]
UPGRADE_AT = day_end(DAYS[9]) + timedelta(hours=5)


def _pick(rows: pd.DataFrame, time: str, t: pd.Timestamp, ttl: timedelta | None, filter_created: bool):
    ok = rows[time] <= t
    if ttl is not None:
        ok &= rows[time] >= t - ttl
    if filter_created:
        ok &= rows["created"] <= t
    chosen = rows[ok].sort_values([time, "created"]).tail(1)
    return chosen.iloc[0] if len(chosen) else None


def oracle(
    snapshots: pd.DataFrame, accounts: pd.DataFrame, entities: pd.DataFrame, columns, filter_created: bool
) -> pd.DataFrame:
    by_user = {
        "event_timestamp": dict(tuple(snapshots.groupby("user_id"))),
        "valid_from": dict(tuple(accounts.groupby("user_id"))),
    }
    empty = {"event_timestamp": snapshots.iloc[0:0], "valid_from": accounts.iloc[0:0]}
    ttl = {"event_timestamp": TTL, "valid_from": None}
    rows = []
    for user_id, t in zip(entities["user_id"], entities["event_timestamp"], strict=True):
        row = pd.Series(dtype=object, index=columns)
        for time, users in by_user.items():
            chosen = _pick(users.get(user_id, empty[time]), time, t, ttl[time], filter_created)
            if chosen is not None:
                picked = [c for c in columns if c in chosen.index]
                row[picked] = chosen[picked]
        rows.append(row)
    return pd.DataFrame(rows, columns=columns).reset_index(drop=True)


def versioned_snapshots() -> pd.DataFrame:
    """Daily on-time versions (created = event time) with what real builds produce around them."""
    frame = random_snapshots(range(1, 31), DAYS, seed=7, created_delay=timedelta(0))
    # Users 21-30 have a gap: no snapshots for days 8..13, longer than the ttl.
    gap = frame["user_id"].gt(20) & frame["event_timestamp"].between(day_end(DAYS[8]), day_end(DAYS[13]))
    # Users 11-30 start late: first snapshot on day 3. Users 26-30 are no customers after closing on day 16.
    late = frame["user_id"].gt(10) & frame["event_timestamp"].lt(day_end(DAYS[3]))
    gone = frame["user_id"].gt(25) & frame["event_timestamp"].gt(day_end(DAYS[15]))
    frame = frame[~gap & ~late & ~gone].reset_index(drop=True)
    versions = [
        # Day 4 of users 1-10 re-derived twice, as late events arrived 1 and 3 days later.
        later_versions(frame, range(1, 11), DAYS[4], days_late=1, seed=71),
        later_versions(frame, range(1, 11), DAYS[4], days_late=3, seed=72),
        # The last day before a gap or a closure gets a later version that is then the newest one.
        later_versions(frame, range(21, 26), DAYS[7], days_late=1, seed=73),
        later_versions(frame, range(26, 31), DAYS[15], days_late=1, seed=74),
    ]
    return pd.concat([frame, *versions], ignore_index=True)


def account_history() -> pd.DataFrame:
    """Open from before the data, closings, and upgrades to paid known a day after they took effect."""
    accounts = random_accounts(range(1, 31), seed=8, closed=CLOSED)
    accounts.loc[accounts["user_id"].isin(UPGRADED), "plan"] = "free"
    upgrades = accounts[accounts["user_id"].isin(UPGRADED)].copy()
    upgrades["valid_from"], upgrades["created"], upgrades["plan"] = UPGRADE_AT, UPGRADE_AT + timedelta(days=1), "paid"
    accounts = pd.concat([accounts, upgrades], ignore_index=True)
    return accounts.astype({"valid_from": "datetime64[us, UTC]", "created": "datetime64[us, UTC]"})


@pytest.fixture
def history(settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    snapshots, accounts = versioned_snapshots(), account_history()
    write_features(settings.paths, snapshots, accounts)
    return snapshots, accounts


def label_times(user_ids) -> pd.DataFrame:
    offsets = [
        pd.Timedelta(0),  # exactly at a snapshot instant (its on-time version is created then too)
        pd.Timedelta(hours=6),  # after an upgrade took effect, before it was known
        pd.Timedelta(hours=12),  # between two snapshots
        pd.Timedelta(days=1, hours=1),  # after a day-late version was created
        pd.Timedelta(days=1, hours=23),  # within ttl of the previous snapshot only
    ]
    days = (DAYS[1], DAYS[4], DAYS[7], DAYS[9], DAYS[10], DAYS[13], DAYS[15], DAYS[19] + timedelta(days=3))
    times = [day_end(d) + off for d in days for off in offsets]
    index = pd.MultiIndex.from_product([list(user_ids), times], names=["user_id", "event_timestamp"])
    entities = index.to_frame(index=False)
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[us, UTC]")
    entities["label"] = np.arange(len(entities), dtype="int64") % 2
    return entities.sample(frac=1.0, random_state=3).reset_index(drop=True)  # order must survive the join


def _training_frame(settings, entities: pd.DataFrame, filter_created: bool) -> tuple[pd.DataFrame, list[str]]:
    store = apply_repo(settings)
    frame = get_training_frame(store, entities, FEATURE_SERVICE, filter_by_created_timestamp=filter_created)
    return frame, service_schema(store.get_feature_service(FEATURE_SERVICE))


@pytest.mark.parametrize("filter_created", [True, False])
def test_training_frame_matches_oracle(settings, history, filter_created):
    snapshots, accounts = history
    entities = label_times(range(1, 31))
    frame, schema = _training_frame(settings, entities, filter_created)

    expected = normalize(oracle(snapshots, accounts, entities, list(schema.features), filter_created), schema)
    pd.testing.assert_frame_equal(frame[entities.columns], entities)
    pd.testing.assert_frame_equal(frame[list(schema.features)].reset_index(drop=True), expected)
    # The cases the fixture was built for are really exercised: found rows, missing rows, both.
    found = frame["sessions_7d"].notna()
    assert 0.2 < found.mean() < 0.95
    assert frame["account_status"].eq("closed").sum() > 0 and frame["account_status"].notna().all()


def test_the_created_filter_decides_versions_and_attributes(settings, history):
    """Later versions and late-known account changes: the rows where the filter changes the answer are many."""
    entities = label_times(range(1, 31))
    filtered, _ = _training_frame(settings, entities, True)
    leaky, _ = _training_frame(settings, entities, False)
    assert filtered["sessions_7d"].ne(leaky["sessions_7d"]).sum() >= 20
    # Only the labels between the upgrade (5 h after day 9) and its creation a day later: at 6 h, 12 h, 24 h, 25 h.
    assert filtered["plan"].ne(leaky["plan"]).sum() == 4 * len(UPGRADED)


def test_a_later_version_does_not_leak_with_created_filter(settings):
    """A snapshot for day D re-derived four days later (late events) carries a later ``created``; a label time
    between D's end and the re-derivation must see the on-time version, not the later one."""
    original = random_snapshots([1], DAYS[:6], seed=1, created_delay=timedelta(0))
    later = later_versions(original, [1], DAYS[4], days_late=4, seed=2)
    write_features(settings.paths, pd.concat([original, later], ignore_index=True), random_accounts([1]))
    store = apply_repo(settings)
    entities = pd.DataFrame({"user_id": [1], "event_timestamp": [day_end(DAYS[4]) + timedelta(hours=12)]})
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[us, UTC]")

    filtered = get_training_frame(store, entities, FEATURE_SERVICE, filter_by_created_timestamp=True)
    leaky = get_training_frame(store, entities, FEATURE_SERVICE, filter_by_created_timestamp=False)
    on_time = original.loc[original["event_timestamp"] == day_end(DAYS[4]), "sessions_7d"].item()
    assert filtered["sessions_7d"].item() == on_time
    assert leaky["sessions_7d"].item() == later["sessions_7d"].item() != on_time


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda e: e.assign(event_timestamp=e["event_timestamp"].dt.tz_localize(None)), "UTC"),
        (lambda e: e.assign(user_id=pd.Series([None, 2], dtype="Int64")), "user_id"),
        (lambda e: pd.concat([e.iloc[:1], e.iloc[:1]], ignore_index=True), "unique"),
        (lambda e: e.assign(label=[0, 2]), "label"),
    ],
    ids=["naive-timestamps", "null-key", "duplicates", "bad-label"],
)
def test_entity_frame_is_checked_before_the_join(settings, history, mutate, message):
    store = apply_repo(settings)
    entities = pd.DataFrame({"user_id": [1, 2], "event_timestamp": [day_end(DAYS[5])] * 2, "label": [0, 1]}).astype(
        {"event_timestamp": "datetime64[us, UTC]"}
    )
    with pytest.raises(SchemaError, match=message):
        get_training_frame(store, mutate(entities), FEATURE_SERVICE)


def test_duplicates_allowed_when_intended(settings, history):
    store = apply_repo(settings)
    entities = pd.DataFrame({"user_id": [1, 1], "event_timestamp": [day_end(DAYS[5])] * 2})
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[us, UTC]")
    frame = get_training_frame(store, entities, FEATURE_SERVICE, allow_duplicates=True)
    assert len(frame) == 2
    assert frame["sessions_7d"].iloc[0] == frame["sessions_7d"].iloc[1]


def test_unknown_feature_service_is_a_clear_error(settings, history):
    store = apply_repo(settings)
    entities = pd.DataFrame({"user_id": [1], "event_timestamp": [day_end(DAYS[5])]})
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[us, UTC]")
    with pytest.raises(FeatureServiceNotFound, match="churn_model_v9"):
        get_training_frame(store, entities, "churn_model_v9")
