"""How ``churn serve`` runs the app: uvicorn with the bounds a pod needs against slow and oversized requests.

What bounds what (each a Setting):

- ``keep_alive_seconds``: an idle connection between two requests is closed (uvicorn's ``timeout_keep_alive``);
- ``header_timeout_seconds``: a request's line and headers must arrive within this of the connection opening or of
  the request's first byte, else 408 and the connection closed; a connection that never sends a byte is closed
  silently. uvicorn has no such bound: a connection sending nothing, or half a header, stayed open for ever (300 of
  them after 40 s), so :class:`BoundedHttpToolsProtocol` adds it to uvicorn's httptools protocol;
- ``max_header_bytes``: the request line plus headers (431 beyond; httptools sets no limit, and h11's
  ``h11_max_incomplete_event_size`` only applies to uvicorn's slower h11 protocol);
- ``max_body_bytes`` and ``body_timeout_seconds``: the body, in the app itself (serving.gateway), so they hold under
  any server.

Served any other way (plain ``uvicorn serving.app:create_app``), the header bounds are gone: a proxy in front must
then provide them (nginx ``client_header_timeout``, ``large_client_header_buffers``).
"""

import asyncio
import json
import logging
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from churn_common.settings import Settings

logger = logging.getLogger(__name__)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's headers and a cap on their size."""

    header_timeout_s: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 32_768

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._header_bytes = 0
        self._started = False  # whether a byte of the current request has arrived
        self._refused = False  # answered by this class: the parser's further callbacks are ignored
        self._header_timer: asyncio.TimerHandle | None = None
        self._wait_for_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes, self._started = 0, True
        self._wait_for_headers()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        self._started = False
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _wait_for_headers(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes and not self._refused:
            self._refuse(431, f"request line and headers over the {self.max_header_bytes}-byte limit")

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request trickling in behind one being answered: close once that answer is out.
            self.cycle.keep_alive = False
        elif self._started:
            self._refuse(408, f"request headers not received within {self.header_timeout_s}s")
        elif not self.transport.is_closing():
            self.transport.close()  # never sent a byte of a request: nothing to answer

    def _refuse(self, status: int, detail: str) -> None:
        self._refused = True
        self._stop_header_timer()
        logger.info("refused a request (%d): %s", status, detail)
        if self.transport.is_closing():
            return
        body = json.dumps({"detail": detail}).encode()
        head = b"content-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
        self.transport.write(STATUS_LINE[status] + head + body)
        self.transport.close()


def bounded_protocol(settings: Settings) -> type[BoundedHttpToolsProtocol]:
    bounds = {"header_timeout_s": settings.header_timeout_seconds, "max_header_bytes": settings.max_header_bytes}
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), bounds)


def server_config(settings: Settings, app: Any, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` with the settings' bounds; ``options`` are more ``uvicorn.Config``
    arguments. Logging is left to the caller (``log_config=None``): uvicorn's loggers reach the root handlers."""
    return uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        http=bounded_protocol(settings),
        timeout_keep_alive=settings.keep_alive_seconds,  # typed int by uvicorn; a float works as a delay
        log_config=None,
        **options,
    )
