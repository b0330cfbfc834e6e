"""The fast Redis batch engine writes what Feast's own engine writes, byte for byte, and keeps Feast's bookkeeping;
its one deliberate difference: a row whose event time equals the stored one replaces it (Feast keeps the old)."""

from collections.abc import Iterator
from datetime import date, timedelta

import hiredis
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import redis
from feast import FeatureStore, RepoConfig
from feast.infra.compute_engines.local.compute import LocalComputeEngine
from feast.infra.online_stores.redis import _redis_key
from feast.infra.passthrough_provider import PassthroughProvider
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from churn_common.errors import FeatureStoreError
from churn_common.feast_plugins.engine import (
    RedisBatchEngine,
    RedisBatchEngineConfig,
    _Batch,
    _Commands,
    encode_timestamps,
    encode_values,
    event_time_nanos,
)
from churn_common.settings import Settings
from churn_common.store import apply_repo, repo_config
from products.elearning import FEATURE_SERVICE
from tests.conftest import TEST_REDIS_DB, unique_name
from tests.feature_repo.conftest import delete_project_keys, feast_hashes
from tests.feature_repo.factories import (
    ACCOUNT_VALID_FROM,
    day_end,
    feature_columns,
    later_versions,
    random_accounts,
    random_snapshots,
    write_features,
    write_snapshots,
)

ENGINE = {"type": "churn_common.feast_plugins.engine.RedisBatchEngine"}
DAYS = [date(2026, 4, 1) + timedelta(days=i) for i in range(4)]
USERS = range(1, 301)
STALE_USERS = range(301, 341)  # no rows in the last days
CLOSED_USERS = range(291, 311)  # an account row closing them on the second day, fresh and stale users alike
# From the account rows' valid_from on: the account view has no ttl, its rows are as old as the accounts.
START = ACCOUNT_VALID_FROM.to_pydatetime()
END = (day_end(DAYS[-1]) + timedelta(hours=3)).to_pydatetime()
NEXT_DAY = DAYS[-1] + timedelta(days=1)
NEXT_END = (day_end(NEXT_DAY) + timedelta(hours=3)).to_pydatetime()
# Per user hash: 56 snapshot features in five views, 4 account fields, one `_ts:<view>` per view.
HASH_FIELDS = 56 + 4 + 6


# --- column encoders against Feast's own serialisation ------------------------------------------------------------

ENCODER_CASES = [
    (ValueType.INT64, pa.array([0, 1, -1, 127, 128, 16_383, 16_384, 2**63 - 1, -(2**63)], pa.int64())),
    (ValueType.INT64, pa.array([0, 5, None, -3, 300], pa.int64())),
    (ValueType.INT32, pa.array([0, 1, -1, 2**31 - 1, -(2**31)], pa.int32())),
    (ValueType.DOUBLE, pa.array([0.0, -0.0, 1.5, float("nan"), float("inf"), None, 1e308, 5e-324], pa.float64())),
    (ValueType.FLOAT, pa.array([0.0, -0.0, 1.5, float("nan"), None, 3.4e38], pa.float32())),
    (ValueType.BOOL, pa.array([True, False, None], pa.bool_())),
    (ValueType.STRING, pa.array(["", "free", None, "ü€😀", "x" * 300, "free"], pa.string())),
]


@pytest.mark.parametrize(("value_type", "column"), ENCODER_CASES, ids=lambda c: str(c)[:30])
def test_column_encoding_equals_feast_value_proto_bytes(value_type, column):
    expected = [
        v.SerializeToString() for v in python_values_to_proto_values(column.to_numpy(zero_copy_only=False), value_type)
    ]
    assert encode_values(column, value_type).to_pylist() == expected


def test_timestamp_encoding_equals_feast_timestamp_bytes():
    stamps = pd.to_datetime(
        ["1970-01-01T00:00:00", "2026-03-02T00:00:00.123456", "2026-03-02T00:00:00", "1969-12-31T23:59:59.5"],
        utc=True,
        format="ISO8601",
    ).as_unit("us")
    expected = []
    for stamp in stamps:
        proto = Timestamp()
        proto.FromDatetime(stamp.to_pydatetime())
        expected.append(proto.SerializeToString())
    assert encode_timestamps(event_time_nanos(pa.array(stamps))).to_pylist() == expected


# --- RESP assembly against redis-py's own packing -------------------------------------------------------------------


class _Layout:
    """Two views of the shape _Commands reads: field names per view (``_ts:`` first)."""

    ts_fields = [b"_ts:a", b"_ts:b"]
    fields = [[b"_ts:a", b"fa1", b"fa2"], [b"_ts:b", b"fb1"]]


def _column(values: list) -> pa.Array:
    return pa.array(values, pa.large_binary())


# Nulls as b"", lengths of 0, 1-9, 10-99 and 100+ bytes: the RESP length header has 1 to 3 digits.
BATCH = _Batch(
    keys=_column([b"key-1", b"key-22", b"key-333"]),
    nanos=np.array([10, 20, 30]),
    views=[
        [
            (b"_ts:a", _column([b"t1", b"t2", b"t3"])),
            (b"fa1", _column([b"", b"x" * 9, b"y" * 10])),
            (b"fa2", _column([b"\r\n$", b"z" * 100, b""])),
        ],
        [(b"_ts:b", _column([b"t1", b"t2", b"t3"])), (b"fb1", _column([b"\x00" * 250, b"", b"v"]))],
    ],
)


def _expected(rows: list[int], views: list[list[int]], ttl: int | None) -> bytes:
    commands = []
    for row, written in zip(rows, views, strict=True):
        args = [BATCH.keys[row].as_py()]
        for view in written:
            for field, values in BATCH.views[view]:
                args += [field, values[row].as_py()]
        commands.append(hiredis.pack_command(("HSET", *args)))
        if ttl:
            commands.append(hiredis.pack_command(("EXPIRE", args[0], str(ttl))))
    return b"".join(commands)


@pytest.mark.parametrize("ttl", [None, 3_600])
def test_hset_commands_equal_redis_py_packing(ttl):
    payload, replies = _Commands(_Layout(), ttl).hset(BATCH, None)
    assert bytes(payload) == _expected([0, 1, 2], [[0, 1]] * 3, ttl)
    assert replies == 3 * (2 if ttl else 1)


@pytest.mark.parametrize("ttl", [None, 3_600])
def test_hset_commands_write_only_newer_views(ttl):
    newer = np.array([[True, False], [False, False], [False, True]])
    payload, replies = _Commands(_Layout(), ttl).hset(BATCH, newer)
    assert bytes(payload) == _expected([0, 2], [[0], [1]], ttl)
    assert replies == 2 * (2 if ttl else 1)


def test_hmget_commands_equal_redis_py_packing():
    expected = b"".join(hiredis.pack_command(("HMGET", key, b"_ts:a", b"_ts:b")) for key in BATCH.keys.to_pylist())
    assert bytes(_Commands(_Layout(), None).hmget(BATCH.keys)) == expected


def test_yaml_batch_engine_entry_resolves_to_this_engine(tmp_path):
    config = RepoConfig(
        project="engine_check",
        provider="local",
        registry=str(tmp_path / "registry.db"),
        online_store={"type": "redis", "connection_string": "127.0.0.1:6379,db=11"},
        offline_store={"type": "duckdb"},
        batch_engine=ENGINE,
        entity_key_serialization_version=3,
    )
    assert isinstance(config.batch_engine, RedisBatchEngineConfig)
    assert type(PassthroughProvider(config).batch_engine) is RedisBatchEngine


# --- the two engines side by side on real Redis -------------------------------------------------------------------


def _snapshots() -> pd.DataFrame:
    """Random snapshots plus what production data has: negative trends, huge counts, and a later version of the
    newest day (same event time, later created timestamp, other values) that must win."""
    frame = pd.concat(
        [
            random_snapshots(USERS, DAYS, seed=21, created_delay=timedelta(0)),
            random_snapshots(STALE_USERS, DAYS[:1], seed=22, created_delay=timedelta(0)),
        ],
        ignore_index=True,
    )
    rng = np.random.default_rng(23)
    frame["active_days_trend_7d"] = rng.integers(-7, 8, size=len(frame))
    frame.loc[frame.index % 11 == 0, "sessions_90d"] = 2**40
    return pd.concat([frame, later_versions(frame, range(1, 51), DAYS[-1], days_late=1, seed=24)], ignore_index=True)


def _accounts() -> pd.DataFrame:
    """Open accounts, some closed on the second day, and unicode among the categories."""
    closed = dict.fromkeys(CLOSED_USERS, day_end(DAYS[1]) - timedelta(hours=6))
    accounts = random_accounts([*USERS, *STALE_USERS], seed=25, closed=closed)
    accounts.loc[accounts.index % 7 == 0, "country"] = "Côte d’Ivoire"
    return accounts


def _settings(tmp_path, name: str) -> Settings:
    return Settings(
        data_dir=tmp_path / name,
        feast_project=unique_name("fm"),
        feast_profile="redis",
        redis_db=TEST_REDIS_DB,
        online_write_batch_size=128,  # several batches per run
    )


def _store_with_engine(settings: Settings, engine: dict[str, str]) -> FeatureStore:
    config = repo_config(settings)
    config.batch_engine_config = engine
    return FeatureStore(repo_path=str(settings.feature_repo), config=config)


def _contents(client: redis.Redis, project: str) -> dict[bytes, dict[bytes, bytes]]:
    suffix = project.encode()
    return {key[: -len(suffix)]: client.hgetall(key) for key in feast_hashes(client, project)}


@pytest.fixture
def both(tmp_path, redis_client) -> Iterator[tuple[Settings, Settings]]:
    """Settings of two projects over the same snapshots: one for Feast's default engine, one for the fast one."""
    default, fast = _settings(tmp_path, "default"), _settings(tmp_path, "fast")
    snapshots, accounts = _snapshots(), _accounts()
    try:
        for settings in (default, fast):
            write_features(settings.paths, snapshots, accounts)
            apply_repo(settings)
        yield default, fast
    finally:
        for settings in (default, fast):
            delete_project_keys(redis_client, settings.feast_project)


@pytest.fixture
def stores(both) -> tuple[FeatureStore, FeatureStore]:
    default, fast = both
    # The redis profile names our engine: the reference pins Feast's own local engine.
    default_store, fast_store = _store_with_engine(default, {"type": "local"}), _store_with_engine(fast, ENGINE)
    assert type(default_store._get_provider().batch_engine) is LocalComputeEngine
    assert type(fast_store._get_provider().batch_engine) is RedisBatchEngine
    return default_store, fast_store


def _intervals(store: FeatureStore) -> dict[str, list[tuple]]:
    """Of the views materialisation loads: the pushed today view (not online) is not among them."""
    return {fv.name: sorted(fv.materialization_intervals) for fv in store.list_feature_views() if fv.online}


@pytest.mark.redis
def test_fast_engine_writes_the_same_bytes_as_feast(stores, redis_client):
    default, fast = stores
    default.materialize(start_date=START, end_date=END)
    fast.materialize(start_date=START, end_date=END)

    expected = _contents(redis_client, default.project)
    assert len(expected) == len(USERS) + len(STALE_USERS)
    assert all(len(fields) == HASH_FIELDS for fields in expected.values())
    assert _contents(redis_client, fast.project) == expected
    assert _intervals(fast) == _intervals(default)


@pytest.mark.redis
def test_online_features_through_the_service_are_identical(stores):
    default, fast = stores
    for store in (default, fast):
        store.materialize(start_date=START, end_date=END)
    rows = [{"user_id": u} for u in [*USERS, *STALE_USERS, 99_999]]

    def read(store: FeatureStore) -> dict[str, list]:
        service = store.get_feature_service(FEATURE_SERVICE)
        return store.get_online_features(features=service, entity_rows=rows, full_feature_names=True).to_dict(
            include_event_timestamps=True
        )

    expected = read(default)
    assert read(fast) == expected
    assert sum(v is not None for v in expected["user_account__plan"]) == len(USERS) + len(STALE_USERS)
    assert sum(v == "closed" for v in expected["user_account__account_status"]) == len(CLOSED_USERS)


@pytest.mark.redis
def test_incremental_runs_continue_and_older_windows_never_overwrite(both, stores, redis_client):
    default, fast = stores
    for store in (default, fast):
        store.materialize(start_date=START, end_date=END)
    later = random_snapshots(range(1, 101), [NEXT_DAY], seed=25)
    for settings in both:
        write_snapshots(later, settings.paths.snapshots, part="part-later")

    for store in (default, fast):
        store.materialize_incremental(end_date=NEXT_END)
    assert {fv: intervals[-1] for fv, intervals in _intervals(fast).items()} == dict.fromkeys(
        _intervals(fast), (END, NEXT_END)
    )
    expected = _contents(redis_client, default.project)
    assert _contents(redis_client, fast.project) == expected

    # Re-running the first window must leave the newer values in place, as Feast's write path does. The users
    # without a newer row get their stored row again: Feast skips it, ours rewrites the same bytes.
    for store in (default, fast):
        store.materialize(start_date=START, end_date=END)
    assert _contents(redis_client, default.project) == expected
    assert _contents(redis_client, fast.project) == expected
    rows = [{"user_id": 1}, {"user_id": 200}]
    newest = fast.get_online_features(
        features=["user_status_daily:tenure_days"], entity_rows=rows, full_feature_names=True
    ).to_dict(include_event_timestamps=True)
    assert newest["user_status_daily__tenure_days__ts"] == [day_end(d).timestamp() for d in (NEXT_DAY, DAYS[-1])]


def _served(store: FeatureStore, user_ids: list[int]) -> pd.DataFrame:
    """The snapshot features the store serves for these users, read through Feast."""
    service = store.get_feature_service(FEATURE_SERVICE)
    frame = store.get_online_features(features=service, entity_rows=[{"user_id": u} for u in user_ids]).to_df()
    return frame.set_index("user_id")[feature_columns()]


@pytest.mark.redis
def test_a_later_version_at_the_stored_event_time_replaces_it_in_our_engine_only(both, stores, redis_client):
    """A later version of the newest day (late events arrived, a corrected batch) has the event time already stored.
    Feast's engine skips it (it writes only ``event_time > stored``); ours writes it (skips only ``<``)."""
    default, fast = stores
    for store in (default, fast):
        store.materialize(start_date=START, end_date=END)
    first = _contents(redis_client, default.project)
    assert _contents(redis_client, fast.project) == first
    revised_users = list(range(41, 121))  # some of them had a later version already, some not
    original = _served(default, revised_users)
    revised = later_versions(_snapshots(), revised_users, DAYS[-1], days_late=2, seed=27)
    for settings in both:
        write_snapshots(revised, settings.paths.snapshots, part="part-revised")

    for store in (default, fast):
        store.materialize(start_date=START, end_date=NEXT_END)
    # Feast's rule: nothing changed, the stored event time equals the new one.
    assert _contents(redis_client, default.project) == first
    # Ours: the revised users now get the later version, at the same event time; nobody else changed.
    expected = revised.set_index("user_id")[feature_columns()].astype(original.dtypes.to_dict())
    pd.testing.assert_frame_equal(_served(fast, revised_users), expected, check_names=False)
    assert not _served(fast, revised_users).equals(original)
    after = _contents(redis_client, fast.project)
    changed = {key for key in first if after[key] != first[key]}
    assert len(changed) == len(revised_users)
    ts_field = b"_ts:user_status_daily"
    assert all(after[key][ts_field] == first[key][ts_field] for key in changed)


@pytest.mark.redis
def test_key_ttl_seconds_is_applied_to_every_key(stores, redis_client):
    _, fast = stores
    fast.config.online_store.key_ttl_seconds = 3_600
    fast.materialize(start_date=START, end_date=END)
    keys = feast_hashes(redis_client, fast.project)
    assert len(keys) == len(USERS) + len(STALE_USERS)
    assert all(0 < redis_client.ttl(key) <= 3_600 for key in keys)


@pytest.mark.redis
def test_an_error_reply_stops_the_run_with_a_clear_error(stores, redis_client):
    _, fast = stores
    # A string where the hash of user 7 belongs: its HMGET and HSET get WRONGTYPE.
    key = _redis_key(fast.project, EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(int64_val=7)]), 3)
    redis_client.set(key, b"not a hash")
    fast.config.online_store.skip_dedup = True  # so that the error comes from the HSET stream, not the HMGETs
    with pytest.raises(FeatureStoreError, match="WRONGTYPE"):
        fast.materialize(start_date=START, end_date=END)
    fast.config.online_store.skip_dedup = False
    with pytest.raises(FeatureStoreError, match="WRONGTYPE"):
        fast.materialize(start_date=START, end_date=END)

    # The connections with unread replies were dropped, not reused: after removing the culprit, a run succeeds.
    redis_client.delete(key)
    fast.materialize(start_date=START, end_date=END)
    assert redis_client.hlen(key) == HASH_FIELDS
