"""One pipelined asyncio connection to Redis, shared by every request of the process.

redis.asyncio spends ~150 µs of Python per HMGET (pool checkout, packing each of the ~65 arguments, a stream
reader per connection), more than scoring a user. Here callers hand over ready RESP bytes (the reader keeps the
65 field names packed once), commands queued during one event-loop iteration leave in one write, and hiredis
parses the replies, which resolve the callers' futures in order: Redis answers a connection's commands in the
order it received them, so the n-th reply belongs to the n-th command.

An error reply fails its command with :class:`FeatureStoreUnavailable`; a lost connection fails every command in
flight, and the next command reconnects. A caller's timeout drops the connection too (:meth:`RedisPipe.drop`): a
connection that stopped answering may be half-open and never recover, and the commands queued behind the late one
would time out as well. (A late reply is never misread: a command that timed out keeps its place in the queue.)
"""

import asyncio
import logging
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any

import hiredis

from churn_common.errors import ConfigurationError, FeatureStoreUnavailable

logger = logging.getLogger(__name__)

_CONNECTION_OPTIONS = {"db", "password", "username", "ssl"}


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_options(cls, host: str, port: int, options: dict[str, Any]) -> "RedisAddress":
        """From a Feast Redis connection string's node and ``key=value`` options (``db``, ``password``, ...)."""
        unknown = sorted(set(options) - _CONNECTION_OPTIONS)
        if unknown:
            raise ConfigurationError(f"Redis connection options {unknown} are not supported by the direct reader")
        password, username = options.get("password"), options.get("username")
        return cls(
            host,
            int(port),
            int(options.get("db", 0)),
            None if username is None else str(username),
            None if password is None else str(password),
            bool(options.get("ssl", False)),
        )

    def handshake(self) -> list[bytes]:
        commands = []
        if self.password is not None:
            credentials = (self.username, self.password) if self.username else (self.password,)
            commands.append(hiredis.pack_command(("AUTH", *credentials)))
        if self.db:
            commands.append(hiredis.pack_command(("SELECT", self.db)))
        return commands


class _Pending:
    __slots__ = ("future", "replies", "expected")

    def __init__(self, future: asyncio.Future, expected: int) -> None:
        self.future = future
        self.replies: list[Any] = []
        self.expected = expected


class _Protocol(asyncio.Protocol):
    def __init__(self, on_lost) -> None:
        self._reader = hiredis.Reader()
        self._pending: deque[_Pending] = deque()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._on_lost = on_lost
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def send(self, payload: bytes, replies: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self.closed:
            future.set_exception(FeatureStoreUnavailable("the Redis connection is closed"))
            return future
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(payload)
        self._pending.append(_Pending(future, replies))
        return future

    def _flush(self) -> None:
        if not self.closed and self._outgoing:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if not self._pending:
                self.close("Redis sent a reply nobody asked for")
                return
            pending = self._pending[0]
            pending.replies.append(reply)
            if len(pending.replies) == pending.expected:
                self._pending.popleft()
                self._resolve(pending)

    @staticmethod
    def _resolve(pending: _Pending) -> None:
        if pending.future.done():  # its caller timed out or went away
            return
        errors = [reply for reply in pending.replies if isinstance(reply, hiredis.ReplyError)]
        if errors:
            pending.future.set_exception(FeatureStoreUnavailable(f"Redis answered with an error: {errors[0]}"))
        else:
            pending.future.set_result(pending.replies)

    def close(self, reason: str) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._fail(reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"lost the Redis connection: {exc or 'closed by the server'}")

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._on_lost(self)
        while self._pending:
            future = self._pending.popleft().future
            if not future.done():
                future.set_exception(FeatureStoreUnavailable(reason))


class RedisPipe:
    """Send RESP commands, get their replies; connects on first use and after any failure."""

    def __init__(self, address: RedisAddress) -> None:
        self.address = address
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, payload: bytes, replies: int = 1) -> list[Any]:
        """The ``replies`` replies to ``payload`` (one or more packed commands)."""
        protocol = self._protocol if self._protocol is not None else await self._connect()
        return await protocol.send(payload, replies)

    def drop(self, reason: str) -> None:
        """Close the connection, failing what is in flight; the next command opens a new one."""
        if self._protocol is not None:
            self._protocol.close(reason)

    async def aclose(self) -> None:
        self.drop("the service is shutting down")

    async def _connect(self) -> _Protocol:
        async with self._connecting:
            if self._protocol is not None:  # another request connected while this one waited
                return self._protocol
            loop = asyncio.get_running_loop()
            tls = ssl.create_default_context() if self.address.tls else None
            try:
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self._forget), self.address.host, self.address.port, ssl=tls
                )
            except OSError as exc:
                raise FeatureStoreUnavailable(f"cannot connect to Redis: {exc}") from exc
            await self._handshake(protocol)
            self._protocol = protocol
            logger.info("connected to Redis at %s:%d", self.address.host, self.address.port)
            return protocol

    async def _handshake(self, protocol: _Protocol) -> None:
        commands = self.address.handshake()
        if not commands:
            return
        try:
            await protocol.send(b"".join(commands), len(commands))
        # An error reply (wrong password, no such db), or the caller's timeout while Redis does not answer.
        except (FeatureStoreUnavailable, asyncio.CancelledError):
            protocol.close("the connection handshake failed")
            raise

    def _forget(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
