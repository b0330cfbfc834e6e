"""The direct Redis reader against Feast's own online path (``churn_common.online.read_online``), feature by
feature, for every kind of user the world holds (fresh, stale, closed, inactive, without an account, unknown), and
at instants on both sides of the ttl boundary."""

import asyncio
import math
from datetime import UTC, datetime, timedelta

import pytest
from feast.infra.online_stores.helpers import _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from churn_common.names import JOIN_KEY
from churn_common.online import OnlineVector, read_online
from churn_common.store import feature_store
from products.elearning import FEATURE_SERVICE
from serving.features import RedisFeatureReader, make_reader, redis_pipe
from tests.serving.world import FRESH_USERS, NO_ACCOUNT_USER, SNAPSHOT_USERS, STALE_USERS, UNKNOWN_USER, World

pytestmark = pytest.mark.redis
USERS = [*SNAPSHOT_USERS, UNKNOWN_USER]


def same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def assert_same(direct: list[OnlineVector], feast: list[OnlineVector]) -> None:
    assert len(direct) == len(feast)
    for mine, theirs in zip(direct, feast, strict=True):
        assert (mine.user_id, mine.as_of, mine.stale_views, mine.missing_views) == (
            theirs.user_id,
            theirs.as_of,
            theirs.stale_views,
            theirs.missing_views,
        )
        assert list(mine.features) == list(theirs.features)
        for name, value in mine.features.items():
            assert same_value(value, theirs.features[name]), (mine.user_id, name, value, theirs.features[name])


def read_both(world: World, now: datetime) -> tuple[list[OnlineVector], list[OnlineVector]]:
    store = feature_store(world.settings)
    service = store.get_feature_service(FEATURE_SERVICE)

    async def direct() -> list[OnlineVector]:
        pipe = redis_pipe(store, timeout_s=5.0)
        try:
            reader = make_reader(store, service, pipe, timeout_s=5.0)
            assert isinstance(reader, RedisFeatureReader)
            batch = await reader.read(USERS, now)
            singles = [(await reader.read([user], now))[0] for user in USERS]
            assert_same(singles, batch)
            return batch
        finally:
            await pipe.aclose()

    return asyncio.run(direct()), read_online(store, service, USERS, now)


def newest_snapshot(world: World) -> datetime:
    fresh = world.snapshots[world.snapshots["user_id"].isin(FRESH_USERS)]
    return fresh["event_timestamp"].max().to_pydatetime()


def test_same_vectors_as_feast_now(world: World):
    direct, feast = read_both(world, datetime.now(UTC))
    assert_same(direct, feast)
    # Every case the fixture was built for is really exercised.
    assert {bool(v.stale_views) for v in direct if v.user_id in STALE_USERS} == {True}
    assert all(v.usable for v in direct if v.user_id in FRESH_USERS)
    assert direct[-1].as_of is None and len(direct[-1].missing_views) == 6
    no_account = direct[USERS.index(NO_ACCOUNT_USER)]
    assert no_account.missing_views == ("user_account",) and no_account.features["account_status"] is None
    assert any(value is None for v in direct if v.usable for value in v.features.values())


@pytest.mark.parametrize("offset", [timedelta(days=2), timedelta(days=2, microseconds=1), -timedelta(microseconds=1)])
def test_same_ttl_rule_as_feast_at_the_boundaries(world: World, offset: timedelta):
    # ttl is 2 days: at +2d the newest snapshot is still fresh, a microsecond later it is stale, and a snapshot
    # from the future (now before event time) is not usable either.
    now = newest_snapshot(world) + offset
    direct, feast = read_both(world, now)
    assert_same(direct, feast)
    fresh_usable = {v.usable for v in direct if v.user_id in FRESH_USERS}
    assert fresh_usable == {offset == timedelta(days=2)}


def test_newest_timestamp_is_the_newest_snapshot(world: World):
    # The account closed a minute before the build is newer than every snapshot: it is no sign of fresh features.
    store = feature_store(world.settings)

    async def newest() -> datetime | None:
        pipe = redis_pipe(store, timeout_s=5.0)
        try:
            return await make_reader(store, store.get_feature_service(FEATURE_SERVICE), pipe, 5.0).newest_timestamp()
        finally:
            await pipe.aclose()

    assert asyncio.run(newest()) == world.snapshots["event_timestamp"].max().to_pydatetime()


@pytest.mark.parametrize("user_id", [1, 255, 256, 2**31, 2**63 - 1])
def test_redis_key_is_feasts(world: World, user_id: int):
    store = feature_store(world.settings)
    reader = RedisFeatureReader(None, store.project, ())
    entity = EntityKey(join_keys=[JOIN_KEY], entity_values=[Value(int64_val=user_id)])
    assert reader.redis_key(user_id) == _redis_key(store.project, entity, entity_key_serialization_version=3)


def test_reading_no_users_asks_redis_nothing(world: World):
    store = feature_store(world.settings)
    reader = RedisFeatureReader(None, store.project, ())  # no connection: any command would fail
    assert asyncio.run(reader.read([], datetime.now(UTC))) == []
