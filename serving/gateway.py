"""The API's front door: a pure ASGI middleware that runs before routing and before any byte of a body is read.

Per request, in order:

- a request id: the client's ``X-Request-ID`` when it is 1-128 visible ASCII characters, else one of ours; on the
  response and on every log line written while handling it (serving.logs);
- the bearer token of the prediction endpoints (serving.auth), checked first: a request without a valid token is
  answered 401 without its body being read, so it cannot make the process buffer or parse anything;
- the body's size: a declared ``Content-Length`` over ``max_body_bytes`` is answered 413 at once; otherwise the
  bytes are counted as they arrive (a chunked body, a client that lies) and the read fails with a 413 at the first
  byte over the limit, so at most the limit is ever held;
- the body's read time: it must arrive within ``body_timeout_s`` of the request's start, else a 408 (a client
  trickling a body cannot hold a connection and a task for ever). Responses to requests whose body was not read to
  its end close the connection, so the rest of that body is never read either;
- an audit record per prediction request, logged as JSON by logger ``churn.audit``: token id, user ids, model
  version, per-user outcome and the status code; never a feature value or a token. The route leaves what it found
  in the scope (``AUDIT_FACTS``); the request id and time are the log line's.
"""

import asyncio
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from itertools import count

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.auth import Tokens, Unauthorized
from serving.logs import AUDIT_LOGGER, REQUEST_ID

CONSOLE_USER_PATH, CONSOLE_HIGH_RISK_PATH = "/console/api/user", "/console/api/high-risk"
EVENTS_PATH = "/events"
# The prediction endpoints, the push path and the support console's reads (its page and assets hold no data).
GUARDED_PATHS = frozenset({"/predict", "/predict/batch", EVENTS_PATH, CONSOLE_USER_PATH, CONSOLE_HIGH_RISK_PATH})
# Scope key under which a prediction route leaves (user ids, model version, outcomes) for the audit record.
AUDIT_FACTS = "churn.audit"
_CLIENT_REQUEST_ID = re.compile(rb"[!-~]{1,128}")
_CLOSE = (b"connection", b"close")

audit_log = logging.getLogger(AUDIT_LOGGER)
_AUDITED = "prediction request"


# HTTPExceptions, so that FastAPI passes them on from its body reading to the exception handler (a JSON body).
class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over the {limit}-byte limit")


class BodyTooSlow(HTTPException):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"request body not received within {timeout_s}s")


class _Head:
    """The request headers the gateway reads, in one pass."""

    __slots__ = ("authorization", "content_length", "chunked", "request_id")

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length not in (None, b"0")

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.authorization = self.content_length = self.request_id = None
        self.chunked = False
        for name, value in headers:
            if name == b"authorization":
                self.authorization = value
            elif name == b"content-length":
                self.content_length = value
            elif name == b"x-request-id":
                self.request_id = value
            elif name == b"transfer-encoding":
                self.chunked = True


class _BoundedBody:
    """A request's ``receive``: counts the body's bytes and bounds the time they take to arrive."""

    def __init__(self, receive: Receive, limit: int, timeout_s: float) -> None:
        self._receive = receive
        self._limit = limit
        self._timeout_s = timeout_s
        self._deadline = asyncio.get_running_loop().time() + timeout_s
        self._size = 0
        self.complete = False

    async def __call__(self) -> Message:
        if self.complete:  # past the body only a disconnect is left to wait for, however long it takes
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise BodyTooSlow(self._timeout_s) from None
        if message["type"] == "http.request":
            self._size += len(message.get("body", b""))
            if self._size > self._limit:
                raise BodyTooLarge(self._limit)
            self.complete = not message.get("more_body", False)
        return message


class _Answer:
    """A request's ``send``: adds the request id to the answer (and ``connection: close`` when the body was not read
    to its end: closing is the only way not to read the rest), and audits a prediction request as it leaves."""

    __slots__ = ("_send", "_scope", "_head", "_id_header", "audited", "token_id", "body", "started")

    def __init__(self, send: Send, scope: Scope, head: _Head, request_id: str) -> None:
        self._send, self._scope, self._head = send, scope, head
        self._id_header = (b"x-request-id", request_id.encode())
        self.audited = scope["path"] in GUARDED_PATHS
        self.token_id: str | None = None
        self.body: _BoundedBody | None = None
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            unread = self._head.has_body and (self.body is None or not self.body.complete)
            extra = (self._id_header, _CLOSE) if unread else (self._id_header,)
            message = {**message, "headers": [*message["headers"], *extra]}
            if self.audited:  # before the answer leaves: a client that has it can find its audit record
                _audit(self._scope, self.token_id, message["status"])
        await self._send(message)

    def finish(self) -> None:
        if self.audited and not self.started:  # failed before answering: the server's 500 follows
            _audit(self._scope, self.token_id, 500)


class Gateway:
    def __init__(self, app: ASGIApp, *, tokens: Tokens | None, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self._tokens = tokens
        self._max_body_bytes = max_body_bytes
        self._body_timeout_s = body_timeout_s
        self._prefix = os.urandom(6).hex()
        self._serial = count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = _Head(scope["headers"])
        request_id = self._request_id(head.request_id)
        reset = REQUEST_ID.set(request_id)
        answer = _Answer(send, scope, head, request_id)
        try:
            if answer.audited and self._tokens is not None:
                answer.token_id = self._tokens.identify(head.authorization)
            answer.body = self._body(head, receive)
            await self.app(scope, receive if answer.body is None else answer.body, answer)
        except Unauthorized as exc:
            await _reply(answer, 401, str(exc), [(b"www-authenticate", b"Bearer")])
        except BodyTooLarge as exc:  # declared too large: nothing was read
            await _reply(answer, 413, exc.detail, [])
        finally:
            answer.finish()
            REQUEST_ID.reset(reset)

    def _request_id(self, given: bytes | None) -> str:
        if given is not None and _CLIENT_REQUEST_ID.fullmatch(given):
            return given.decode("ascii")
        return f"{self._prefix}-{next(self._serial):x}"

    def _body(self, head: _Head, receive: Receive) -> _BoundedBody | None:
        """The bounded ``receive`` of a request with a body; None without one (the fast path: nothing to wrap)."""
        if not head.has_body:
            return None
        # The HTTP parser has checked that a Content-Length is a number.
        if head.content_length is not None and int(head.content_length) > self._max_body_bytes:
            raise BodyTooLarge(self._max_body_bytes)
        return _BoundedBody(receive, self._max_body_bytes, self._body_timeout_s)


async def _reply(send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"detail": detail}).encode()
    start_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*start_headers, *headers]})
    await send({"type": "http.response.body", "body": body})


def _audit(scope: Scope, token_id: str | None, status: int) -> None:
    if not audit_log.isEnabledFor(logging.INFO):
        return
    user_ids, model_version, outcomes = scope.get(AUDIT_FACTS) or (None, None, None)
    fields = {
        "endpoint": scope["path"],
        "token_id": token_id,
        "status": status,
        "user_ids": user_ids,
        "model_version": model_version,
        "outcomes": outcomes,
    }
    # Made and handled directly: Logger.info would also walk the stack for a caller no one reads.
    record = audit_log.makeRecord(AUDIT_LOGGER, logging.INFO, __file__, 0, _AUDITED, (), None, extra={"fields": fields})
    audit_log.handle(record)
