"""A real serving world for the tests: the project's feature repo applied to a Feast project of its own on Redis
db 11, snapshots materialised, and a small ChurnModel registered in a local MLflow as the champion."""

import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import redis
from feast import FeatureService

from churn_common.feature_frame import normalize, service_schema
from churn_common.model import ChurnModel, RiskThresholds
from churn_common.names import CHAMPION_ALIAS, FEATURE_SERVICE, FEATURE_SERVICE_TAG, REGISTERED_MODEL
from churn_common.settings import PROJECT_ROOT, Settings
from churn_common.store import apply_repo, feature_store
from tests.feature_repo.factories import random_snapshots, write_snapshots
from training.models import LABEL, LOGISTIC, build_pipeline, calibrate, fit

FRESH_USERS = range(1, 41)  # newest snapshot: today 00:00 UTC
STALE_USERS = range(41, 51)  # newest snapshot: 5 days ago, beyond the 2-day ttl
UNKNOWN_USER = 10_000
STRING_FEATURES = ("plan", "country")


@dataclass
class World:
    settings: Settings
    snapshots: pd.DataFrame
    model: ChurnModel | None = None  # the champion registered at setup


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_snapshots(today: date, with_stale: bool = True) -> pd.DataFrame:
    fresh_days = [today - timedelta(days=d) for d in range(4, 0, -1)]
    stale_days = [today - timedelta(days=d) for d in range(9, 5, -1)]
    frames = [random_snapshots(FRESH_USERS, fresh_days, seed=11)]
    if with_stale:
        frames.append(random_snapshots(STALE_USERS, stale_days, seed=12))
    return pd.concat(frames, ignore_index=True)


def make_world(
    root: Path,
    project: str,
    redis_db: int,
    *,
    redis_port: int = 6379,
    tracking_uri: str | None = None,
    with_stale: bool = True,
) -> World:
    """Snapshots written, the feature repo applied and materialised; MLflow on a SQLite file unless given."""
    settings = Settings(
        data_dir=root / "data",
        feast_project=project,
        feast_profile="redis",
        redis_port=redis_port,
        redis_db=redis_db,
        mlflow_tracking_uri=tracking_uri or f"sqlite:///{root / 'mlflow.db'}",
        model_poll_seconds=0.3,
    )
    snapshots = build_snapshots(datetime.now(UTC).date(), with_stale)
    write_snapshots(snapshots, settings.paths.snapshots)
    store = apply_repo(settings)
    now = datetime.now(UTC)
    # ibis (under Feast's DuckDB offline store) calls a DuckDB method DuckDB deprecated; not ours to fix.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="ibis")
        store.materialize(now - timedelta(days=30), now)
    return World(settings, snapshots)


def delete_project_keys(client: redis.Redis, project: str) -> None:
    """Delete only the keys Feast wrote for this project (its name ends every key)."""
    keys = list(client.scan_iter(match=b"*" + project.encode(), count=1000))
    if keys:
        client.delete(*keys)


def train_model(world: World, seed: int) -> ChurnModel:
    """A small model of the shape training registers (training.models' logistic pipeline, sigmoid-calibrated) over
    the service's features (numeric plus two categorical)."""
    store_schema = service_schema(_feature_service(world.settings))
    numeric = list(store_schema.numeric_features)
    names = numeric + list(STRING_FEATURES)
    frame = normalize(world.snapshots, store_schema).fillna({name: "unknown" for name in STRING_FEATURES})
    frame[LABEL] = np.random.default_rng(seed).integers(0, 2, size=len(frame))
    half = len(frame) // 2
    pipeline = fit(build_pipeline(LOGISTIC, numeric, list(STRING_FEATURES), {"C": 10.0}), frame.iloc[:half], names)
    calibrated = calibrate(pipeline, frame.iloc[half:], names)
    reference = {name: float(frame[name].median()) for name in numeric}
    reference.update({name: str(frame[name].mode().iloc[0]) for name in STRING_FEATURES})
    return ChurnModel(calibrated, names, RiskThresholds(high=0.6, medium=0.4), reference)


def _feature_service(settings: Settings) -> FeatureService:
    return feature_store(settings).get_feature_service(FEATURE_SERVICE)


def register_champion(world: World, model: ChurnModel, feature_service: str = FEATURE_SERVICE) -> str:
    """Log, register, tag and promote ``model``; returns the new version number."""
    uri = world.settings.tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("serving-tests")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment("serving-tests", artifact_location=str(world.settings.paths.mlflow_artifacts))
    )
    # mlflow.register_model uses the process-wide URIs, which earlier tests may have pointed elsewhere.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=[])
    version = mlflow.register_model(info.model_uri, REGISTERED_MODEL)
    client.set_model_version_tag(REGISTERED_MODEL, version.version, FEATURE_SERVICE_TAG, feature_service)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version.version)
    return str(version.version)


def server_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "CHURN_DATA_DIR": str(settings.data_dir),
        "CHURN_FEAST_PROJECT": settings.feast_project,
        "CHURN_FEAST_PROFILE": settings.feast_profile,
        "CHURN_REDIS_HOST": settings.redis_host,
        "CHURN_REDIS_PORT": str(settings.redis_port),
        "CHURN_REDIS_DB": str(settings.redis_db),
        "CHURN_MLFLOW_TRACKING_URI": settings.tracking_uri,
        "CHURN_MODEL_POLL_SECONDS": str(settings.model_poll_seconds),
        "CHURN_ONLINE_TIMEOUT_MS": str(settings.online_timeout_ms),
    }
    env.update(overrides)
    return env


@contextmanager
def running_server(
    env: dict[str, str], *, via_cli: bool = False, factory: str = "serving.app:create_app"
) -> Iterator[str]:
    """A real uvicorn process (one worker) on a free port serving the app ``factory``, or ``churn serve`` itself
    with ``via_cli`` (slower to start: the CLI imports every stage). Yields the base URL."""
    port = free_port()
    if via_cli:
        command = [str(Path(sys.executable).with_name("churn")), "--log-level", "WARNING", "serve"]
    else:
        command = [sys.executable, "-m", "uvicorn", factory, "--factory", "--port", str(port)]
        command += ["--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(command, env={**env, "CHURN_API_PORT": str(port)}, cwd=PROJECT_ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_healthy(base: str, process: subprocess.Popen, timeout_s: float = 180.0) -> None:
    # Generous: importing Feast, MLflow and sklearn takes tens of seconds on a busy two-core CI machine.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before becoming healthy")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {base} not healthy within {timeout_s}s")
