"""`feast ui` from the feature repo: it starts (Feast's grpcio extra is a dev dependency; without it the command
died with "No module named 'grpc'"), serves its page on loopback and reads our registry."""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from churn_common.settings import Settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _feast() -> str:
    # The console script of the interpreter running the tests, whether or not its venv is on PATH.
    beside = Path(sys.executable).with_name("feast")
    found = str(beside) if beside.exists() else shutil.which("feast")
    assert found, "the feast command is missing: `make venv` installs it"
    return found


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of feature_repo/ with its own ../data beside it, applied by plain `feast apply` as a user would."""
    copy = tmp_path / "feature_repo"
    shutil.copytree(ROOT / "feature_repo", copy, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "CHURN_DATA_DIR": str(tmp_path / "data"), "PYTHONDONTWRITEBYTECODE": "1"}
    applied = subprocess.run([_feast(), "apply"], cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    return copy, env


@pytest.fixture
def ui(repo: tuple[Path, dict[str, str]], tmp_path: Path) -> Iterator[str]:
    copy, env = repo
    port = _free_port()
    log_path = tmp_path / "feast-ui.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [_feast(), "ui", "--host", "127.0.0.1", "--port", str(port)],
            cwd=copy,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_serving(url, server, log_path)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def _wait_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"feast ui exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"feast ui not serving after {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def test_feast_ui_serves_its_page_and_our_registry_on_loopback(ui: str) -> None:
    page = httpx.get(f"{ui}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<title>Feast" in page.text
    # Plain feast reads the YAML as it is: its project, not a CHURN_FEAST_PROJECT override.
    project = yaml.safe_load((ROOT / "feature_repo" / "feature_store.yaml").read_text())["project"]
    projects = httpx.get(f"{ui}/projects-list.json", timeout=10).json()["projects"]
    assert [entry["id"] for entry in projects] == [project]
    services = httpx.get(f"{ui}/api/v1/feature_services", params={"project": project}, timeout=10)
    assert services.status_code == 200, services.text
    names = {service["spec"]["name"] for service in services.json()["featureServices"]}
    assert Settings().event_catalog().feature_service in names
