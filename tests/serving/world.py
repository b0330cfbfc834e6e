"""A real serving world for the tests: the project's feature repo applied to a Feast project of its own on Redis
db 11, snapshots and account history written as a build writes them and materialised by the materialisation job,
and a small ChurnModel registered in a local MLflow as the champion.

The users cover every answer of the population rule (churn_common.population) on the wall clock of the build:
scored, closed, inactive, stale and unknown."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO

import httpx
import mlflow
import numpy as np
import pandas as pd
import redis
from feast import FeatureService

from churn_common.feature_frame import normalize, service_schema
from churn_common.model import ChurnModel, RiskThresholds
from churn_common.names import CHAMPION_ALIAS, FEATURE_SERVICE_TAG, REGISTERED_MODEL
from churn_common.settings import PROJECT_ROOT, Settings
from churn_common.store import apply_repo, feature_store
from jobs.materialize import materialize
from products.elearning import FEATURE_SERVICE
from tests.feature_repo.factories import random_accounts, random_snapshots, with_accounts, write_features
from training.models import LABEL, LOGISTIC, build_pipeline, calibrate, fit

FRESH_USERS = range(1, 41)  # open, active, newest snapshot today 00:00 UTC: scored
STALE_USERS = range(41, 51)  # open, newest snapshot 5 days ago, beyond the 2-day ttl: 503
CLOSED_USERS = range(51, 56)  # fresh snapshots, account closed yesterday: 200 closed
INACTIVE_USERS = range(56, 61)  # open, fresh snapshots with no active day in 7, 14 or 30 days: 200 inactive
NO_ACCOUNT_USER = 61  # fresh snapshots but no account row: unknown, 404
JUST_CLOSED_USER = 62  # fresh snapshots, account closed a minute before the build: newer than every snapshot
UNKNOWN_USER = 10_000  # nothing at all: 404
SNAPSHOT_USERS = [*FRESH_USERS, *STALE_USERS, *CLOSED_USERS, *INACTIVE_USERS, NO_ACCOUNT_USER, JUST_CLOSED_USER]
INACTIVE_WINDOWS = (7, 14, 30)


@dataclass
class World:
    settings: Settings
    snapshots: pd.DataFrame
    """Every snapshot row with the account attributes valid at its time: what the FeatureService joins."""
    accounts: pd.DataFrame
    model: ChurnModel | None = None  # the champion registered at setup
    built_at: datetime | None = None  # the wall-clock instant the online store was loaded at


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_snapshots(today: date, with_stale: bool = True) -> pd.DataFrame:
    """Snapshot rows (no account attributes): four days ending today 00:00 for everyone but the stale users, whose
    four end five days ago."""
    fresh_days = [today - timedelta(days=d) for d in range(4, 0, -1)]
    stale_days = [today - timedelta(days=d) for d in range(9, 5, -1)]
    current = [user for user in SNAPSHOT_USERS if user not in STALE_USERS]
    frames = [random_snapshots(current, fresh_days, seed=11)]
    if with_stale:
        frames.append(random_snapshots(STALE_USERS, stale_days, seed=12))
    snapshots = pd.concat(frames, ignore_index=True)
    inactive = snapshots["user_id"].isin(INACTIVE_USERS)
    for window in INACTIVE_WINDOWS:
        snapshots.loc[inactive, f"active_days_{window}d"] = 0
    snapshots.loc[inactive, "days_since_last_activity"] = 45
    return snapshots


def build_accounts(snapshots: pd.DataFrame, built_at: datetime) -> pd.DataFrame:
    """Open from 2025 for every user with snapshots but NO_ACCOUNT_USER; closing rows for the closed users."""
    yesterday = pd.Timestamp(built_at.date() - timedelta(days=1), tz="UTC") + pd.Timedelta(hours=9, minutes=30)
    just_closed = pd.Timestamp(built_at.replace(microsecond=0) - timedelta(minutes=1))
    closed = dict.fromkeys(CLOSED_USERS, yesterday) | {JUST_CLOSED_USER: just_closed}
    users = [user for user in snapshots["user_id"].unique().tolist() if user != NO_ACCOUNT_USER]
    return random_accounts(users, seed=13, closed=closed)


def make_world(
    root: Path,
    project: str,
    redis_db: int,
    *,
    redis_port: int = 6379,
    redis_password: str | None = None,
    tracking_uri: str | None = None,
    with_stale: bool = True,
) -> World:
    """Features written and recorded as a build, the feature repo applied and the build materialised; MLflow on a
    SQLite file unless given. The stale users' rows reach the online store as they would have: materialised five
    days ago, when they were current (a first run then), and left there as later builds stopped writing them."""
    settings = Settings(
        data_dir=root / "data",
        feast_project=project,
        feast_profile="redis",
        redis_port=redis_port,
        redis_db=redis_db,
        redis_password=redis_password,
        mlflow_tracking_uri=tracking_uri or f"sqlite:///{root / 'mlflow.db'}",
        model_poll_seconds=0.3,
    )
    built_at = datetime.now(UTC)
    snapshots = build_snapshots(built_at.date(), with_stale)
    accounts = build_accounts(snapshots, built_at)
    write_features(settings.paths, snapshots, accounts)
    apply_repo(settings)
    if with_stale:
        stale_until = snapshots.loc[snapshots["user_id"].isin(STALE_USERS), "event_timestamp"].max()
        materialize(settings, end=stale_until.to_pydatetime() + timedelta(hours=1))
    materialize(settings, end=built_at)
    return World(settings, with_accounts(snapshots, accounts), accounts, built_at=built_at)


def delete_project_keys(client: redis.Redis, project: str) -> None:
    """Delete only the keys Feast wrote for this project (its name ends every key)."""
    keys = list(client.scan_iter(match=b"*" + project.encode(), count=1000))
    if keys:
        client.delete(*keys)


def train_model(world: World, seed: int) -> ChurnModel:
    """A small model of the shape training registers (training.models' logistic pipeline, sigmoid-calibrated) over
    the service's model features: numeric and categorical, never the account status the population rule reads."""
    schema = service_schema(_feature_service(world.settings))
    names = list(schema.model_features)
    strings = [name for name in names if name in schema.string_features]
    numeric = [name for name in names if name not in schema.string_features]
    frame = normalize(world.snapshots, schema).fillna({name: "unknown" for name in strings})
    # Labels that follow recent activity, so the model's probabilities spread over every risk band.
    churn_odds = np.exp(4.0 - frame["active_days_7d"].to_numpy())
    frame[LABEL] = (np.random.default_rng(seed).random(len(frame)) < churn_odds / (1 + churn_odds)).astype(int)
    half = len(frame) // 2
    pipeline = fit(build_pipeline(LOGISTIC, numeric, strings, {"C": 10.0}), frame.iloc[:half], names)
    calibrated = calibrate(pipeline, frame.iloc[half:], names)
    reference = {name: float(frame[name].median()) for name in numeric}
    reference.update({name: str(frame[name].mode().iloc[0]) for name in strings})
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
    if settings.now is not None:
        env["CHURN_NOW"] = settings.now.isoformat()
    if settings.redis_password is not None:
        env["CHURN_REDIS_PASSWORD"] = settings.redis_password.get_secret_value()
    env.update(overrides)
    return env


@contextmanager
def running_server(
    env: dict[str, str], *, via_cli: bool = False, factory: str = "serving.app:create_app"
) -> Iterator[str]:
    """A real uvicorn process (one worker) on a free port serving the app ``factory``, or ``churn serve`` itself
    with ``via_cli`` (slower to start: the CLI imports every stage). Yields the base URL."""
    with server_process(env, via_cli=via_cli, factory=factory) as (base, _):
        yield base


@contextmanager
def server_process(
    env: dict[str, str],
    *,
    via_cli: bool = False,
    factory: str = "serving.app:create_app",
    stderr: IO[bytes] | None = None,
    log_level: str = "WARNING",
) -> Iterator[tuple[str, subprocess.Popen]]:
    """:func:`running_server`'s process too (to measure it), its stderr to ``stderr`` when given."""
    port = free_port()
    if via_cli:
        command = [str(Path(sys.executable).with_name("churn")), "--log-level", log_level, "serve"]
    else:
        command = [sys.executable, "-m", "uvicorn", factory, "--factory", "--port", str(port)]
        command += ["--log-level", log_level.lower(), "--no-access-log"]
    process = subprocess.Popen(command, env={**env, "CHURN_API_PORT": str(port)}, cwd=PROJECT_ROOT, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process)
        yield base, process
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
