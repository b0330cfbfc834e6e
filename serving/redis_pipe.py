"""One pipelined asyncio connection to Redis, shared by every request of the process.

redis.asyncio spends ~150 µs of Python per HMGET (pool checkout, packing each of the ~65 arguments, a stream
reader per connection), more than scoring a user. Here callers hand over ready RESP bytes (the reader keeps the
65 field names packed once), commands queued during one event-loop iteration leave in one write, and hiredis
parses the replies, which resolve the callers' futures in order: Redis answers a connection's commands in the
order it received them, so the n-th reply belongs to the n-th command.

An error reply fails its command with :class:`FeatureStoreUnavailable`; a lost connection fails every command in
flight, and the next command reconnects. A command unanswered by its deadline drops the connection the same way:
one that stopped answering may be half-open and never recover, and every command queued behind the late one is
late too. (A reply is never taken for another command's: a command whose caller went away keeps its place.)

A deadline is the caller's (a request's arrival plus the online timeout), or the timeout from the moment of
sending; it covers connecting and the handshake when the command has to open the connection, so a Redis that
accepts connections but never answers fails a request within its own deadline, not the timeout once per step.
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
    __slots__ = ("future", "replies", "expected", "deadline")

    def __init__(self, future: asyncio.Future, expected: int, deadline: float) -> None:
        self.future = future
        self.replies: list[Any] = []
        self.expected = expected
        self.deadline = deadline


class _Protocol(asyncio.Protocol):
    """Commands in flight, oldest first, with one timer for the earliest deadline rather than a timeout per command:
    Redis answers in order, so while one command is late, nothing behind it has been answered either."""

    def __init__(self, on_lost, timeout_s: float) -> None:
        # Kept, not looked up per command: on Python 3.11 get_running_loop() makes a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._pending: deque[_Pending] = deque()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._on_lost = on_lost
        self._timeout_s = timeout_s
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def send(self, payload: bytes, replies: int, deadline: float | None = None) -> asyncio.Future:
        """The replies' future, failed with FeatureStoreUnavailable if they are not all in by ``deadline`` (loop
        time; None: the timeout from now)."""
        loop = self._loop
        future = loop.create_future()
        if self.closed:
            future.set_exception(FeatureStoreUnavailable("the Redis connection is closed"))
            return future
        if deadline is None:
            deadline = loop.time() + self._timeout_s
        elif deadline <= loop.time():  # its caller waited out its time before getting here: nothing to send
            future.set_exception(FeatureStoreUnavailable(self.late))
            return future
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(payload)
        self._pending.append(_Pending(future, replies, deadline))
        if self._watchdog is None or deadline < self._watchdog.when():
            self._watch(deadline)
        return future

    @property
    def late(self) -> str:
        return f"online store (Redis) did not answer in time ({self._timeout_s}s)"

    def _watch(self, deadline: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = self._loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._watchdog = None
        if self.closed or not self._pending:
            return
        # Callers' deadlines are nearly, not strictly, in sending order: the earliest may be anywhere.
        earliest = min(pending.deadline for pending in self._pending)
        if self._loop.time() >= earliest:
            # A connection that stopped answering may be half-open and never recover: a new one is the way back.
            self.close(self.late)
        else:
            self._watch(earliest)

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
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._on_lost(self)
        while self._pending:
            future = self._pending.popleft().future
            if not future.done():
                future.set_exception(FeatureStoreUnavailable(reason))


class RedisPipe:
    """Send RESP commands, get their replies or FeatureStoreUnavailable within ``timeout_s``; connects on first use
    and after any failure."""

    def __init__(self, address: RedisAddress, timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, payload: bytes, replies: int = 1, deadline: float | None = None) -> list[Any]:
        """The ``replies`` replies to ``payload`` (one or more packed commands), by ``deadline`` (the event loop's
        time; None: ``timeout_s`` from now)."""
        protocol = self._protocol if self._protocol is not None else await self._connect(deadline)
        return await protocol.send(payload, replies, deadline)

    def drop(self, reason: str) -> None:
        """Close the connection, failing what is in flight; the next command opens a new one."""
        if self._protocol is not None:
            self._protocol.close(reason)

    async def aclose(self) -> None:
        self.drop("the service is shutting down")

    async def _connect(self, deadline: float | None) -> _Protocol:
        """The connection, opened and authenticated by ``deadline``: waiting for another caller's attempt, the TCP
        connection (which a stalled server's kernel still accepts) and the handshake all count."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s if deadline is None else deadline
        try:
            async with asyncio.timeout_at(deadline), self._connecting:
                if self._protocol is not None:  # another request connected while this one waited
                    return self._protocol
                protocol = await self._open(loop)
                await self._handshake(protocol, deadline)
        except TimeoutError as exc:
            raise FeatureStoreUnavailable(
                f"online store (Redis) did not answer in time ({self.timeout_s}s) while connecting"
            ) from exc
        self._protocol = protocol
        logger.info("connected to Redis at %s:%d", self.address.host, self.address.port)
        return protocol

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        tls = ssl.create_default_context() if self.address.tls else None
        try:
            _, protocol = await loop.create_connection(
                lambda: _Protocol(self._forget, self.timeout_s), self.address.host, self.address.port, ssl=tls
            )
        except OSError as exc:
            raise FeatureStoreUnavailable(f"cannot connect to Redis: {exc}") from exc
        return protocol

    async def _handshake(self, protocol: _Protocol, deadline: float) -> None:
        commands = self.address.handshake()
        if not commands:
            return
        try:
            await protocol.send(b"".join(commands), len(commands), deadline)
        # An error reply (wrong password, no such db), or a caller going away meanwhile.
        except (FeatureStoreUnavailable, asyncio.CancelledError):
            protocol.close("the connection handshake failed")
            raise

    def _forget(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
