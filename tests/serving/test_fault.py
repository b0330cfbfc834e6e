"""Redis failing under a running server: a throwaway redis-server we start, stop, pause and restart."""

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import unique_name
from tests.serving.conftest import redis_server
from tests.serving.world import FRESH_USERS, World, free_port, make_world, running_server, server_env

pytestmark = [pytest.mark.redis, pytest.mark.e2e, pytest.mark.slow]


class Recorder:
    """One client thread calling /predict in a loop; records every status code with its detail."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.statuses: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not self._stop.is_set():
                response = client.get("/predict", params={"user_id": FRESH_USERS[0]})
                self.statuses.append((response.status_code, response.json().get("detail", "")))
                time.sleep(0.01)

    def __enter__(self) -> "Recorder":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s}s"
        time.sleep(0.05)


def ready(base: str) -> bool:
    return httpx.get(f"{base}/ready", timeout=5).json()["ready"]


def test_redis_down_paused_and_back(world: World, tmp_path: Path):
    port = free_port()
    with redis_server(port, tmp_path) as first:
        own = make_world(tmp_path, unique_name("srvf"), 11, redis_port=port, tracking_uri=world.settings.tracking_uri)
        redis.Redis(port=port).save()
        env = server_env(own.settings)
        with running_server(env) as base, Recorder(base) as recorder:
            wait_for(lambda: ready(base), 10, "ready at start")
            first.terminate()
            first.wait(timeout=10)
            wait_for(lambda: not ready(base), 2, "/ready false after Redis stopped")
            down_from = len(recorder.statuses)
            wait_for(lambda: len(recorder.statuses) > down_from + 5, 10, "requests while Redis is down")
            down = recorder.statuses[down_from:]

            with redis_server(port, tmp_path) as second:
                wait_for(lambda: ready(base), 5, "recovery after Redis restarted")
                wait_for(lambda: recorder.statuses[-1][0] == 200, 5, "/predict answering again")

                os.kill(second.pid, signal.SIGSTOP)  # a Redis that accepts but never answers: the timeout path
                paused_from = len(recorder.statuses)
                wait_for(lambda: len(recorder.statuses) > paused_from + 3, 10, "requests while Redis is paused")
                paused = recorder.statuses[paused_from + 1 :]
                assert not ready(base)
                os.kill(second.pid, signal.SIGCONT)
                wait_for(lambda: ready(base), 5, "recovery after Redis resumed")

    assert all(status == 503 for status, _ in down), down
    assert all(status == 503 and "did not answer in time" in detail for status, detail in paused), paused
    assert 500 not in {status for status, _ in recorder.statuses}
