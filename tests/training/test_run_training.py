"""`run_training` on a simulated world through the real build: the model learns from the scored population only,
and the run records that population and the rule."""

from datetime import timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from churn_common.feature_frame import service_schema
from churn_common.names import CHALLENGER_ALIAS, REGISTERED_MODEL
from churn_common.population import Status
from churn_common.settings import Settings
from churn_common.store import apply_repo
from jobs.model_commands import run_training
from products.elearning import FEATURE_SERVICE
from tests.factories import make_events, make_users, utc, write_validated
from tests.training.test_training_set import expected_statuses
from training import registry
from transformations.features import build_features

pytestmark = pytest.mark.slow

START, N_DAYS, N_USERS = utc(2026, 1, 1), 200, 150


def simulated_world(seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Users with a hidden engagement level: daily logins, videos and quizzes with a probability rising with it, and a
    monthly charge, until a churn day that comes sooner for the less engaged; a third of the churners close their
    account ten days later."""
    rng = np.random.default_rng(seed)
    level = rng.normal(size=N_USERS)
    signup_day = np.where(rng.random(N_USERS) < 0.7, -30, rng.integers(0, 100, N_USERS))
    churn_day = signup_day + np.ceil(rng.exponential(80 * np.exp(0.8 * level))).astype(int)
    rows = []
    for user in range(N_USERS):
        daily = 0.8 / (1 + np.exp(-level[user]))
        for day in range(max(signup_day[user], 0), min(churn_day[user], N_DAYS)):
            at = START + timedelta(days=day, hours=int(rng.integers(8, 20)), minutes=int(rng.integers(0, 60)))
            if rng.random() < daily:
                rows.append((user, at, "login", None))
            if rng.random() < daily / 2:
                rows.append((user, at + timedelta(minutes=5), "video_watch", float(rng.gamma(2.0, 10.0))))
            if rng.random() < daily / 4:
                rows.append((user, at + timedelta(minutes=9), "quiz_attempt", float(rng.uniform(40, 100))))
            if day % 30 == user % 30:
                kind = "payment_failed" if rng.random() < 0.1 else "payment_success"
                rows.append((user, at + timedelta(minutes=1), kind, 19.0 if kind == "payment_success" else None))
    users = make_users(N_USERS, first_id=0)
    users["signup_at"] = [START + timedelta(days=int(d), hours=6) for d in signup_day]
    closes = (churn_day + 10 < N_DAYS) & (rng.random(N_USERS) < 1 / 3)
    users["closed_at"] = pd.Series(
        [START + timedelta(days=int(d) + 10, hours=7) if c else None for d, c in zip(churn_day, closes, strict=True)],
        dtype="datetime64[us, UTC]",
    )
    users["signup_at"] = users["signup_at"].astype("datetime64[us, UTC]")
    return users, make_events(rows)


def test_run_training_learns_from_the_scored_population_and_records_it(settings: Settings, tmp_path: Path) -> None:
    users, events = simulated_world()
    write_validated(settings.paths, users, events)
    build_features(settings)
    store = apply_repo(settings)
    expected = expected_statuses(users, events)
    assert {Status.SCORED, Status.INACTIVE} <= set(expected)

    summary = run_training(settings, FEATURE_SERVICE, promote=False)

    counts = {status.value: int((expected == status).sum()) for status in Status}
    assert summary["population"] == counts
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    version = client.get_model_version_by_alias(REGISTERED_MODEL, CHALLENGER_ALIAS)
    run = client.get_run(version.run_id)
    assert run.data.params["population.active_window_days"] == str(settings.active_window_days)
    assert run.data.params["label"] == summary["label"] == "inactivity"  # the e-learning catalogue's
    assert {s: int(run.data.metrics[f"population.{s}"]) for s in counts} == counts
    # The summary `churn train` prints: the run, the chosen model, test metrics with their intervals.
    assert summary["run_id"] == version.run_id and summary["registered_version"] == version.version
    assert summary["model"] == {"family": run.data.params["model_family"], "params": summary["model"]["params"]}
    for name in ("roc_auc", "pr_auc"):
        metric = summary["test_metrics"][name]
        assert metric["value"] == pytest.approx(run.data.metrics[name], abs=5e-5)
        low, high = (run.data.metrics[f"{name}_ci_{end}"] for end in ("low", "high"))
        assert metric["ci95"] == pytest.approx([low, high], abs=5e-5)
        assert metric["ci95"][0] <= metric["value"] <= metric["ci95"][1]
    assert summary["test_window"] == run.data.params["test_window"]
    model = registry.load_model(version)
    assert model.feature_names == list(service_schema(store.get_feature_service(FEATURE_SERVICE)).model_features)
    assert "account_status" not in model.feature_names
    test_set = pd.read_parquet(
        mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path=registry.TEST_SET_ARTIFACT, dst_path=str(tmp_path)
        )
    )
    scored = set(expected.index[expected == Status.SCORED])
    assert set(zip(test_set["user_id"], test_set["event_timestamp"], strict=True)) <= scored
    assert test_set[model.feature_names].notna().any(axis=1).all()
