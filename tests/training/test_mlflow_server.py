"""Train, register, promote and load through a real ``mlflow server`` backed by PostgreSQL (its own database,
dropped afterwards), serving artifacts from a temporary directory, behind MLflow's basic-auth app as deployed."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg2
import pytest
from mlflow.exceptions import MlflowException

from churn_common.errors import ModelRegistryError
from churn_common.names import CHAMPION_ALIAS, REGISTERED_MODEL
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


PLATFORM_USER, PLATFORM_PASSWORD = "churn", "a platform password"
READER, READER_PASSWORD = "support", "a reader password"


def _auth_env(tmp_path: Path) -> dict[str, str]:
    """MLflow's basic-auth app as k8s/mlflow.yaml runs it: users in a database of their own, every user may read,
    the platform's user is the admin (its password from the environment, i.e. a Secret)."""
    config = tmp_path / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = {PLATFORM_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": PLATFORM_PASSWORD,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "a flask secret",
    }


@pytest.fixture
def mlflow_server(request: pytest.FixtureRequest, postgres_dsn: str, tmp_path: Path) -> Iterator[str]:
    """An open server; ``basic-auth`` (indirect parameter) behind MLflow's auth app, yielding the platform's URI."""
    database = unique_name("churn_mlflow_test")
    _admin(postgres_dsn, f'CREATE DATABASE "{database}"')
    port = closed_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    auth = getattr(request, "param", "open") == "basic-auth"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"{postgres_dsn}/{database}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"),
         *(["--app-name", "basic-auth"] if auth else [])],
        stdout=log, stderr=subprocess.STDOUT, env={
            **os.environ,
            "PYTHONWARNINGS": "ignore",
            # The server's background job runner (seven processes) is unused here and costs CI seconds.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            **(_auth_env(tmp_path) if auth else {}),
        },
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, server, tmp_path / "mlflow-server.log")
        yield f"http://{PLATFORM_USER}:{quote(PLATFORM_PASSWORD)}@127.0.0.1:{port}" if auth else url
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


@pytest.mark.parametrize("mlflow_server", ["basic-auth"], indirect=True)
def test_through_the_authenticated_server_only_the_platform_moves_the_champion(
    settings: Settings, mlflow_server: str, trained: TrainingResult
) -> None:
    """As k8s/mlflow.yaml runs it: the platform's credentials in its tracking URI (as its Secret holds them) train,
    register, promote and load; a reader may read but not move the alias; nobody gets in without credentials."""
    remote = settings.model_copy(update={"mlflow_tracking_uri": mlflow_server})
    version = registry.log_and_register(remote, trained, FEATURE_SERVICE)
    assert registry.promote(remote)["decision"] == "promoted"
    champion = registry.version_by_alias(client_for(remote), "champion")
    assert str(champion.version) == str(version.version) and champion.tags["feature_service"] == FEATURE_SERVICE
    # Artifacts went through the server's proxy, not to the local default directory.
    assert not settings.paths.mlflow_artifacts.exists()
    loaded = registry.load_model(champion, remote)
    rows = trained.split.test.head(10)
    assert loaded.predict_proba(rows).tolist() == pytest.approx(trained.model.predict_proba(rows).tolist())
    assert loaded.explain(rows.head(2)) == trained.model.explain(rows.head(2))

    address = mlflow_server.split("@", 1)[1]
    created = httpx.post(
        f"http://{address}/api/2.0/mlflow/users/create",
        json={"username": READER, "password": READER_PASSWORD},
        auth=(PLATFORM_USER, PLATFORM_PASSWORD),
        timeout=30,
    )
    assert created.status_code == 200, created.text
    reader_uri = f"http://{READER}:{quote(READER_PASSWORD)}@{address}"
    reader = client_for(settings.model_copy(update={"mlflow_tracking_uri": reader_uri}))
    assert str(registry.version_by_alias(reader, "champion").version) == str(version.version)  # it may read
    with pytest.raises(MlflowException, match="(?i)permission"):
        reader.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, "1")
    anonymous = client_for(settings.model_copy(update={"mlflow_tracking_uri": f"http://{address}"}))
    with pytest.raises(ModelRegistryError, match="not authenticated"):
        registry.version_by_alias(anonymous, "champion")
