"""Bounds on what a client can make a pod hold: body size and read time (serving.gateway), header read time and
size and idle connections (serving.server), over real sockets against the app served as ``churn serve`` serves it.

The times measured are the bounds themselves (the settings are 1 s here): each must hold within a slack well below
what an unbounded server takes (for ever)."""

import json
import socket
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.serving.conftest import app_client
from tests.serving.world import FRESH_USERS, World, server_env, server_process

pytestmark = pytest.mark.redis
BOUND_S = 1.0
SLACK_S = 1.5  # a busy two-core machine; an unbounded server never answers at all
LIMIT = 4096
TOKEN = "limits-token"


@pytest.fixture(scope="module")
def bounded(world: World) -> Iterator[httpx.Client]:
    bounds = {
        "max_body_bytes": LIMIT,
        "body_timeout_seconds": BOUND_S,
        "header_timeout_seconds": BOUND_S,
        "keep_alive_seconds": BOUND_S,
        "max_header_bytes": 8192,
    }
    with app_client(world.settings.model_copy(update=bounds)) as client:
        yield client


def connect(client: httpx.Client) -> socket.socket:
    return socket.create_connection((client.base_url.host, client.base_url.port), timeout=BOUND_S + SLACK_S + 5)


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def one_response(sock: socket.socket) -> bytes:
    """One whole response (its Content-Length's worth of body), leaving the connection open."""
    received = b""
    while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < _length(received):
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {received[:200]!r}"
        received += chunk
    return received


def _length(received: bytes) -> int:
    return int(response_parts(received)[1]["content-length"])


def response_parts(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def batch_head(content_length: int | None, extra: str = "") -> bytes:
    length = "transfer-encoding: chunked\r\n" if content_length is None else f"content-length: {content_length}\r\n"
    return f"POST /predict/batch HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n{length}{extra}\r\n".encode()


def test_a_declared_body_over_the_limit_is_413_before_a_byte_of_it_is_read(bounded: httpx.Client):
    with connect(bounded) as sock:
        sock.sendall(batch_head(10 * LIMIT))  # and never the body
        status, headers, body = response_parts(until_closed(sock))

    assert status == 413
    assert json.loads(body) == {"detail": f"request body over the {LIMIT}-byte limit"}
    assert headers["connection"] == "close"


def test_a_chunked_body_is_counted_as_it_arrives(bounded: httpx.Client):
    def chunks() -> Iterator[bytes]:
        yield b'{"user_ids": [1'
        yield b"," + b" " * LIMIT  # past the limit, which no header declared

    response = bounded.post("/predict/batch", content=chunks(), headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert response.json() == {"detail": f"request body over the {LIMIT}-byte limit"}


def test_a_body_of_exactly_the_limit_is_served(bounded: httpx.Client):
    body = json.dumps({"user_ids": [FRESH_USERS[0]]}).encode()
    body += b" " * (LIMIT - len(body))

    response = bounded.post("/predict/batch", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == "scored"


def test_a_body_trickling_in_gets_408_within_the_bound_and_the_connection_is_closed(bounded: httpx.Client):
    with connect(bounded) as sock:
        sock.sendall(batch_head(100) + b'{"user_ids": [')
        sent = time.monotonic()
        raw = until_closed(sock)
        waited = time.monotonic() - sent

    status, headers, body = response_parts(raw)
    assert status == 408
    assert json.loads(body) == {"detail": f"request body not received within {BOUND_S}s"}
    assert headers["connection"] == "close"
    assert BOUND_S - 0.1 <= waited <= BOUND_S + SLACK_S, waited


def test_headers_must_arrive_within_the_bound_and_idle_connections_are_closed(bounded: httpx.Client):
    """Twenty connections: eight never send a byte, six stop halfway through their headers, six make a request and
    then idle. The server closes each within the bound of its last activity; the half-sent ones get a 408."""
    silent = [connect(bounded) for _ in range(8)]
    halfway = [connect(bounded) for _ in range(6)]
    for sock in halfway:
        sock.sendall(b"GET /predict?user_id=1 HTTP/1.1\r\nhost: t\r\nx-half: ")
    served = [connect(bounded) for _ in range(6)]
    for sock in served:
        sock.sendall(f"GET /predict?user_id={FRESH_USERS[0]} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
        status, _, body = response_parts(one_response(sock))
        assert status == 200 and json.loads(body)["status"] == "scored"
    last_activity = time.monotonic()

    received = {"silent": [], "halfway": [], "served": []}
    for kind, sockets in (("silent", silent), ("halfway", halfway), ("served", served)):
        for sock in sockets:
            with sock:
                received[kind].append(until_closed(sock))
    closed_within = time.monotonic() - last_activity

    assert received["silent"] == [b""] * 8 and received["served"] == [b""] * 6
    for raw in received["halfway"]:
        status, _, body = response_parts(raw)
        assert status == 408 and json.loads(body) == {"detail": f"request headers not received within {BOUND_S}s"}
    assert closed_within <= BOUND_S + SLACK_S, closed_within


def test_headers_over_the_limit_get_431(bounded: httpx.Client):
    with connect(bounded) as sock:
        sock.sendall(f"GET /predict?user_id=1 HTTP/1.1\r\nhost: t\r\nx-big: {'a' * 9000}\r\n\r\n".encode())
        status, headers, body = response_parts(until_closed(sock))

    assert status == 431
    assert json.loads(body) == {"detail": "request line and headers over the 8192-byte limit"}
    assert headers["connection"] == "close"


@pytest.fixture(scope="module")
def api_process(world: World) -> Iterator[tuple[str, psutil.Process]]:
    """The API in a process of its own (default limits: 1 MiB bodies), with a token."""
    with server_process(server_env(world.settings, CHURN_API_TOKEN=TOKEN)) as (base, process):
        yield base, psutil.Process(process.pid)


def streamed(megabytes: int) -> Iterator[bytes]:
    yield b'{"user_ids": ['
    for _ in range(megabytes):
        yield b"1," * (1 << 19)


def rss_growth(process: psutil.Process, call) -> tuple[httpx.Response, int]:
    before = process.memory_info().rss
    response = call()
    return response, process.memory_info().rss - before


@pytest.mark.slow
def test_a_huge_streamed_body_is_refused_and_the_server_never_holds_it(api_process):
    """256 MB without a Content-Length (an unbounded server buffers it all, then parses it: gigabytes)."""
    base, process = api_process
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    with httpx.Client(base_url=base, timeout=60) as client:
        response, growth = rss_growth(
            process, lambda: client.post("/predict/batch", content=streamed(256), headers=headers)
        )

    assert response.status_code == 413
    assert response.json() == {"detail": "request body over the 1048576-byte limit"}
    assert growth < 32 * 2**20, f"the server's RSS grew by {growth / 2**20:.0f} MB"


@pytest.mark.slow
def test_a_huge_body_without_a_token_is_refused_before_it_is_read(api_process):
    base, process = api_process
    with httpx.Client(base_url=base, timeout=60) as client:
        response, growth = rss_growth(
            process,
            lambda: client.post("/predict/batch", content=streamed(256), headers={"content-type": "application/json"}),
        )

    assert response.status_code == 401
    assert response.json() == {"detail": "missing bearer token"}
    assert growth < 32 * 2**20, f"the server's RSS grew by {growth / 2**20:.0f} MB"
