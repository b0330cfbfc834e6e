"""A second, differently shaped product through the CLI alone, as docs/bring_your_own_events.md tells a new user:
the subscription social app (products.social: 8 event types, user ids from 0, no plan, steady until cancelled).

Only ``churn`` commands in subprocesses, configured by environment variables: generate, validate, build, apply,
train with the catalogue's closure label, materialise to real Redis, serve. The test then checks what a user of the
platform would: the model beats a one-feature baseline on its own held-back test window (computed here from the
run's test-set artifact), the run says which label it was trained on, and ``/predict`` answers with the social
service's features and the population rule's statuses, computed here from the raw data.

Batch scoring (``churn score``) runs too: its list words the reasons with the social catalogue's descriptions.
"""

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import redis
from sklearn.metrics import roc_auc_score

from churn_common.names import CHAMPION_ALIAS, REGISTERED_MODEL
from products.social import CATALOG as SOCIAL
from tests.conftest import TEST_REDIS_DB, unique_name
from tests.feature_repo.conftest import delete_project_keys
from tests.serving.world import running_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

CHURN = Path(sys.executable).with_name("churn")
USERS, DAYS, SEED = "1200", "180", "7"
START = "2026-01-01"
NOW = datetime(2026, 6, 30, tzinfo=UTC)  # the end of the generated period: the clock of every command
# Independent of the catalogue code: the social app's event types that show a user engaging.
ACTIVITY = {"app_open", "post", "comment", "like", "message", "story_view"}
BASELINES = ("days_since_last_activity", "tenure_days")
UNKNOWN_USER = 10**9


def churn(env: dict[str, str], cwd: Path, *args: str) -> str:
    """Run ``churn <args>`` as a new user would; its standard output, or the failure with its error output."""
    done = subprocess.run(
        [str(CHURN), "--log-level", "WARNING", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"churn {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def platform(tmp_path: Path, redis_client: redis.Redis):
    project = unique_name("social")
    env = {
        **os.environ,
        "CHURN_CATALOG": "products.social:CATALOG",
        "CHURN_DATA_DIR": str(tmp_path / "data"),
        "CHURN_FEAST_PROJECT": project,
        "CHURN_FEAST_PROFILE": "redis",
        "CHURN_REDIS_DB": str(TEST_REDIS_DB),
        "CHURN_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "CHURN_NOW": NOW.isoformat(),
    }
    yield env, tmp_path
    delete_project_keys(redis_client, project)


def expected_statuses(raw: Path) -> pd.Series:
    """The population rule at NOW from the raw export and log: closed from closed_at on, else scored when active in
    the trailing 30 days, else inactive."""
    users = pd.read_parquet(raw / "users.parquet")
    events = pd.read_parquet(raw / "events")
    active = events[events["event_type"].isin(ACTIVITY) & (events["event_timestamp"] >= NOW - timedelta(days=30))]
    status = pd.Series("inactive", index=users["user_id"])
    status[status.index.isin(active["user_id"])] = "scored"
    status[(users["closed_at"] <= NOW).to_numpy()] = "closed"
    return status


def test_the_social_app_end_to_end_through_the_cli(platform) -> None:
    env, cwd = platform
    churn(env, cwd, "data", "generate", "--users", USERS, "--days", DAYS, "--start", START, "--seed", SEED)
    assert "validation PASSED" in churn(env, cwd, "data", "validate")
    churn(env, cwd, "features", "build")
    churn(env, cwd, "features", "apply")
    summary = json.loads(churn(env, cwd, "train", "--promote"))
    report = json.loads(churn(env, cwd, "materialize"))

    assert summary["label"] == "closure" and summary["promotion"]["promoted"]
    assert report["mode"] == "refill"
    test_set, model_features, run = champion_run(env["CHURN_MLFLOW_TRACKING_URI"], cwd)
    assert run.data.params["label"] == "closure"
    assert "plan" not in model_features and {"country", "acquisition_channel", "opens_30d"} <= set(model_features)
    check_beats_baselines(test_set, summary["test_metrics"]["roc_auc"]["value"])

    statuses = expected_statuses(cwd / "data" / "raw")
    assert {"scored", "closed"} <= set(statuses)
    check_batch_scoring(json.loads(churn(env, cwd, "score")), statuses)
    with running_server(env, via_cli=True) as base:
        check_predictions(base, statuses, model_features)


def check_batch_scoring(report: dict, statuses: pd.Series) -> None:
    """Every user the rule scores at NOW is scored; the high-risk list explains in the social app's words."""
    assert report["statuses"]["scored"] == report["scored"] == int((statuses == "scored").sum())
    listed = pd.read_csv(report["high_risk_list"])
    assert len(listed) == report["high_risk"] > 0
    segments = [segment for why in listed["why"] for segment in why.split("; ")]
    # "<plain words>: <value> (typical <value>)", and never a feature's name (they all hold an underscore).
    assert all(re.fullmatch(r"[^_:;]+: \S+ \(typical \S+\)", segment) for segment in segments), segments[:5]


def champion_run(uri: str, cwd: Path) -> tuple[pd.DataFrame, list[str], mlflow.entities.Run]:
    """The champion's test-set artifact (its held-back window), its model's inputs, and its run."""
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    mlflow.set_tracking_uri(uri)
    path = mlflow.artifacts.download_artifacts(
        run_id=version.run_id, artifact_path="evaluation/test_set.parquet", dst_path=str(cwd / "artifacts")
    )
    test_set = pd.read_parquet(path)
    features = [c for c in test_set.columns if c not in ("user_id", "event_timestamp", "label")]
    return test_set, features, client.get_run(version.run_id)


def check_beats_baselines(test_set: pd.DataFrame, model_auc: float) -> None:
    """The model's test ROC-AUC above each one-feature baseline's on the same rows, the baseline given whichever
    direction suits it best on those very rows."""
    labels = test_set["label"].to_numpy()
    assert 0.02 < labels.mean() < 0.5, "the test window should hold a sound share of closures"
    for name in BASELINES:
        values = test_set[name].to_numpy(dtype=np.float64)
        assert not np.isnan(values).any()
        auc = roc_auc_score(labels, values)
        assert model_auc > max(auc, 1 - auc) + 0.03, f"{name}: baseline {max(auc, 1 - auc):.3f}, model {model_auc}"


def check_predictions(base: str, statuses: pd.Series, model_features: list[str]) -> None:
    # Up to ten users of each status, and user 0 (the social app counts from 0, as Feast's int64 keys allow).
    sample = pd.concat([statuses.loc[[0]], statuses.drop(index=0).groupby(statuses.drop(index=0)).head(10)])
    answers = httpx.post(f"{base}/predict/batch", json={"user_ids": sample.index.tolist()}, timeout=60).json()
    by_user = {entry["user_id"]: entry for entry in answers["results"]}
    assert {user: by_user[user]["status"] for user in sample.index} == sample.to_dict()
    for user, status in sample.items():
        entry = by_user[user]
        assert entry["feature_service"] == SOCIAL.feature_service
        if status == "scored":
            assert 0.0 <= entry["churn_probability"] <= 1.0 and entry["risk_band"] in ("low", "medium", "high")
            assert {reason["feature"] for reason in entry["reasons"]} <= set(model_features)
        else:
            assert entry["churn_probability"] is None and entry["reasons"] == []
    scored = int(sample[sample == "scored"].index[0])
    single = httpx.get(f"{base}/predict", params={"user_id": scored}, timeout=30)
    assert single.status_code == 200 and single.json()["churn_probability"] == by_user[scored]["churn_probability"]
    assert httpx.get(f"{base}/predict", params={"user_id": UNKNOWN_USER}, timeout=30).status_code == 404
