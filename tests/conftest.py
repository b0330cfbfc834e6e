"""Shared fixtures. Servers are real: Redis and PostgreSQL on 127.0.0.1. A test that cannot reach one fails
with a message saying so; nothing is skipped silently."""

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from churn_common.settings import PROJECT_ROOT, Settings

# Our own Redis db index; tests delete only the keys of the Feast projects they created in it.
TEST_REDIS_DB = int(os.environ.get("CHURN_TEST_REDIS_DB", "11"))
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings pointing every stage at a fresh data directory and a Feast project of its own."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("CHURN_DATA_DIR", str(data_dir))
    return Settings(
        data_dir=data_dir,
        feast_project=unique_name("t"),
        redis_db=TEST_REDIS_DB,
        n_users=300,
        n_days=120,
    )


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    if not _reachable(REDIS_HOST, REDIS_PORT):
        pytest.fail(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}; run `make services`")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=TEST_REDIS_DB)
    yield client
    client.close()


@pytest.fixture
def postgres_dsn() -> str:
    if not _reachable(POSTGRES_HOST, POSTGRES_PORT):
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_HOST}:{POSTGRES_PORT}; run `make services`")
    return f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}"


ARTIFACTS = Path(os.environ.get("CHURN_TEST_ARTIFACTS", PROJECT_ROOT / "build" / "test-artifacts"))


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """A directory for what a test leaves for people to look at (screenshots): build/test-artifacts/<test>/, or
    under CHURN_TEST_ARTIFACTS. Kept after the run; CI uploads it."""
    directory = ARTIFACTS / request.node.name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def chromium() -> Iterator[webdriver.Chrome]:
    """Headless Debian Chromium through its chromedriver (scripts/system_deps.sh installs both)."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.fail("chromium and chromedriver are needed: run `make system-deps` (Debian chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    browser.implicitly_wait(0)
    try:
        yield browser
    finally:
        browser.quit()
