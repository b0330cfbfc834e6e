"""A Redis that accepts connections but never answers (a throwaway redis-server under SIGSTOP): every request is
answered 503 within the online timeout of its arrival, however many wait for it, and /ready says so as fast.

Measured, because the bound is the feature: before, a request queued behind a stalled read (for a slot, or behind
the lookup batches in flight) waited out that read's timeout and then its own, and one that had to reconnect also
the handshake's: 1-3x the setting."""

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import unique_name
from tests.serving.conftest import app_client, redis_server
from tests.serving.world import FRESH_USERS, World, free_port, make_world

pytestmark = [pytest.mark.redis, pytest.mark.slow]
TIMEOUT_S = 1.0
SLACK_S = 0.45  # scheduling on a busy machine; half the timeout, below what one more timeout would add


@pytest.fixture(scope="module")
def stallable(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, int]]:
    """A world of its own on a throwaway redis-server (db 11, so connecting includes a SELECT), and its pid."""
    root = tmp_path_factory.mktemp("stall")
    port = free_port()
    with redis_server(port, root) as process:
        own = make_world(root, unique_name("srvst"), 11, redis_port=port, tracking_uri=world.settings.tracking_uri)
        yield own, process.pid


def timed(base: str, path: str, params: dict | None = None) -> tuple[int, str, float]:
    with httpx.Client(base_url=base, timeout=30) as client:
        started = time.monotonic()
        response = client.get(path, params=params)
        took = time.monotonic() - started
    body = response.json()
    return response.status_code, str(body.get("detail", body.get("reasons"))), took


@pytest.mark.parametrize("concurrency", [1, 64])
def test_a_stalled_redis_is_a_503_within_the_timeout_for_every_request(stallable, concurrency: int):
    own, pid = stallable
    settings = own.settings.model_copy(
        update={"online_timeout_ms": int(TIMEOUT_S * 1000), "max_concurrency": concurrency}
    )
    with app_client(settings) as client:
        base = str(client.base_url)
        assert client.get("/predict", params={"user_id": FRESH_USERS[0]}).status_code == 200
        os.kill(pid, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(8) as pool:
                stalled = list(pool.map(lambda user: timed(base, "/predict", {"user_id": user}), FRESH_USERS[:8]))
            ready = timed(base, "/ready")
        finally:
            os.kill(pid, signal.SIGCONT)
        recovered = client.get("/predict", params={"user_id": FRESH_USERS[0]})

    for status, detail, took in [*stalled, ready]:
        assert status == 503 and "did not answer in time" in detail, (status, detail)
        assert took <= TIMEOUT_S + SLACK_S, f"answered after {took:.2f}s: {detail}"
    assert recovered.status_code == 200
