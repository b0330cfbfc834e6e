"""The offline store says exactly what the platform knew at each instant: the truncation check through Feast.

A generated period with late events goes through the gate and the build; then, at day boundaries T, what
``get_historical_features`` returns through the model's FeatureService (created-timestamp filter on, as training
reads it) must equal, for every user, what a build from only the data that had arrived by T computes: its newest
snapshot within the views' ttl and its account as known at T. Late data on (10 % of events 1-5 days late)."""

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from churn_common.feature_frame import normalize, service_schema
from churn_common.settings import Settings
from churn_common.store import apply_repo
from products import GeneratorConfig
from products.elearning import CATALOG as ELEARNING
from products.elearning import FEATURE_SERVICE
from products.elearning.generator import generate
from transformations.features import build_features
from transformations.validation import validate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

START, DAYS = date(2026, 3, 1), 75
TTL = timedelta(days=2)


def _arrived_by(source: Settings, instant: datetime, target: Settings) -> None:
    """The validated tables as they were at ``instant``: events that had arrived, accounts as known then."""
    events = ds.dataset(source.paths.events, format="parquet", partitioning="hive").to_table()
    events = events.filter(pc.less(events["ingested_at"], pa.scalar(instant, events["ingested_at"].type)))
    for day in np.unique(events["date"].to_numpy()):
        rows = events.filter(pc.equal(events["date"], day)).drop_columns(["date"])
        target_dir = target.paths.events / f"date={pd.Timestamp(day).date().isoformat()}"
        target_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, target_dir / "batch=arrived.parquet")
    users = pq.read_table(source.paths.users)
    signed_up = users.filter(pc.less(users["signup_at"], pa.scalar(instant, users["signup_at"].type)))
    pq.write_table(signed_up, target.paths.users)
    history = pq.read_table(source.paths.user_history)
    known = history.filter(pc.less_equal(history["created"], pa.scalar(instant, history["created"].type)))
    target.paths.user_history.mkdir(parents=True)
    pq.write_table(known, target.paths.user_history / "batch=arrived.parquet")


def _expected_at(arrived: Settings, instant: pd.Timestamp, users: list[int]) -> pd.DataFrame:
    """Per user, from a build of what had arrived: the newest snapshot in [T - ttl, T] and the account at T."""
    snapshots = pd.read_parquet(arrived.paths.snapshots)
    fresh = snapshots[(snapshots.event_timestamp <= instant) & (snapshots.event_timestamp >= instant - TTL)]
    newest = fresh.sort_values(["event_timestamp", "created"]).groupby("user_id").tail(1).set_index("user_id")
    accounts = pd.read_parquet(arrived.paths.features / "user_account")
    valid = accounts[accounts.valid_from <= instant].sort_values(["valid_from", "created"])
    account = valid.groupby("user_id").tail(1).set_index("user_id")
    return (
        newest.drop(columns=["event_timestamp", "created"])
        .join(account.drop(columns=["valid_from", "created"]), how="outer")
        .reindex(users)
    )


def test_what_training_reads_at_t_is_what_had_arrived_by_t(settings, tmp_path):
    generate(settings.paths, GeneratorConfig(160, START, DAYS, seed=3, late_share=0.1))
    end = datetime.combine(START + timedelta(days=DAYS), datetime.min.time(), UTC)
    validate(settings.paths, catalog=ELEARNING, now=end, max_quarantine_share=0.01)
    build_features(settings)
    store = apply_repo(settings)
    service = store.get_feature_service(FEATURE_SERVICE)
    schema = service_schema(service)
    users = sorted(pq.read_table(settings.paths.users)["user_id"].to_pylist())
    compared = late_rows = 0
    for offset in range(40, DAYS, 5):
        instant = pd.Timestamp(START + timedelta(days=offset), tz="UTC").as_unit("us")
        entities = pd.DataFrame({"user_id": users, "event_timestamp": instant})
        read = store.get_historical_features(entities, features=service, filter_by_created_timestamp=True).to_df()
        got = normalize(read.set_index("user_id").reindex(users), schema)
        arrived = Settings(data_dir=tmp_path / f"arrived-{offset}")
        _arrived_by(settings, instant.to_pydatetime(), arrived)
        build_features(arrived, end=(instant - timedelta(days=1)).date())
        expected = normalize(_expected_at(arrived, instant, users), schema)
        pd.testing.assert_frame_equal(got, expected, check_names=False, obj=f"features known at {instant}")
        compared += len(users)
        late_rows += int((pd.read_parquet(settings.paths.snapshots).created > instant).sum())
    assert compared == 7 * len(users)
    assert late_rows > 0  # versions created after some T existed, so the created filter was exercised
