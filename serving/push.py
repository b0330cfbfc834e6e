"""The push path: today's events into the ``user_activity_today`` row online, accumulated per user and day.

A push reads what the user's row holds, adds the batch (``transformations.today.today_rows``) and writes the row back:
a read-modify-write, which two pushes for one user must not interleave (the second would overwrite the first's
events). Two writers share one interface:

- ``RedisTodayWriter`` (the redis and production profiles) runs the whole request as one Lua script inside Redis, so
  it is atomic whatever the number of API pods and needs no lock: it checks every user of the request first (an
  account online; not closed before the events; no row of a later day), then adds each user's batch to the row the
  hash holds and writes it back, all or nothing. It writes Feast's own Redis layout (the hash of the entity key,
  fields ``murmur3(view:feature)`` and ``_ts:view``, values serialised ``ValueProto``), byte for byte what
  ``store.push`` writes for the same row (tests/serving/test_push.py), so Feast's reads and the API's read it back.
  Feast's own push could not be made safe here: it reads the stored event time and writes in two round trips (two
  writers both pass the check), and it silently drops a row whose event time is not later than the stored one, which
  a later push of an earlier event of the day is.
- ``FeastTodayWriter`` (any other online store: the embedded SQLite profile, which is one process) reads the row
  through Feast, adds the batch with the same rule in Python (``add_rows``) and writes it with ``store.push(...,
  to=PushMode.ONLINE)``, one push at a time behind a lock.
"""

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, Protocol

import anyio.to_thread
import hiredis
import pyarrow as pa
from feast import FeatureStore, FeatureView
from feast.data_source import PushMode
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from churn_common.catalog import EventCatalog
from churn_common.errors import ChurnError, ConfigurationError, FeatureStoreUnavailable
from churn_common.names import (
    ACCOUNT_STATUS,
    ACCOUNT_TABLE,
    JOIN_KEY,
    TIMESTAMP_FIELD,
    TODAY_PUSH_SOURCE,
    TODAY_TABLE,
)
from churn_common.online import ContextRow
from churn_common.population import CLOSED
from serving.features import context_view, user_key_prefix
from serving.redis_pipe import RedisPipe
from serving.today import TodayPresenter
from transformations.today import (
    MEASURE_TAG,
    VALUE_SCALE,
    add_rows,
    day_bounds,
    today_fields,
    with_values,
)

logger = logging.getLogger(__name__)

_US = 1_000_000
_KINDS = {"count": "c", "value": "v", "flag": "f"}


class PushRefused(ChurnError):
    """A user of the request cannot take its events; nothing of the request was written."""

    def __init__(self, user_id: int, why: str) -> None:
        super().__init__(f"user {user_id}: {why}")
        self.user_id = user_id


class UnknownUser(PushRefused):
    pass


class ClosedBefore(PushRefused):
    pass


class LaterDay(PushRefused):
    pass


class TodayWriter(Protocol):
    async def add(self, rows: pa.Table, day: date, deadline: float | None = None) -> list[ContextRow]:
        """Add ``rows`` (``today_rows`` of one day, sums in micro-units) to what the store holds; the rows written."""


def _epoch_us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds


def check_view(view: FeatureView, catalog: EventCatalog) -> list[tuple[str, str]]:
    """(feature, kind letter) of the registered view, which must be the catalogue's today fields."""
    expected = sorted(field.name for field in today_fields(catalog))
    registered = sorted(field.name for field in view.features)
    if registered != expected:
        raise ConfigurationError(
            f"the registered {view.name} view has features {registered}, the catalogue's today view {expected}: "
            "run `churn features apply`"
        )
    return [(field.name, _KINDS[field.tags[MEASURE_TAG]]) for field in view.features]


def _as_row(user_id: int, newest_us: int, totals: Sequence[int], fields: Sequence[tuple[str, str]]) -> ContextRow:
    values: dict[str, Any] = {}
    for (name, kind), total in zip(fields, totals, strict=True):
        values[name] = total / VALUE_SCALE if kind == "v" else (bool(total) if kind == "f" else int(total))
    as_of = datetime.fromtimestamp(newest_us // _US, UTC).replace(microsecond=newest_us % _US)
    return ContextRow(values, as_of)


# ------------------------------------------------------------------------------------------------ Redis

# KEYS: the users' hashes. ARGV: day start and end (µs), the number of today fields F, their Redis fields, their kinds
# (c count, v value sum, f flag), the view's timestamp field, the account view's timestamp and status fields, the
# serialised "closed" status; then per key its newest event (µs) and F deltas (sums in micro-units).
# Lua numbers are doubles: counts, micro-unit sums and microsecond times stay exact below 2^53.
TODAY_SCRIPT = r"""
local function varint(s, pos)
  local value, scale = 0, 1
  while true do
    local b = string.byte(s, pos)
    value = value + (b % 128) * scale
    pos = pos + 1
    if b < 128 then return value, pos end
    scale = scale * 128
  end
end
local function encode_varint(v)
  local out = {}
  while v >= 128 do
    out[#out + 1] = string.char(v % 128 + 128)
    v = math.floor(v / 128)
  end
  out[#out + 1] = string.char(v)
  return table.concat(out)
end
-- google.protobuf.Timestamp: seconds (field 1) and nanos (field 2), each left out when 0
local function timestamp_us(raw)
  if not raw then return nil end
  local seconds, nanos, pos = 0, 0, 1
  while pos <= #raw do
    local tag = string.byte(raw, pos)
    local v
    v, pos = varint(raw, pos + 1)
    if tag == 8 then seconds = v elseif tag == 16 then nanos = v end
  end
  return seconds * 1000000 + math.floor(nanos / 1000)
end
local function encode_timestamp(us)
  local seconds = math.floor(us / 1000000)
  local nanos = (us - seconds * 1000000) * 1000
  local out = ""
  if seconds ~= 0 then out = "\8" .. encode_varint(seconds) end
  if nanos ~= 0 then out = out .. "\16" .. encode_varint(nanos) end
  return out
end
-- feast.types.Value: int64_val (field 4), double_val (field 5), bool_val (field 7); a sum back in micro-units
local function decode(kind, raw)
  if not raw or raw == "" then return 0 end
  if kind == "v" then return math.floor(struct.unpack("<d", raw, 2) * 1000000 + 0.5) end
  return (varint(raw, 2))
end
local function encode(kind, v)
  if kind == "v" then return "\41" .. struct.pack("<d", v / 1000000) end
  if kind == "f" then return "\56" .. encode_varint(v) end
  return "\32" .. encode_varint(v)
end

local day_start, day_end, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local fields, kinds = {}, {}
for i = 1, n do fields[i] = ARGV[3 + i]; kinds[i] = ARGV[3 + n + i] end
local base = 3 + 2 * n
local ts_field, account_ts, status_field, closed = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3], ARGV[base + 4]
local first, width = base + 5, n + 1

-- Every user is checked before anything is written: a request is applied whole or not at all.
local stored = {}
for k = 1, #KEYS do
  local newest = tonumber(ARGV[first + (k - 1) * width])
  local row = redis.call("HMGET", KEYS[k], account_ts, status_field, ts_field, unpack(fields))
  if not row[1] then return {"unknown_user", k} end
  if row[2] == closed and newest > timestamp_us(row[1]) then return {"closed", k} end
  local row_us = timestamp_us(row[3])
  if row_us and row_us >= day_end then return {"later_day", k} end
  stored[k] = row
end

local out = {"ok"}
for k = 1, #KEYS do
  local arg = first + (k - 1) * width
  local row = stored[k]
  local row_us = timestamp_us(row[3])
  local same_day = row_us ~= nil and row_us >= day_start
  local newest = tonumber(ARGV[arg])
  if same_day and row_us > newest then newest = row_us end
  local hset, totals = {ts_field, encode_timestamp(newest)}, {newest}
  for i = 1, n do
    local v = tonumber(ARGV[arg + i])
    if same_day then
      local before = decode(kinds[i], row[3 + i])
      if kinds[i] == "f" then v = math.max(v, before) else v = v + before end
    end
    hset[#hset + 1] = fields[i]
    hset[#hset + 1] = encode(kinds[i], v)
    totals[#totals + 1] = v
  end
  redis.call("HSET", KEYS[k], unpack(hset))
  out[#out + 1] = totals
end
return out
"""


class TodayScript:
    """The script's arguments for a batch of rows and its reply read back: shared by the API (over its pipelined
    connection) and `churn push` (over redis-py)."""

    def __init__(self, view: FeatureView, catalog: EventCatalog, project: str, key_prefix: bytes) -> None:
        self.fields = check_view(view, catalog)
        self._project = project.encode()
        self._key_prefix = key_prefix
        closed = ValueProto(string_val=CLOSED).SerializeToString()
        self._static = [
            len(self.fields),
            *(_mmh3(f"{view.name}:{name}") for name, _ in self.fields),
            *(kind for _, kind in self.fields),
            f"_ts:{view.name}".encode(),
            f"_ts:{ACCOUNT_TABLE}".encode(),
            _mmh3(f"{ACCOUNT_TABLE}:{ACCOUNT_STATUS}"),
            closed,
        ]

    def key(self, user_id: int) -> bytes:
        return self._key_prefix + user_id.to_bytes(8, "little", signed=True) + self._project

    def arguments(self, rows: pa.Table, day: date) -> list[Any]:
        """EVAL's arguments after the script: the key count, the keys, then ARGV."""
        start, end = day_bounds(day)
        users = rows[JOIN_KEY].to_pylist()
        newest = [_epoch_us(stamp) for stamp in rows[TIMESTAMP_FIELD].to_pylist()]
        deltas = [rows[name].to_pylist() for name, _ in self.fields]
        per_key = [[stamp, *(int(column[i]) for column in deltas)] for i, stamp in enumerate(newest)]
        argv = [_epoch_us(start), _epoch_us(end), *self._static, *(value for row in per_key for value in row)]
        return [len(users), *map(self.key, users), *argv]

    def result(self, reply: list[Any], users: Sequence[int]) -> list[ContextRow]:
        outcome = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if outcome != "ok":
            raise _refusal(outcome, users[int(reply[1]) - 1])
        rows = zip(users, reply[1:], strict=True)
        return [_as_row(user, totals[0], totals[1:], self.fields) for user, totals in rows]


def _refusal(outcome: str, user_id: int) -> PushRefused:
    if outcome == "unknown_user":
        return UnknownUser(user_id, "unknown_user: no account online")
    if outcome == "closed":
        return ClosedBefore(user_id, "after_closure: the account closed before these events")
    return LaterDay(user_id, "the online store holds a row of a later day than these events")


class RedisTodayWriter:
    def __init__(self, pipe: RedisPipe, script: TodayScript) -> None:
        self._pipe = pipe
        self._script = script

    async def add(self, rows: pa.Table, day: date, deadline: float | None = None) -> list[ContextRow]:
        payload = hiredis.pack_command(("EVAL", TODAY_SCRIPT, *self._script.arguments(rows, day)))
        [reply] = await self._pipe.execute(payload, 1, deadline)
        return self._script.result(reply, rows[JOIN_KEY].to_pylist())


# ------------------------------------------------------------------------------------------------ Feast


class FeastTodayWriter:
    """Any online store through Feast: read, add, ``store.push``, one request at a time in this process."""

    def __init__(self, store: FeatureStore, view: FeatureView, catalog: EventCatalog, timeout_s: float) -> None:
        self._store = store
        self._catalog = catalog
        self._fields = check_view(view, catalog)
        self._refs = [f"{view.name}:{name}" for name, _ in self._fields] + [f"{ACCOUNT_TABLE}:{ACCOUNT_STATUS}"]
        self._timeout_s = timeout_s
        self._lock = threading.Lock()

    async def add(self, rows: pa.Table, day: date, deadline: float | None = None) -> list[ContextRow]:
        try:
            async with asyncio.timeout(self._timeout_s * 10):  # a push writes too: more than a read's bound
                return await anyio.to_thread.run_sync(partial(self.add_now, rows, day))
        except TimeoutError as exc:
            raise FeatureStoreUnavailable("online store did not take the push in time") from exc

    def add_now(self, rows: pa.Table, day: date) -> list[ContextRow]:
        with self._lock:
            stored = self._stored(rows[JOIN_KEY].to_pylist(), rows, day)
            added = [add_rows(before, row, self._catalog) for before, row in zip(stored, rows.to_pylist(), strict=True)]
            table = with_values(pa.Table.from_pylist(added, schema=rows.schema), self._catalog)
            self._store.push(TODAY_PUSH_SOURCE, table.to_pandas(), to=PushMode.ONLINE)
        frame = table.to_pylist()
        return [ContextRow({name: row[name] for name, _ in self._fields}, row[TIMESTAMP_FIELD]) for row in frame]

    def _stored(self, users: list[int], rows: pa.Table, day: date) -> list[dict[str, Any] | None]:
        """Each user's row of ``day`` as the store holds it (None: none that day), after the same checks as the
        Redis script."""
        start, end = day_bounds(day)
        online = self._store.get_online_features(features=self._refs, entity_rows=[{JOIN_KEY: u} for u in users])
        found = online.to_dict(include_event_timestamps=True)
        first = self._fields[0][0]
        stored = []
        for i, (user, newest) in enumerate(zip(users, rows[TIMESTAMP_FIELD].to_pylist(), strict=True)):
            _check_account(user, found[ACCOUNT_STATUS][i], found[f"{ACCOUNT_STATUS}__ts"][i], newest)
            seconds = found[f"{first}__ts"][i]
            row_time = datetime.fromtimestamp(seconds, UTC) if seconds else None
            if row_time is not None and row_time >= end:
                raise LaterDay(user, "the online store holds a row of a later day than these events")
            same_day = row_time is not None and row_time >= start
            stored.append(self._row(found, i, row_time) if same_day else None)
        return stored

    def _row(self, found: dict[str, list], i: int, row_time: datetime) -> dict[str, Any]:
        row = {name: found[name][i] for name, _ in self._fields}
        return row | {TIMESTAMP_FIELD: row_time, "created": row_time}


def _check_account(user: int, status: str | None, account_seconds: int | None, newest: datetime) -> None:
    if status is None:
        raise UnknownUser(user, "unknown_user: no account online")
    if status == CLOSED and account_seconds and newest.timestamp() > account_seconds:
        raise ClosedBefore(user, "after_closure: the account closed before these events")


@dataclass(frozen=True)
class Pusher:
    """What the API pushes with: the catalogue the events are checked against, the writer, and how a row reads."""

    catalog: EventCatalog
    writer: TodayWriter
    presenter: TodayPresenter


def make_pusher(store: FeatureStore, pipe: RedisPipe | None, catalog: EventCatalog, timeout_s: float) -> Pusher | None:
    """The profile's writer for the registered today view; None in a registry without one (then /events is a 503)."""
    view = context_view(store)
    if view is None:
        logger.info("no %s view in project %s: the push path is off", TODAY_TABLE, store.project)
        return None
    if pipe is None and isinstance(store.config.online_store, RedisOnlineStoreConfig):
        # Feast's Redis write drops a row not newer than the stored one and checks in a separate round trip: pushes
        # would be lost. The script needs the single node the API reads directly.
        logger.warning(
            "the push path needs a single Redis node (not %s): it is off", store.config.online_store.redis_type
        )
        return None
    if pipe is None:
        writer: TodayWriter = FeastTodayWriter(store, view, catalog, timeout_s)
    else:
        writer = RedisTodayWriter(pipe, TodayScript(view, catalog, store.project, user_key_prefix()))
    presenter = TodayPresenter.of(view)
    assert presenter is not None  # a view was given
    return Pusher(catalog, writer, presenter)
