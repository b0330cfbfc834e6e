"""Train, register, promote and load through a real ``mlflow server`` backed by PostgreSQL (its own database,
dropped afterwards) and serving artifacts from a temporary directory."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from churn_common.settings import Settings
from products.elearning import FEATURE_SERVICE
from tests.conftest import unique_name
from tests.training.test_registry import client_for, closed_port
from training import registry
from training.train import TrainingResult

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
STARTUP_TIMEOUT_S = 180


def _admin(dsn: str, statement: str) -> None:
    connection = psycopg2.connect(f"{dsn}/postgres")
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@pytest.fixture
def mlflow_server(postgres_dsn: str, tmp_path: Path) -> Iterator[str]:
    database = unique_name("churn_mlflow_test")
    _admin(postgres_dsn, f'CREATE DATABASE "{database}"')
    port = closed_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"{postgres_dsn}/{database}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env={
            **os.environ,
            "PYTHONWARNINGS": "ignore",
            # The server's background job runner (seven processes) is unused here and costs CI seconds.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, server, tmp_path / "mlflow-server.log")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        _admin(postgres_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {STARTUP_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def test_train_register_promote_and_load_through_the_server(
    settings: Settings, mlflow_server: str, trained: TrainingResult
) -> None:
    remote = settings.model_copy(update={"mlflow_tracking_uri": mlflow_server})
    version = registry.log_and_register(remote, trained, FEATURE_SERVICE)
    decision = registry.promote(remote)
    assert decision["decision"] == "promoted"
    client = client_for(remote)
    champion = registry.version_by_alias(client, "champion")
    assert str(champion.version) == str(version.version)
    assert champion.tags["feature_service"] == FEATURE_SERVICE
    # Artifacts went through the server's proxy, not to the local default directory.
    assert not settings.paths.mlflow_artifacts.exists()
    loaded = registry.load_model(champion)
    rows = trained.split.test.head(10)
    assert loaded.predict_proba(rows).tolist() == pytest.approx(trained.model.predict_proba(rows).tolist())
    assert loaded.explain(rows.head(2)) == trained.model.explain(rows.head(2))
