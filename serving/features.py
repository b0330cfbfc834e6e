"""Online feature reading for one FeatureService.

Two readers share one interface. ``RedisFeatureReader`` reads Feast's Redis layout directly with redis.asyncio
(one HMGET per user covering every view of the service), because Feast's ``get_online_features`` costs several
milliseconds of Python per call. ``FeastFeatureReader`` goes through ``churn_common.online.OnlineReader`` and
serves every other online store (the embedded SQLite profile). Both apply the offline ttl rule: a view whose
newest value is older than its ttl at ``now`` reads as stale, its features as None.
"""

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread
import redis.asyncio as aioredis
import redis.exceptions
from feast import FeatureService, FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.protos.feast.types.Value_pb2 import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from churn_common.errors import ConfigurationError, FeatureStoreUnavailable
from churn_common.names import JOIN_KEY
from churn_common.online import OnlineReader, OnlineVector, is_fresh

logger = logging.getLogger(__name__)

_INT64_VALUE_HEADER = int(ValueType.INT64).to_bytes(4, "little") + (8).to_bytes(4, "little")
_SCAN_PAGES, _SCAN_PAGE_SIZE, _SAMPLE_KEYS = 10, 1000, 100
_REDIS_FAILURES = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, TimeoutError)


class FeatureReader(Protocol):
    async def read(self, user_ids: Sequence[int], now: datetime) -> list[OnlineVector]: ...

    async def newest_timestamp(self) -> datetime | None: ...


@dataclass(frozen=True)
class ViewPlan:
    """What to read for one feature view of the service."""

    name: str  # the view's own name, which Feast's Redis fields are derived from
    label: str  # the name the service uses for it (an alias, if any), as in OnlineVector
    ttl: timedelta | None
    features: tuple[str, ...]

    @property
    def ts_field(self) -> bytes:
        return f"_ts:{self.name}".encode()

    def hash_fields(self) -> list[bytes]:
        return [_mmh3(f"{self.name}:{feature}") for feature in self.features] + [self.ts_field]


def plan_views(store: FeatureStore, service: FeatureService) -> tuple[ViewPlan, ...]:
    """The views of ``service`` with the features it selects and each view's ttl (resolved once)."""
    plans = []
    for projection in service.feature_view_projections:
        ttl = store.get_feature_view(projection.name).ttl
        features = tuple(field.name for field in projection.features)
        plans.append(ViewPlan(projection.name, projection.name_to_use(), ttl or None, features))
    return tuple(plans)


def _decode_value(raw: bytes | None, message: ValueProto) -> Any:
    if not raw:
        return None
    message.ParseFromString(raw)
    kind = message.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(message, kind)


def _decode_timestamp(raw: bytes | None) -> datetime | None:
    if not raw:
        return None
    stamp = Timestamp()
    stamp.ParseFromString(raw)
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)


class RedisFeatureReader:
    """Reads the hashes Feast's Redis online store writes: key = serialized entity key + project."""

    def __init__(self, client: aioredis.Redis, project: str, views: tuple[ViewPlan, ...], timeout_s: float):
        self._client = client
        self._project = project.encode()
        self._views = views
        self._fields = [field for view in views for field in view.hash_fields()]
        self._key_prefix = serialize_entity_key_prefix([JOIN_KEY]) + _INT64_VALUE_HEADER
        self._timeout_s = timeout_s

    def redis_key(self, user_id: int) -> bytes:
        return self._key_prefix + user_id.to_bytes(8, "little", signed=True) + self._project

    async def read(self, user_ids: Sequence[int], now: datetime) -> list[OnlineVector]:
        if len(user_ids) == 1:
            rows = [await self._guarded(self._client.hmget(self.redis_key(user_ids[0]), self._fields))]
        else:
            pipe = self._client.pipeline(transaction=False)
            for user_id in user_ids:
                pipe.hmget(self.redis_key(user_id), self._fields)
            rows = await self._guarded(pipe.execute())
        return [self._vector(user_id, row, now) for user_id, row in zip(user_ids, rows, strict=True)]

    async def _guarded(self, call):
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except _REDIS_FAILURES as exc:
            raise FeatureStoreUnavailable(f"online store (Redis) did not answer in time: {exc!r}") from exc

    def _vector(self, user_id: int, row: list[bytes | None], now: datetime) -> OnlineVector:
        features: dict[str, Any] = {}
        message = ValueProto()
        stamps, stale, missing = [], [], []
        offset = 0
        for view in self._views:
            width = len(view.features)
            event_time = _decode_timestamp(row[offset + width])
            usable = event_time is not None and is_fresh(event_time, view.ttl, now)
            for name, raw in zip(view.features, row[offset : offset + width], strict=True):
                features[name] = _decode_value(raw, message) if usable else None
            if event_time is None:
                missing.append(view.label)
            else:
                stamps.append(event_time)
                if not usable:
                    stale.append(view.label)
            offset += width + 1
        as_of = max(stamps, default=None)
        return OnlineVector(user_id, features, as_of, tuple(stale), tuple(missing))

    async def newest_timestamp(self) -> datetime | None:
        """Newest snapshot time among a bounded sample of this project's keys."""
        keys = await self._guarded(self._sample_keys())
        if not keys:
            return None
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, [view.ts_field for view in self._views])
        stamps = [_decode_timestamp(raw) for row in await self._guarded(pipe.execute()) for raw in row]
        return max((stamp for stamp in stamps if stamp is not None), default=None)

    async def _sample_keys(self) -> list[bytes]:
        # The db may hold other projects' keys, so SCAN a few pages rather than one; bounded either way.
        pattern = self._key_prefix + b"*" + self._project
        cursor, found = 0, []
        for _ in range(_SCAN_PAGES):
            cursor, keys = await self._client.scan(cursor, match=pattern, count=_SCAN_PAGE_SIZE)
            found += keys
            if cursor == 0 or len(found) >= _SAMPLE_KEYS:
                break
        return found[:_SAMPLE_KEYS]


class FeastFeatureReader:
    """Any online store, through Feast (run in a worker thread, bounded by the same timeout)."""

    def __init__(self, store: FeatureStore, service: FeatureService, timeout_s: float):
        self._store = store
        self._service = service
        self._reader = OnlineReader(store, service)
        self._timeout_s = timeout_s
        # Feast's first read loads the registry and opens the store: paid here, not within a request's timeout.
        self._reader.read([0], datetime.now(UTC))
        self._newest: datetime | None = None

    async def read(self, user_ids: Sequence[int], now: datetime) -> list[OnlineVector]:
        try:
            async with asyncio.timeout(self._timeout_s):
                vectors = await anyio.to_thread.run_sync(self._reader.read, list(user_ids), now)
        except TimeoutError as exc:
            raise FeatureStoreUnavailable(f"online store did not answer within {self._timeout_s}s") from exc
        stamps = [vector.as_of for vector in vectors if vector.as_of is not None]
        if stamps:
            self._newest = max([*stamps, self._newest] if self._newest else stamps)
        return vectors

    async def newest_timestamp(self) -> datetime | None:
        if self._newest is None and isinstance(self._store.config.online_store, SqliteOnlineStoreConfig):
            self._newest = await anyio.to_thread.run_sync(_sqlite_newest, self._store, self._service)
        # Other stores have no scan primitive in Feast's API: freshness is what reads have seen so far.
        return self._newest


def _sqlite_newest(store: FeatureStore, service: FeatureService) -> datetime | None:
    """The oldest of the views' newest snapshot times in Feast's SQLite tables (one table per project and view)."""
    path = Path(store.config.online_store.path)
    database = path if path.is_absolute() else Path(store.repo_path) / path
    with closing(sqlite3.connect(database)) as con:
        newest = [
            con.execute(f'SELECT max(event_ts) FROM "{store.project}_{p.name}"').fetchone()[0]
            for p in service.feature_view_projections
        ]
    return None if not newest or None in newest else datetime.fromtimestamp(min(newest), UTC)


def redis_client(store: FeatureStore, max_connections: int | None = None) -> aioredis.Redis | None:
    """An asyncio client for the store's Redis, parsed exactly as Feast parses its connection string, holding at
    most ``max_connections`` connections (past that a call fails as unavailable instead of opening more).

    None when the online store is not a single Redis node (then reads go through Feast)."""
    config = store.config.online_store
    if not isinstance(config, RedisOnlineStoreConfig) or config.redis_type != "redis":
        logger.info("online store %s: reading through Feast", type(config).__name__)
        return None
    if store.config.entity_key_serialization_version != 3:
        raise ConfigurationError("the direct Redis reader needs entity_key_serialization_version 3")
    nodes, kwargs = RedisOnlineStore._parse_connection_string(config.connection_string)
    return aioredis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), max_connections=max_connections, **kwargs)


def make_reader(
    store: FeatureStore, service: FeatureService, client: aioredis.Redis | None, timeout_s: float
) -> FeatureReader:
    if client is None:
        return FeastFeatureReader(store, service, timeout_s)
    return RedisFeatureReader(client, store.project, plan_views(store, service), timeout_s)
