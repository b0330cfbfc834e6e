"""What the online store holds, read back by the materialisation job: its watermark and per-user timestamps.

Feast's online-store API cannot say which entities a view holds or as of when, so each supported store is read in
the layout Feast writes: Redis, one hash per entity (serialised entity key + project) with a ``_ts:<view>`` field
per view; SQLite, a table ``<project>_<view>`` with a row per entity and feature and its ``event_ts``. The watermark
(which build the store holds) lives in the store itself, so a store that lost its data has lost its watermark too.
"""

import json
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Protocol

import numpy as np
import pyarrow as pa
import redis
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.timestamp_pb2 import Timestamp

from churn_common.errors import ConfigurationError, FeatureStoreError, FeatureStoreUnavailable
from churn_common.feast_plugins.engine import hmget_many
from churn_common.names import JOIN_KEY

_INT64_BYTES = 8


@dataclass(frozen=True)
class Watermark:
    """The build whose rows the online store holds up to the instant ``end``, and the newest event time it holds
    per source."""

    build: int
    newest: dict[str, str]
    end: str
    written_at: str

    def newest_of(self, source: str) -> datetime | None:
        value = self.newest.get(source)
        return datetime.fromisoformat(value) if value else None

    @property
    def loaded_until(self) -> datetime:
        return datetime.fromisoformat(self.end)


def _watermark(raw: str | bytes) -> Watermark | None:
    """A stored watermark; one this version cannot read counts as none (the store is then refilled)."""
    try:
        return Watermark(**json.loads(raw))
    except (TypeError, ValueError):
        return None


class OnlineState(Protocol):
    def watermark(self) -> Watermark | None: ...

    def set_watermark(self, watermark: Watermark) -> None: ...

    def timestamps(self, views: Sequence[str], user_ids: np.ndarray) -> np.ndarray:
        """(user, view) event times the store holds, in epoch seconds; 0 where it holds nothing."""
        ...


def _key_prefix() -> bytes:
    template = serialize_entity_key(EntityKeyProto(join_keys=[JOIN_KEY], entity_values=[ValueProto(int64_val=0)]), 3)
    return template[:-_INT64_BYTES]


def _entity_id(serialized: bytes) -> int:
    return int.from_bytes(serialized[-_INT64_BYTES:], "little", signed=True)


class RedisState:
    def __init__(self, config: RedisOnlineStoreConfig, project: str) -> None:
        # The client Feast itself would open for this config.
        self._client = RedisOnlineStore()._get_client(config)
        self._project = project.encode()
        # Ends with the project like Feast's own keys: whatever removes a project's keys removes this one too.
        self._watermark_key = b"_churn_watermark:" + self._project

    def watermark(self) -> Watermark | None:
        raw = self._call(self._client.get, self._watermark_key)
        return None if raw is None else _watermark(raw)

    def set_watermark(self, watermark: Watermark) -> None:
        self._call(self._client.set, self._watermark_key, json.dumps(asdict(watermark)))

    def timestamps(self, views: Sequence[str], user_ids: np.ndarray) -> np.ndarray:
        prefix, fields = _key_prefix(), [f"_ts:{view}".encode() for view in views]
        keys = pa.array(
            [
                prefix + user_id.to_bytes(_INT64_BYTES, "little", signed=True) + self._project
                for user_id in user_ids.tolist()
            ],
            pa.large_binary(),
        )
        try:
            replies = hmget_many(self._client, keys, fields)
        except (redis.RedisError, FeatureStoreError) as exc:
            raise FeatureStoreUnavailable(f"online store (Redis) failed: {type(exc).__name__}: {exc}") from exc
        parsed: dict[bytes | None, int] = {None: 0}
        seconds = [[parsed[v] if v in parsed else parsed.setdefault(v, _seconds(v)) for v in row] for row in replies]
        return np.array(seconds, dtype=np.int64).reshape(len(user_ids), len(views))

    def _call(self, method, *args):
        try:
            return method(*args)
        except redis.RedisError as exc:
            raise FeatureStoreUnavailable(f"online store (Redis) failed: {type(exc).__name__}: {exc}") from exc


def _seconds(serialized: bytes) -> int:
    stamp = Timestamp()
    stamp.ParseFromString(serialized)
    return stamp.seconds


class SqliteState:
    def __init__(self, store: FeatureStore) -> None:
        self._path = SqliteOnlineStore._get_db_path(store.config)
        self._project = store.project

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path)

    @property
    def _watermark_table(self) -> str:
        return f'"{self._project}__churn_watermark"'

    def watermark(self) -> Watermark | None:
        with closing(self._connect()) as con:
            try:
                row = con.execute(f"SELECT body FROM {self._watermark_table} WHERE id = 1").fetchone()
            except sqlite3.OperationalError:  # no such table: never written, or the file was replaced
                return None
        return None if row is None else _watermark(row[0])

    def set_watermark(self, watermark: Watermark) -> None:
        with closing(self._connect()) as con, con:
            con.execute(f"CREATE TABLE IF NOT EXISTS {self._watermark_table} (id INTEGER PRIMARY KEY, body TEXT)")
            con.execute(
                f"INSERT OR REPLACE INTO {self._watermark_table} (id, body) VALUES (1, ?)",
                [json.dumps(asdict(watermark))],
            )

    def timestamps(self, views: Sequence[str], user_ids: np.ndarray) -> np.ndarray:
        position = {int(user_id): row for row, user_id in enumerate(user_ids.tolist())}
        seconds = np.zeros((len(user_ids), len(views)), dtype=np.int64)
        with closing(self._connect()) as con:
            for column, view in enumerate(views):
                for key, event_ts in self._newest_rows(con, view):
                    row = position.get(_entity_id(key))
                    if row is not None:
                        seconds[row, column] = event_ts
        return seconds

    def _newest_rows(self, con: sqlite3.Connection, view: str) -> list[tuple[bytes, int]]:
        """(serialised entity key, event time in epoch seconds): Feast's adapter stores datetimes as integers."""
        table = f'"{self._project}_{view}"'
        try:
            return con.execute(f"SELECT entity_key, max(event_ts) FROM {table} GROUP BY entity_key").fetchall()
        except sqlite3.OperationalError:  # the view's table is gone: it holds nothing
            return []


def online_state(store: FeatureStore) -> OnlineState:
    config = store.config.online_store
    if isinstance(config, RedisOnlineStoreConfig):
        return RedisState(config, store.project)
    if isinstance(config, SqliteOnlineStoreConfig):
        return SqliteState(store)
    raise ConfigurationError(f"materialisation cannot verify an online store of type {type(config).__name__}")
