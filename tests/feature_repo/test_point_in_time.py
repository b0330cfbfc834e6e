"""get_historical_features through the FeatureService against an independent oracle.

The oracle is a plain-Python scan of the snapshot rows implementing the point-in-time rule as documented:
the newest row with ``event_timestamp <= t`` and ``event_timestamp >= t - ttl`` (and ``created <= t`` when
filtering by created timestamp), ties broken by the newest ``created``.
"""

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from churn_common.errors import FeatureServiceNotFound, SchemaError
from churn_common.feature_frame import normalize, service_schema
from churn_common.names import FEATURE_SERVICE
from churn_common.store import apply_repo
from tests.feature_repo.factories import day_end, random_snapshots, write_snapshots
from training.dataset import get_training_frame

TTL = timedelta(days=2)
DAYS = [date(2026, 3, 1) + timedelta(days=i) for i in range(20)]


def oracle(snapshots: pd.DataFrame, entities: pd.DataFrame, columns, filter_created: bool) -> pd.DataFrame:
    rows = []
    by_user = dict(tuple(snapshots.groupby("user_id")))
    for user_id, t in zip(entities["user_id"], entities["event_timestamp"], strict=True):
        candidates = by_user.get(user_id, snapshots.iloc[0:0])
        ok = (candidates["event_timestamp"] <= t) & (candidates["event_timestamp"] >= t - TTL)
        if filter_created:
            ok &= candidates["created"] <= t
        chosen = candidates[ok].sort_values(["event_timestamp", "created"]).tail(1)
        rows.append(chosen[columns].iloc[0] if len(chosen) else pd.Series(dtype=object, index=columns))
    return pd.DataFrame(rows, columns=columns).reset_index(drop=True)


@pytest.fixture
def snapshots(settings) -> pd.DataFrame:
    frame = random_snapshots(range(1, 31), DAYS, seed=7)
    # Users 21-30 have a gap: no snapshots for days 8..13, longer than the ttl.
    gap = frame["user_id"].gt(20) & frame["event_timestamp"].between(day_end(DAYS[8]), day_end(DAYS[13]))
    frame = frame[~gap]
    # Users 11-30 start late: first snapshot on day 3.
    frame = frame[~(frame["user_id"].gt(10) & frame["event_timestamp"].lt(day_end(DAYS[3])))]
    write_snapshots(frame, settings.paths.snapshots)
    return frame.reset_index(drop=True)


def label_times(user_ids) -> pd.DataFrame:
    offsets = [
        pd.Timedelta(0),  # exactly at a snapshot instant
        pd.Timedelta(hours=12),  # between two snapshots
        pd.Timedelta(hours=1, seconds=1),  # just after the snapshot row was created (created = +2h)
        pd.Timedelta(days=1, hours=23),  # within ttl of the previous snapshot only
    ]
    times = [
        day_end(d) + off
        for d in (DAYS[1], DAYS[5], DAYS[10], DAYS[13], DAYS[19] + timedelta(days=3))
        for off in offsets
    ]
    index = pd.MultiIndex.from_product([list(user_ids), times], names=["user_id", "event_timestamp"])
    entities = index.to_frame(index=False)
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[us, UTC]")
    entities["label"] = np.arange(len(entities), dtype="int64") % 2
    return entities.sample(frac=1.0, random_state=3).reset_index(drop=True)  # order must survive the join


@pytest.mark.parametrize("filter_created", [True, False])
def test_training_frame_matches_oracle(settings, snapshots, filter_created):
    store = apply_repo(settings)
    entities = label_times(range(1, 31))
    frame = get_training_frame(store, entities, FEATURE_SERVICE, filter_by_created_timestamp=filter_created)
    schema = service_schema(store.get_feature_service(FEATURE_SERVICE))

    expected = normalize(oracle(snapshots, entities, list(schema.features), filter_created), schema)
    pd.testing.assert_frame_equal(frame[entities.columns], entities)
    pd.testing.assert_frame_equal(frame[list(schema.features)].reset_index(drop=True), expected)
    # The cases the fixture was built for are really exercised: found rows, missing rows, both.
    found = frame["sessions_7d"].notna()
    assert 0.2 < found.mean() < 0.95


def test_backfilled_snapshot_does_not_leak_with_created_filter(settings):
    """A snapshot for day D recomputed four days later (late events) carries a later ``created``; a label time
    between D's end and the backfill must see the original row, not the backfill."""
    original = random_snapshots([1], DAYS[:6], seed=1)
    backfill = original[original["event_timestamp"] == day_end(DAYS[4])].copy()
    backfill["sessions_7d"] = 999
    backfill["created"] = day_end(DAYS[4]) + timedelta(days=4)
    write_snapshots(original, settings.paths.snapshots)
    write_snapshots(backfill, settings.paths.snapshots, part="part-backfill")
    store = apply_repo(settings)
    entities = pd.DataFrame({"user_id": [1], "event_timestamp": [day_end(DAYS[4]) + timedelta(hours=12)]})
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[us, UTC]")

    filtered = get_training_frame(store, entities, FEATURE_SERVICE, filter_by_created_timestamp=True)
    leaky = get_training_frame(store, entities, FEATURE_SERVICE, filter_by_created_timestamp=False)
    before_backfill = original.loc[original["event_timestamp"] == day_end(DAYS[4]), "sessions_7d"].item()
    assert filtered["sessions_7d"].item() == before_backfill
    assert leaky["sessions_7d"].item() == 999


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
def test_entity_frame_is_checked_before_the_join(settings, snapshots, mutate, message):
    store = apply_repo(settings)
    entities = pd.DataFrame({"user_id": [1, 2], "event_timestamp": [day_end(DAYS[5])] * 2, "label": [0, 1]}).astype(
        {"event_timestamp": "datetime64[us, UTC]"}
    )
    with pytest.raises(SchemaError, match=message):
        get_training_frame(store, mutate(entities), FEATURE_SERVICE)


def test_duplicates_allowed_when_intended(settings, snapshots):
    store = apply_repo(settings)
    entities = pd.DataFrame({"user_id": [1, 1], "event_timestamp": [day_end(DAYS[5])] * 2})
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[us, UTC]")
    frame = get_training_frame(store, entities, FEATURE_SERVICE, allow_duplicates=True)
    assert len(frame) == 2
    assert frame["sessions_7d"].iloc[0] == frame["sessions_7d"].iloc[1]


def test_unknown_feature_service_is_a_clear_error(settings, snapshots):
    store = apply_repo(settings)
    entities = pd.DataFrame({"user_id": [1], "event_timestamp": [day_end(DAYS[5])]})
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[us, UTC]")
    with pytest.raises(FeatureServiceNotFound, match="churn_model_v9"):
        get_training_frame(store, entities, "churn_model_v9")
