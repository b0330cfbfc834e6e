"""Fixtures for the serving tests: one real world per session (Feast project on Redis db 11, MLflow champion)."""

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from churn_common.settings import Settings
from serving.app import create_app
from serving.server import server_config
from tests.conftest import REDIS_HOST, REDIS_PORT, TEST_REDIS_DB, _reachable, unique_name
from tests.serving.world import World, delete_project_keys, free_port, make_world, register_champion, train_model


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not _reachable(REDIS_HOST, REDIS_PORT):
        pytest.fail(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}; run `make services`")
    project = unique_name("srv")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=TEST_REDIS_DB)
    try:
        built = make_world(tmp_path_factory.mktemp("serving"), project, TEST_REDIS_DB)
        built.model = train_model(built, seed=1)
        register_champion(built, built.model)
        yield built
    finally:
        delete_project_keys(client, project)
        client.close()


@contextmanager
def app_client(settings: Settings, **app_options) -> Iterator[httpx.Client]:
    """The app served as ``churn serve`` serves it (serving.server's uvicorn configuration, its bounds included)
    by a real uvicorn server in a thread of this process (lifespan included); logging is left as pytest set it."""
    local = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": free_port()})
    config = server_config(local, create_app(settings, **app_options), log_level="warning", lifespan="on")
    port = local.api_port
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def api(world: World) -> Iterator[httpx.Client]:
    with app_client(world.settings) as client:
        yield client


@contextmanager
def redis_server(
    port: int, workdir: Path, password: str | None = None, options: tuple[str, ...] = ()
) -> Iterator[subprocess.Popen]:
    """A throwaway redis-server on ``port``; SAVE writes ``workdir/dump.rdb``, which a restart on the same dir
    loads. ``options`` are more redis-server arguments."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--requirepass", password] if password else []
    process = subprocess.Popen([*command, "--dir", str(workdir), *options], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port, password=password)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "throwaway redis-server did not start"
                time.sleep(0.05)
        client.close()
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
            process.wait(timeout=10)
