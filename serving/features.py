"""Online feature reading for one FeatureService.

Two readers share one interface. ``RedisFeatureReader`` reads Feast's Redis layout directly over one pipelined
connection (``serving.redis_pipe``; one HMGET per user covering every view of the service), because Feast's
``get_online_features`` costs several milliseconds of Python per call. ``FeastFeatureReader`` goes through
``churn_common.online.OnlineReader`` and serves every other online store (the embedded SQLite profile). Both apply
the offline ttl rule: a view whose newest value is older than its ttl at ``now`` reads as stale, its features as
None.
"""

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio.to_thread
import hiredis
from feast import FeatureService, FeatureStore, FeatureView
from feast.errors import FeatureViewNotFoundException
from feast.infra.key_encoding_utils import serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.protos.feast.types.Value_pb2 import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from churn_common.errors import ConfigurationError, FeatureStoreUnavailable
from churn_common.names import JOIN_KEY, TODAY_TABLE
from churn_common.online import ContextRow, OnlineReader, OnlineVector, is_fresh
from serving.redis_pipe import RedisAddress, RedisPipe

logger = logging.getLogger(__name__)

_INT64_VALUE_HEADER = int(ValueType.INT64).to_bytes(4, "little") + (8).to_bytes(4, "little")
_SCAN_PAGES, _SCAN_PAGE_SIZE, _SAMPLE_KEYS = 10, 1000, 100
DECODE_CACHE_SIZE = 100_000
_View = TypeVar("_View")
_Result = TypeVar("_Result")
_PING = hiredis.pack_command(("PING",))


class FeatureReader(Protocol):
    async def read(
        self, user_ids: Sequence[int], now: datetime, deadline: float | None = None
    ) -> list[OnlineVector]: ...

    async def newest_timestamp(self) -> datetime | None: ...

    async def ping(self) -> None:
        """Return once the online store answers; FeatureStoreUnavailable if it does not within the timeout."""


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

    def value_fields(self) -> list[bytes]:
        return [_mmh3(f"{self.name}:{feature}") for feature in self.features]


def plan_views(store: FeatureStore, service: FeatureService) -> tuple[ViewPlan, ...]:
    """The views of ``service`` with the features it selects and each view's ttl (resolved once)."""
    plans = []
    for projection in service.feature_view_projections:
        ttl = store.get_feature_view(projection.name).ttl
        features = tuple(field.name for field in projection.features)
        plans.append(ViewPlan(projection.name, projection.name_to_use(), ttl or None, features))
    return tuple(plans)


def _decode_value(raw: bytes, message: ValueProto) -> Any:
    message.ParseFromString(raw)
    kind = message.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(message, kind)


def _decode_timestamp(raw: bytes) -> datetime:
    stamp = Timestamp()
    stamp.ParseFromString(raw)
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)


_ABSENT = {None: None, b"": None}


def user_key_prefix() -> bytes:
    """What every user's hash key starts with (the serialised ``user_id`` key up to its value); then the id as 8
    little-endian bytes and the project name."""
    return serialize_entity_key_prefix([JOIN_KEY]) + _INT64_VALUE_HEADER


class _Decoded(dict):
    """What Redis returned -> its parsed form, parsed once per distinct reply (a ValueProto, a Timestamp, a row of
    timestamps).

    Feature values repeat across users (counts, categories, one event time per snapshot day), so a lookup replaces
    most protobuf parses on the request path. Bounded: cleared when full, as the repeating values come back at once.
    A field Redis does not have (None) and an empty value (Feast's null) read as None.
    """

    def __init__(self, parse: Callable[[bytes], Any], limit: int = DECODE_CACHE_SIZE) -> None:
        super().__init__(_ABSENT)
        self._parse = parse
        self._limit = limit

    def __missing__(self, raw: bytes) -> Any:
        if len(self) >= self._limit:
            self.clear()
            self.update(_ABSENT)
        value = self[raw] = self._parse(raw)
        return value


_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Stamps:
    """A user's views' snapshot times (None: the view has no row), with the window of instants at which every
    view is fresh by ``is_fresh``: ``newest <= now <= min(time + ttl)``; None when a view is missing."""

    times: tuple[datetime | None, ...]
    as_of: datetime | None
    all_fresh: tuple[datetime, datetime] | None


class RedisFeatureReader:
    """Reads the hashes Feast's Redis online store writes: key = serialized entity key + project."""

    def __init__(
        self, pipe: RedisPipe | None, project: str, views: tuple[ViewPlan, ...], context: ViewPlan | None = None
    ):
        self._pipe = pipe
        self._project = project.encode()
        self._views = views
        self._names = tuple(name for view in views for name in view.features)
        # Every view's value fields in service order, then every view's timestamp: a row splits in two slices. The
        # context view's fields (today's activity) come last, in the same HMGET: the same hash, no extra round trip.
        fields = [field for view in views for field in view.value_fields()] + [view.ts_field for view in views]
        self._stamps_end = len(fields)
        self._context = context
        if context is not None:
            fields += [*context.value_fields(), context.ts_field]
        # HMGET <key> <fields...>: everything but the key is the same for every user, so it is packed once.
        self._hmget_head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fields))
        self._hmget_tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)
        self._key_prefix = user_key_prefix()
        self._values = _Decoded(partial(_decode_value, message=ValueProto()))
        self._stamps = _Decoded(_decode_timestamp)
        # Users materialised together share their row of timestamps: its parse and freshness window are kept.
        self._stamp_rows = _Decoded(self._parse_stamps)
        self._dated = frozenset(_snapshot_views(views, lambda view: view.ttl))

    def redis_key(self, user_id: int) -> bytes:
        return self._key_prefix + user_id.to_bytes(8, "little", signed=True) + self._project

    def _hmget(self, user_id: int) -> bytes:
        key = self.redis_key(user_id)
        return b"%s$%d\r\n%s\r\n%s" % (self._hmget_head, len(key), key, self._hmget_tail)

    async def read(self, user_ids: Sequence[int], now: datetime, deadline: float | None = None) -> list[OnlineVector]:
        """The users' vectors at ``now``, read by ``deadline`` (event-loop time; None: the pipe's timeout)."""
        if not user_ids:  # a command expecting no reply would never complete
            return []
        rows = await self._pipe.execute(b"".join(map(self._hmget, user_ids)), len(user_ids), deadline)
        return [self._vector(user_id, row, now) for user_id, row in zip(user_ids, rows, strict=True)]

    async def ping(self) -> None:
        await self._pipe.execute(_PING)

    def _parse_stamps(self, raw: tuple[bytes | None, ...]) -> _Stamps:
        times = tuple(map(self._stamps.__getitem__, raw))
        known = [time for time in times if time is not None]
        # The age of the features is the expiring views' (see churn_common.online.OnlineVector.as_of).
        views = zip(times, self._views, strict=True)
        as_of = max((time for time, view in views if time is not None and view in self._dated), default=None)
        if len(known) < len(times):
            return _Stamps(times, as_of, None)
        until = min(time + view.ttl if view.ttl else _NEVER for time, view in zip(times, self._views, strict=True))
        return _Stamps(times, as_of, (max(known), until))

    def _context_row(self, row: list[bytes | None]) -> ContextRow | None:
        if self._context is None:
            return None
        raw = row[self._stamps_end :]
        values = dict(zip(self._context.features, map(self._values.__getitem__, raw), strict=False))
        return ContextRow(values, self._stamps[raw[-1]])

    def _vector(self, user_id: int, row: list[bytes | None], now: datetime) -> OnlineVector:
        stamps = self._stamp_rows[tuple(row[len(self._names) : self._stamps_end])]
        # Not strict: the zip stops at the last name, before the row's timestamps.
        features = dict(zip(self._names, map(self._values.__getitem__, row), strict=False))
        context = self._context_row(row)
        window = stamps.all_fresh
        if window is not None and window[0] <= now <= window[1]:
            return OnlineVector(user_id, features, stamps.as_of, (), (), context)
        stale, missing = [], []
        for view, event_time in zip(self._views, stamps.times, strict=True):
            if event_time is not None and is_fresh(event_time, view.ttl, now):
                continue
            (missing if event_time is None else stale).append(view.label)
            features.update(dict.fromkeys(view.features))
        return OnlineVector(user_id, features, stamps.as_of, tuple(stale), tuple(missing), context)

    async def newest_timestamp(self) -> datetime | None:
        """Newest snapshot time among a bounded sample of this project's keys."""
        keys = await self._sample_keys()
        if not keys:
            return None
        fields = [view.ts_field for view in _snapshot_views(self._views, lambda view: view.ttl)]
        payload = b"".join(hiredis.pack_command(("HMGET", key, *fields)) for key in keys)
        stamps = [self._stamps[raw] for row in await self._pipe.execute(payload, len(keys)) for raw in row]
        return max((stamp for stamp in stamps if stamp is not None), default=None)

    async def _sample_keys(self) -> list[bytes]:
        # The db may hold other projects' keys, so SCAN a few pages rather than one; bounded either way.
        pattern = self._key_prefix + b"*" + self._project
        cursor, found = b"0", []
        for _ in range(_SCAN_PAGES):
            scan = hiredis.pack_command(("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_PAGE_SIZE))
            [(cursor, keys)] = await self._pipe.execute(scan, 1)
            found += keys
            if cursor == b"0" or len(found) >= _SAMPLE_KEYS:
                break
        return found[:_SAMPLE_KEYS]


class FeastFeatureReader:
    """Any online store, through Feast (run in a worker thread, bounded by the same timeout)."""

    def __init__(
        self, store: FeatureStore, service: FeatureService, timeout_s: float, context: FeatureView | None = None
    ):
        self._store = store
        self._service = service
        self._reader = OnlineReader(store, service, context)
        self._timeout_s = timeout_s
        # Feast's first read loads the registry and opens the store: paid here, not within a request's timeout. Its
        # answer is dropped, so the instant the ttl rule is applied at does not matter.
        self._reader.read([0], _NEVER)
        self._newest: datetime | None = None

    async def read(self, user_ids: Sequence[int], now: datetime, deadline: float | None = None) -> list[OnlineVector]:
        vectors = await self._in_time(partial(self._reader.read, list(user_ids), now), deadline)
        stamps = [vector.as_of for vector in vectors if vector.as_of is not None]
        if stamps:
            self._newest = max([*stamps, self._newest] if self._newest else stamps)
        return vectors

    async def ping(self) -> None:
        # A read of no one's features: the cheapest call that goes through the store (a key lookup in SQLite).
        await self._in_time(partial(self._reader.read, [0], _NEVER), None)

    async def _in_time(self, call: Callable[[], _Result], deadline: float | None) -> _Result:
        """``call`` in a worker thread, by ``deadline`` (event-loop time; None: the timeout from now)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + self._timeout_s if deadline is None else deadline):
                return await anyio.to_thread.run_sync(call)
        except TimeoutError as exc:
            raise FeatureStoreUnavailable(f"online store did not answer in time ({self._timeout_s}s)") from exc

    async def newest_timestamp(self) -> datetime | None:
        if self._newest is None and isinstance(self._store.config.online_store, SqliteOnlineStoreConfig):
            self._newest = await anyio.to_thread.run_sync(_sqlite_newest, self._store, self._service)
        # Other stores have no scan primitive in Feast's API: freshness is what reads have seen so far.
        return self._newest


def _snapshot_views(views: Sequence[_View], ttl: Callable[[_View], timedelta | None]) -> list[_View]:
    """The views whose age is the features' age: those that expire. A view without a ttl (the account history)
    holds changes, whose newest time says nothing about how current the snapshots are."""
    return [view for view in views if ttl(view)] or list(views)


def _sqlite_newest(store: FeatureStore, service: FeatureService) -> datetime | None:
    """The oldest of the snapshot views' newest times in Feast's SQLite tables (one table per project and view)."""
    path = Path(store.config.online_store.path)
    database = path if path.is_absolute() else Path(store.repo_path) / path
    projections = _snapshot_views(service.feature_view_projections, lambda p: store.get_feature_view(p.name).ttl)
    with closing(sqlite3.connect(database)) as con:
        newest = [
            con.execute(f'SELECT max(event_ts) FROM "{store.project}_{p.name}"').fetchone()[0] for p in projections
        ]
    return None if not newest or None in newest else datetime.fromtimestamp(min(newest), UTC)


def redis_pipe(store: FeatureStore, timeout_s: float) -> RedisPipe | None:
    """A pipelined connection to the store's Redis, addressed exactly as Feast parses its connection string, failing
    commands not answered within ``timeout_s``.

    None when the online store is not a single Redis node (then reads go through Feast)."""
    config = store.config.online_store
    if not isinstance(config, RedisOnlineStoreConfig) or config.redis_type != "redis":
        logger.info("online store %s: reading through Feast", type(config).__name__)
        return None
    if store.config.entity_key_serialization_version != 3:
        raise ConfigurationError("the direct Redis reader needs entity_key_serialization_version 3")
    nodes, options = RedisOnlineStore._parse_connection_string(config.connection_string)
    return RedisPipe(RedisAddress.from_options(nodes[0]["host"], nodes[0]["port"], options), timeout_s)


def context_view(store: FeatureStore) -> FeatureView | None:
    """The view read beside every service for people (today's activity); None in a registry from before it."""
    try:
        return store.get_feature_view(TODAY_TABLE)
    except FeatureViewNotFoundException:
        return None


def make_reader(
    store: FeatureStore, service: FeatureService, pipe: RedisPipe | None, timeout_s: float
) -> FeatureReader:
    context = context_view(store)
    if pipe is None:
        return FeastFeatureReader(store, service, timeout_s, context)
    features = () if context is None else tuple(field.name for field in context.features)
    plan = None if context is None else ViewPlan(context.name, context.name, None, features)
    return RedisFeatureReader(pipe, store.project, plan_views(store, service), plan)
