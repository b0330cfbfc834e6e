"""A Feast batch engine that materialises plain feature views into Redis without per-value protobuf objects.

Feast's local engine materialises one view at a time: it reads the source once per view, builds a ValueProto
object per value, serialises each one and sends one HSET per entity per view (about 185 s per 1M users for our
five views over one snapshot table). This engine receives all views of a run in one call (``supports_batch``),
reads each source once for every view over it, streams the newest row per entity in record batches, encodes whole
Arrow columns into the exact bytes ``ValueProto.SerializeToString()`` produces, and writes one HSET per entity
holding every view. The Redis layout is Feast's own, byte for byte: one hash per entity key (serialised key +
project), fields ``murmur3(view:feature)`` and ``_ts:view``. ``key_ttl_seconds`` is kept, and so is Feast's
newer-wins rule with one change: Feast keeps the stored values unless the new event time is later than the stored
``_ts:view``; this engine keeps them only when it is earlier, so a row at the stored event time replaces them. A
snapshot day is re-derived at the same event time (a later version when late events of the day arrive, a corrected
batch), and under Feast's rule the version first written would be served for good. Within one run the newest
version is the one read (``pull_latest_features``: newest event time, then newest created time). When
``feast materialize`` drives the engine, the FeatureStore still moves view states and records materialisation
intervals, so ``materialize-incremental`` continues as before.

The Redis commands of a whole batch are assembled as RESP bytes with Arrow and numpy, not argument by argument in
redis-py, and a background thread sends them while the next batch is encoded, so the client's work overlaps the
server applying the previous batch (which is most of the time: Redis spends ~25-40 µs on a 64-field HSET).

Views it cannot encode (transformations, offline writes, non-scalar types, composite keys, another online store
or Redis Cluster, ``pull_latest_features: false``) go through Feast's local engine unchanged. Enable it in
feature_store.yaml::

    batch_engine:
      type: churn_common.feast_plugins.engine.RedisBatchEngine
"""

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import hiredis
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from feast import FeatureView
from feast.infra.common.materialization_job import MaterializationJob, MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.local.compute import LocalComputeEngine
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.offline_stores.ibis import IbisRetrievalJob
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStore, RedisType, _versioned_fv_name
from feast.infra.registry.base_registry import BaseRegistry
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from churn_common.errors import FeatureStoreError, FeatureStoreUnavailable

logger = logging.getLogger(__name__)

# Without a configured batch size Feast writes everything in one batch; streaming needs a bound.
DEFAULT_BATCH_ROWS = 10_000
_INT64_BYTES = 8
# 64-bit offsets: a batch of long strings must not overflow Arrow's 2 GiB binary limit.
_BINARY = pa.large_binary()
_EMPTY = pa.scalar(b"", _BINARY)
_CRLF = pa.scalar(b"\r\n", _BINARY)


class RedisBatchEngineConfig(FeastConfigBaseModel):
    type: Literal["churn_common.feast_plugins.engine.RedisBatchEngine"] = (
        "churn_common.feast_plugins.engine.RedisBatchEngine"
    )
    backend: str | None = None
    """DataFrame backend of Feast's local engine, for the views this engine hands to it."""


# --- variable-length rows as Arrow binary arrays -------------------------------------------------------------------


def _binary(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> pa.Array:
    """Row i of each (n, width) uint8 buffer, cut to its lengths[i] bytes, concatenated part after part.

    Every row is built left-aligned in fixed-width numpy buffers; one boolean mask then packs the used bytes into
    Arrow's contiguous value buffer, with no Python object per row.
    """
    buffer = np.hstack([rows for rows, _ in parts])
    used = np.hstack([np.arange(rows.shape[1]) < lengths[:, None] for rows, lengths in parts])
    offsets = np.zeros(len(buffer) + 1, dtype=np.int64)
    np.cumsum(sum(lengths.astype(np.int64) for _, lengths in parts), out=offsets[1:])
    return pa.Array.from_buffers(_BINARY, len(buffer), [None, pa.py_buffer(offsets), pa.py_buffer(buffer[used])])


def _per_distinct(make: Callable[[int], bytes], numbers: np.ndarray) -> pa.Array:
    """``make(n)`` for each n, computed once per distinct n (value lengths and field counts: small, repeating).

    A bincount finds the distinct values several times faster than np.unique's sort.
    """
    distinct = np.flatnonzero(np.bincount(numbers))
    position = np.zeros(int(distinct[-1]) + 1 if len(distinct) else 1, dtype=np.int64)
    position[distinct] = np.arange(len(distinct))
    return pa.array([make(int(n)) for n in distinct], _BINARY).take(position[numbers])


def _join(*parts: pa.Array | pa.Scalar) -> pa.Array:
    """Element-wise concatenation of binary arrays and constants."""
    return pc.binary_join_element_wise(*parts, _EMPTY)


# --- encoding Arrow columns into serialised ValueProto bytes ------------------------------------------------------
# A scalar ValueProto is one field of a oneof, so it is always present when set (zero values included): a tag byte
# (field number << 3 | wire type) followed by the payload. A null is the empty message, b"".


@dataclass(frozen=True)
class _Encoding:
    arrow_type: pa.DataType
    tag: int
    kind: Literal["varint", "fixed", "bool", "string"]


_ENCODINGS: dict[ValueType, _Encoding] = {
    ValueType.INT32: _Encoding(pa.int32(), 3 << 3, "varint"),
    ValueType.INT64: _Encoding(pa.int64(), 4 << 3, "varint"),
    ValueType.DOUBLE: _Encoding(pa.float64(), 5 << 3 | 1, "fixed"),
    ValueType.FLOAT: _Encoding(pa.float32(), 6 << 3 | 5, "fixed"),
    ValueType.BOOL: _Encoding(pa.bool_(), 7 << 3, "bool"),
    ValueType.STRING: _Encoding(pa.string(), 2 << 3 | 2, "string"),
}


def _varints(tag: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tag byte + protobuf varint of uint64 values (negative int64/int32 as two's complement: ten bytes, as protobuf
    does), as (n, 1 + longest) rows and their lengths."""
    lengths = np.ones(len(values), dtype=np.int64)
    for shift in range(7, 64, 7):
        lengths += values >= np.uint64(1 << shift)
    longest = int(lengths.max(initial=1))
    rows = np.empty((len(values), 1 + longest), dtype=np.uint8)
    rows[:, 0] = tag
    for i in range(longest):
        byte = (values >> np.uint64(7 * i)) & np.uint64(0x7F)
        rows[:, 1 + i] = byte | ((lengths > i + 1).astype(np.uint64) << np.uint64(7))
    return rows, lengths + 1


def _fixed(tag: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = values.dtype.itemsize
    rows = np.empty((len(values), 1 + width), dtype=np.uint8)
    rows[:, 0] = tag
    rows[:, 1:] = values.astype(values.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(-1, width)
    return rows, np.full(len(values), 1 + width, dtype=np.int64)


def _strings(tag: int, column: pa.Array) -> pa.Array:
    """Encode each distinct string once: snapshot string columns are categories."""
    encoded = column.dictionary_encode()
    payloads = [s.encode() for s in encoded.dictionary.to_pylist()]
    table = pa.array([bytes([tag]) + _varint(len(p)) + p for p in payloads] + [b""], _BINARY)
    return table.take(encoded.indices.fill_null(len(payloads)))


def _varint(value: int) -> bytes:
    rows, lengths = _varints(0, np.array([value], dtype=np.uint64))
    return rows[0, 1 : lengths[0]].tobytes()


def encode_values(column: pa.Array | pa.ChunkedArray, value_type: ValueType) -> pa.Array:
    """``[ValueProto(...).SerializeToString() for each value]`` as Feast builds it, for a whole column at once.

    Nulls (and NaN, which Feast also treats as missing) become b"".
    """
    encoding = _ENCODINGS[value_type]
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    column = column.cast(encoding.arrow_type)
    if encoding.kind == "string":
        return _strings(encoding.tag, column)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    values = column.fill_null(False if encoding.kind == "bool" else 0).to_numpy(zero_copy_only=False)
    if encoding.kind == "varint":
        rows, lengths = _varints(encoding.tag, values.astype(np.int64).view(np.uint64))
    elif encoding.kind == "bool":
        rows, lengths = _varints(encoding.tag, values.astype(np.uint64))
    else:
        valid &= ~np.isnan(values)
        rows, lengths = _fixed(encoding.tag, values)
    lengths[~valid] = 0
    return _binary([(rows, lengths)])


def event_time_nanos(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Event times as epoch nanoseconds at microsecond precision, the precision Feast's write path keeps."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise ValueError("event timestamps must not be null")
    micros = column.cast(pa.timestamp("us", tz=column.type.tz)).cast(pa.int64()).to_numpy()
    return micros * 1000


def encode_timestamps(nanos: np.ndarray) -> pa.Array:
    """``Timestamp.SerializeToString()`` per value: seconds (field 1) and nanos (field 2), each omitted when 0."""
    seconds, rest = np.divmod(nanos, 1_000_000_000)
    seconds_rows, seconds_lengths = _varints(1 << 3, seconds.view(np.uint64))
    nanos_rows, nanos_lengths = _varints(2 << 3, rest.view(np.uint64))
    seconds_lengths[seconds == 0] = 0
    nanos_lengths[rest == 0] = 0
    return _binary([(seconds_rows, seconds_lengths), (nanos_rows, nanos_lengths)])


def _parsed_nanos(serialized: bytes) -> int:
    stamp = Timestamp()
    stamp.ParseFromString(serialized)
    return stamp.seconds * 1_000_000_000 + stamp.nanos


# --- which views this engine takes --------------------------------------------------------------------------------


def _join_key(view: FeatureView) -> str:
    (column,) = view.entity_columns
    return column.name


def fast_path_supported(view: object, config: RepoConfig, online_store: object) -> bool:
    """Plain views of scalar features over one INT64 entity, read latest-only and written only to Redis."""
    return (
        type(view) is FeatureView  # subclasses carry transformations or aggregations
        and isinstance(online_store, RedisOnlineStore)
        # Commands are streamed over one connection; a cluster would need them split by hash slot.
        and config.online_store.redis_type != RedisType.redis_cluster
        and config.materialization_config.pull_latest_features
        and config.entity_key_serialization_version == 3
        and view.online
        and not view.offline
        and view.batch_source is not None
        and not view.batch_source.field_mapping
        and len(view.entity_columns) == 1
        and view.entity_columns[0].dtype.to_value_type() == ValueType.INT64
        and all(f.dtype.to_value_type() in _ENCODINGS for f in view.features)
    )


# --- Redis commands as RESP bytes ------------------------------------------------------------------------------


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _command_header(arguments: int, name: bytes) -> bytes:
    return b"*%d\r\n" % arguments + _bulk(name)


def _offsets(values: pa.Array) -> np.ndarray:
    """Start of each value and end of the last, in the array's value buffer (large_binary: int64 offsets)."""
    return np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + len(values) + 1]


def _bulks(values: pa.Array, prefix: bytes = b"") -> list[pa.Array | pa.Scalar]:
    """The parts of ``prefix + $<length>\\r\\n<value>\\r\\n`` per value: RESP bulk strings, each after a constant (a
    field name). Parts, not their join: one join of a whole view copies the bytes once instead of twice."""
    headers = _per_distinct(lambda length: prefix + b"$%d\r\n" % length, np.diff(_offsets(values)))
    return [headers, values, _CRLF]


def _payload(commands: pa.Array) -> memoryview:
    """The concatenated commands: the value buffer of the joined array, without a copy."""
    offsets = _offsets(commands)
    return memoryview(commands.buffers()[2])[offsets[0] : offsets[-1]]


@dataclass
class _Batch:
    """One record batch encoded: serialised entity keys, event times, and per view its (field, value bytes) pairs,
    ``_ts:view`` first."""

    keys: pa.Array
    nanos: np.ndarray
    views: list[list[tuple[bytes, pa.Array]]]


class _HashLayout:
    """Field names, key template and per-batch encoding for the views of one source."""

    def __init__(self, views: Sequence[FeatureView], config: RepoConfig) -> None:
        self.views = list(views)
        self.join_key = _join_key(self.views[0])
        names = [_versioned_fv_name(v, config) for v in self.views]
        self.ts_fields = [f"_ts:{name}".encode() for name in names]
        self.fields = [
            [ts_field] + [_mmh3(f"{name}:{f.name}") for f in view.features]
            for ts_field, name, view in zip(self.ts_fields, names, self.views, strict=True)
        ]
        template = serialize_entity_key(
            EntityKeyProto(join_keys=[self.join_key], entity_values=[ValueProto(int64_val=0)]), 3
        )
        self.key_prefix = np.frombuffer(template[:-_INT64_BYTES], dtype=np.uint8)
        self.key_suffix = np.frombuffer(config.project.encode(), dtype=np.uint8)

    def columns(self) -> list[str]:
        return list(dict.fromkeys(f.name for view in self.views for f in view.features))

    def keys(self, column: pa.Array | pa.ChunkedArray) -> pa.Array:
        """``_redis_key(project, EntityKey(user_id))`` per row: the serialised key template with the id filled in."""
        if column.null_count:
            raise ValueError(f"join key {self.join_key} must not be null")
        ids = column.cast(pa.int64()).to_numpy().astype("<i8", copy=False)
        prefix, suffix = len(self.key_prefix), len(self.key_suffix)
        rows = np.empty((len(ids), prefix + _INT64_BYTES + suffix), dtype=np.uint8)
        rows[:, :prefix] = self.key_prefix
        rows[:, prefix : prefix + _INT64_BYTES] = ids.view(np.uint8).reshape(-1, _INT64_BYTES)
        rows[:, prefix + _INT64_BYTES :] = self.key_suffix
        return _binary([(rows, np.full(len(ids), rows.shape[1], dtype=np.int64))])

    def encode(self, batch: pa.RecordBatch, timestamp_field: str) -> _Batch:
        nanos = event_time_nanos(batch.column(timestamp_field))
        stamps = encode_timestamps(nanos)
        encoded: dict[tuple[str, ValueType], pa.Array] = {}
        views = []
        for view, fields in zip(self.views, self.fields, strict=True):
            pairs = [(fields[0], stamps)]
            for field, feature in zip(fields[1:], view.features, strict=True):
                value_type = feature.dtype.to_value_type()
                cache_key = (feature.name, value_type)  # a feature shared by two views is encoded once
                if cache_key not in encoded:
                    encoded[cache_key] = encode_values(batch.column(feature.name), value_type)
                pairs.append((field, encoded[cache_key]))
            views.append(pairs)
        return _Batch(self.keys(batch.column(self.join_key)), nanos, views)


class _Commands:
    """The HMGET and HSET (+ EXPIRE) commands of a batch, as one RESP buffer each."""

    def __init__(self, layout: _HashLayout, key_ttl_seconds: int | None) -> None:
        self.view_widths = np.array([len(fields) for fields in layout.fields])
        self.hmget_header = pa.scalar(_command_header(2 + len(layout.ts_fields), b"HMGET"), _BINARY)
        self.hmget_fields = pa.scalar(b"".join(map(_bulk, layout.ts_fields)), _BINARY)
        self.expire = None
        if key_ttl_seconds:
            self.expire = (
                pa.scalar(_command_header(3, b"EXPIRE"), _BINARY),
                pa.scalar(_bulk(str(key_ttl_seconds).encode()), _BINARY),
            )

    def hmget(self, keys: pa.Array) -> memoryview:
        return _payload(_join(self.hmget_header, *_bulks(keys), self.hmget_fields))

    def hset(self, batch: _Batch, newer: np.ndarray | None) -> tuple[memoryview, int]:
        """Commands writing the views ``newer`` marks (all when None) and their expected reply count."""
        keys = _join(*_bulks(batch.keys))
        blocks = [self._block(pairs) for pairs in batch.views]
        if newer is None or newer.all():
            header = pa.scalar(self._hset_header(self.view_widths.sum()), _BINARY)
        else:
            rows = newer.any(axis=1)
            keys = keys.filter(rows)
            blocks = [pc.if_else(keep, block, _EMPTY).filter(rows) for keep, block in zip(newer.T, blocks, strict=True)]
            header = _per_distinct(self._hset_header, newer[rows] @ self.view_widths)
        parts = [header, keys, *blocks]
        if self.expire:
            parts += [self.expire[0], keys, self.expire[1]]
        commands = _join(*parts)
        return _payload(commands), len(commands) * (2 if self.expire else 1)

    @staticmethod
    def _block(pairs: list[tuple[bytes, pa.Array]]) -> pa.Array:
        """The (field, value) bulk strings of one view, per entity."""
        return _join(*(part for field, values in pairs for part in _bulks(values, _bulk(field))))

    @staticmethod
    def _hset_header(fields: int) -> bytes:
        return _command_header(2 + 2 * fields, b"HSET")


# --- talking to Redis ----------------------------------------------------------------------------------------------


class _Connection:
    """RESP bytes out, replies parsed by hiredis, over one connection of the store's redis-py pool.

    redis-py does the handshake (AUTH, SELECT, TLS, Sentinel); its per-argument packing and one-call-per-reply
    parsing cost more client time than Redis spends applying the commands, so only its socket is used after that.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        try:
            self._connection = self._pool.get_connection()
        except redis.RedisError as exc:
            raise FeatureStoreUnavailable(f"cannot connect to Redis: {exc}") from exc
        self._socket = self._connection._sock
        self._reader = hiredis.Reader()
        self._buffer = bytearray(1 << 20)
        self._pending = 0

    def send(self, payload: memoryview, replies: int) -> None:
        self._pending += replies
        try:
            self._socket.sendall(payload)
        except OSError as exc:
            raise FeatureStoreUnavailable(f"lost the Redis connection while writing: {exc}") from exc

    def replies(self, count: int) -> list:
        """The next ``count`` replies, raising on the first error reply."""
        replies = []
        while len(replies) < count:
            reply = self._reader.gets()
            if reply is False:
                self._receive()
            elif isinstance(reply, hiredis.ReplyError):
                raise FeatureStoreError(f"Redis rejected a materialisation command: {reply}")
            else:
                replies.append(reply)
        self._pending -= count
        return replies

    def _receive(self) -> None:
        try:
            received = self._socket.recv_into(self._buffer)
        except OSError as exc:
            raise FeatureStoreUnavailable(f"lost the Redis connection while reading: {exc}") from exc
        if not received:
            raise FeatureStoreUnavailable("Redis closed the connection during materialisation")
        self._reader.feed(self._buffer, 0, received)

    def close(self) -> None:
        # A connection with unread replies (an error mid-stream) must not go back to the pool.
        if self._pending:
            self._connection.disconnect()
        self._pool.release(self._connection)


def hmget_many(client: redis.Redis, keys: pa.Array, fields: Sequence[bytes], chunk: int = 50_000) -> list[list]:
    """``HMGET key *fields`` for every key (a large_binary array), as raw RESP over one pooled connection: the
    materialisation job reads every written user back, and redis-py's per-command packing and parsing cost ten times
    what Redis does."""
    header = pa.scalar(_command_header(2 + len(fields), b"HMGET"), _BINARY)
    tail = pa.scalar(b"".join(map(_bulk, fields)), _BINARY)
    connection = _Connection(client)
    try:
        replies: list[list] = []
        for start in range(0, len(keys), chunk):
            part = keys.slice(start, chunk)
            connection.send(_payload(_join(header, *_bulks(part), tail)), len(part))
            replies += connection.replies(len(part))
        return replies
    finally:
        connection.close()


class _BackgroundWriter:
    """Sends HSET payloads from a thread: Redis applies batch k while the caller encodes batch k + 1.

    At most one payload waits in the queue and one is being sent, so memory stays bounded by the batch size. The
    replies of a payload are checked after the next one is sent, so that the server never waits for the client.
    """

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._queue: queue.Queue[tuple[memoryview, int] | None] = queue.Queue(maxsize=1)
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="redis-batch-writer", daemon=True)
        self._thread.start()

    def submit(self, payload: memoryview, replies: int) -> None:
        self._raise_if_failed()
        self._queue.put((payload, replies))

    def close(self) -> None:
        """Wait until every reply has been checked; raise the writer's error, if any."""
        self.stop()
        self._raise_if_failed()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        unchecked = 0
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after an error, only drain, so that submit() never blocks on a dead writer
                payload, replies = item
                self._guarded(self._connection.send, payload, replies)
                self._guarded(self._connection.replies, unchecked)
                unchecked = replies
        self._guarded(self._connection.replies, unchecked)

    def _guarded(self, call: Callable, *args: object) -> None:
        if self._error is not None:
            return
        try:
            call(*args)
        # Any error, not only Redis's: it must reach the caller's thread, which would otherwise wait forever.
        except Exception as exc:  # noqa: BLE001
            self._error = exc


class _RedisWriter:
    """Writes encoded batches unless the stored rows are newer, checked with one pipelined HMGET buffer per batch."""

    def __init__(self, client: redis.Redis, commands: _Commands, skip_dedup: bool) -> None:
        self._commands = commands
        self._client = client
        self._skip_dedup = skip_dedup

    def write_all(self, batches: Iterator[_Batch]) -> tuple[int, int]:
        """(entities, entities written) over all batches."""
        # Two connections: HMGETs of batch k + 1 must not queue behind the HSETs of batch k.
        writes = _Connection(self._client)
        reads = None if self._skip_dedup else _Connection(self._client)
        try:
            writer = _BackgroundWriter(writes)
            try:
                rows = written = 0
                for batch in batches:
                    newer = None if reads is None else self._newer_than_stored(reads, batch)
                    payload, replies = self._commands.hset(batch, newer)
                    writer.submit(payload, replies)
                    rows += len(batch.keys)
                    written += len(batch.keys) if newer is None else int(newer.any(axis=1).sum())
            except BaseException:
                writer.stop()  # the caller's error comes first
                raise
            writer.close()
        finally:
            writes.close()
            if reads is not None:
                reads.close()
        return rows, written

    def _newer_than_stored(self, reads: _Connection, batch: _Batch) -> np.ndarray:
        """Per (entity, view): write unless the stored ``_ts:view`` is after the new time (Feast: at or after; an
        equal time is a later version of the same snapshot, see the module docstring)."""
        reads.send(self._commands.hmget(batch.keys), len(batch.keys))
        stored = [tuple(values) for values in reads.replies(len(batch.keys))]
        # The same few tuples repeat (every view of an entity is written at once, one event time per snapshot
        # day), so each distinct one is parsed once; 0 where a view was never written.
        parsed = {values: [_parsed_nanos(v) if v else 0 for v in values] for values in set(stored)}
        previous = np.array([parsed[values] for values in stored], dtype=np.int64)
        previous = previous.reshape(len(batch.keys), len(batch.views))
        return (previous == 0) | (batch.nanos[:, None] >= previous)


def _record_batches(job: RetrievalJob, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Stream the query result instead of holding the whole table (and its copies) in memory."""
    if isinstance(job, IbisRetrievalJob):
        reader = job.table.to_pyarrow_batches(chunk_size=batch_rows)
        try:
            yield from reader
        finally:
            reader.close()
    else:
        yield from job.to_arrow().to_batches(max_chunksize=batch_rows)


# --- the engine ----------------------------------------------------------------------------------------------------


class RedisBatchEngine(LocalComputeEngine):
    """Feast's local engine, with a one-read-per-source, vectorised Redis writer for the views it supports."""

    @property
    def supports_batch(self) -> bool:
        # Feast then hands every view of a run to one materialize() call, so views sharing a source share a read.
        return True

    def materialize(
        self, registry: BaseRegistry, tasks: MaterializationTask | list[MaterializationTask], **kwargs
    ) -> list[MaterializationJob]:
        tasks = [tasks] if isinstance(tasks, MaterializationTask) else tasks
        jobs: dict[int, MaterializationJob] = {}
        delegated = []
        for group in self._groups(tasks, delegated).values():
            jobs.update({id(task): job for task, job in zip(group, self._materialize_group(group), strict=True)})
        if delegated:
            jobs.update(zip(map(id, delegated), super().materialize(registry, delegated, **kwargs), strict=True))
        return [jobs[id(task)] for task in tasks]

    def _groups(
        self, tasks: list[MaterializationTask], delegated: list[MaterializationTask]
    ) -> dict[tuple[str, datetime, datetime], list[MaterializationTask]]:
        groups: dict[tuple[str, datetime, datetime], list[MaterializationTask]] = {}
        for task in tasks:
            view = task.feature_view
            if fast_path_supported(view, self.repo_config, self.online_store):
                source_key = (view.batch_source.name, task.start_time, task.end_time)
                groups.setdefault(source_key, []).append(task)
            else:
                logger.info("materialising %s with Feast's local engine", view.name)
                delegated.append(task)
        return groups

    def _materialize_group(self, tasks: list[MaterializationTask]) -> list[MaterializationJob]:
        began = time.perf_counter()
        config = self.repo_config
        views = [t.feature_view for t in tasks]
        source = views[0].batch_source
        layout = _HashLayout(views, config)
        job = self.offline_store.pull_latest_from_table_or_query(
            config=config,
            data_source=source,
            join_key_columns=[layout.join_key],
            feature_name_columns=layout.columns(),
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_column or None,
            start_date=tasks[0].start_time,
            end_date=tasks[0].end_time,
        )
        store_config = config.online_store
        writer = _RedisWriter(
            self.online_store._get_client(store_config),
            _Commands(layout, store_config.key_ttl_seconds),
            store_config.skip_dedup,
        )
        batch_rows = config.materialization_config.online_write_batch_size or DEFAULT_BATCH_ROWS
        batches = (
            layout.encode(batch, source.timestamp_field) for batch in _record_batches(job, batch_rows) if batch.num_rows
        )
        rows, written = writer.write_all(batches)
        logger.info(
            "materialised %d entities (%d written) of %s for views %s in %.1fs",
            rows,
            written,
            source.name,
            ", ".join(v.name for v in views),
            time.perf_counter() - began,
        )
        return [
            LocalMaterializationJob(
                job_id=f"{t.feature_view.name}-{t.start_time}-{t.end_time}", status=MaterializationJobStatus.SUCCEEDED
            )
            for t in tasks
        ]
