"""Tracking and registry against a real MLflow (local SQLite store): what a run records, the promotion gate,
rollback, loading the model in another process, and failures that must leave nothing registered."""

import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from churn_common.errors import ModelNotFound, TrackingServerUnavailable
from churn_common.names import REGISTERED_MODEL
from churn_common.settings import PROJECT_ROOT, Settings
from products.elearning import FEATURE_SERVICE
from tests.training.conftest import HORIZON_DAYS
from training import registry
from training.train import TrainingResult, train_churn_model


def aliases(client: MlflowClient) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(REGISTERED_MODEL).aliases.items()}


def client_for(settings: Settings) -> MlflowClient:
    # Explicit registry URI: MlflowClient would otherwise use the process-wide one another test left set.
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def noise_model(training_data) -> TrainingResult:
    """Same frame and test window, but labels before the test window shuffled: a real, much worse model."""
    frame, truth = training_data
    frame = frame.copy()
    before_test = frame["event_timestamp"] < sorted(frame["event_timestamp"].unique())[-2]
    rng = np.random.default_rng(7)
    frame.loc[before_test, "label"] = rng.permutation(frame.loc[before_test, "label"].to_numpy())
    return train_churn_model(frame, HORIZON_DAYS, truth)


def test_run_is_named_described_and_tagged_with_its_code_and_catalogue(
    settings: Settings, trained: TrainingResult
) -> None:
    version = registry.log_and_register(settings, trained, FEATURE_SERVICE)
    run = client_for(settings).get_run(version.run_id)
    test_times = sorted(trained.split.test["event_timestamp"].unique())
    window = f"{test_times[0]:%Y-%m-%d}..{test_times[-1]:%Y-%m-%d}"
    assert run.info.run_name == f"{trained.family} {FEATURE_SERVICE} {window}"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert run.data.tags["git_commit"] == head.stdout.strip() == version.tags["git_commit"]
    assert run.data.tags["catalog"] == settings.catalog == "products.elearning:CATALOG"
    note = run.data.tags["mlflow.note.content"]
    metrics = trained.metrics
    for fact in (
        f"Test window {window}: {len(trained.split.test)} rows, {int(trained.split.test['label'].sum())} churners",
        f"Test ROC-AUC {metrics['roc_auc']:.4f} (95 % CI {metrics['roc_auc_ci_low']:.4f}..",
        "Label: inactivity within 30 days",
        f"scored {300 * 16}, closed {15 * 16}",
        f"Training: {len(trained.split.train)} rows at 10 observation times",
    ):
        assert fact in note
    low, high = version.tags["test_roc_auc_ci"].split("..")
    assert float(low) < float(version.tags["test_roc_auc"]) < float(high)


def test_run_records_everything(settings: Settings, trained: TrainingResult) -> None:
    version = registry.log_and_register(settings, trained, FEATURE_SERVICE)
    client = client_for(settings)
    run = client.get_run(version.run_id)
    assert run.data.tags["feature_service"] == FEATURE_SERVICE
    assert version.tags["feature_service"] == FEATURE_SERVICE
    assert version.aliases == ["challenger"]
    assert run.data.metrics["roc_auc"] == pytest.approx(trained.metrics["roc_auc"])
    assert run.data.params["model_family"] == trained.family
    assert any(name.startswith("slice.time.") for name in run.data.metrics)
    # The population the training set was cut from (tests/training/frames.py: 300 scored users and 15 users of each
    # unscored status, at 16 observation times) and the rule that cut it.
    assert run.data.params["population.active_window_days"] == "30"
    expected = {"scored": 300 * 16, "closed": 15 * 16, "inactive": 15 * 16, "stale": 15 * 16, "unknown": 15 * 16}
    assert {name: run.data.metrics[f"population.{name}"] for name in expected} == expected
    assert {name: int(run.data.params[f"population.{name}"]) for name in expected} == expected
    assert run.data.metrics["roc_auc_ci_low"] == pytest.approx(trained.metrics["roc_auc_ci_low"])
    assert run.data.metrics["pr_auc_ci_high"] == pytest.approx(trained.metrics["pr_auc_ci_high"])
    assert run.data.params["cv_folds"] == str(len(trained.split.folds))
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(settings.paths.mlflow_artifacts)
    assert {p.name for p in (artifacts / "plots").iterdir()} == {"roc.png", "pr.png", "calibration.png", "lift.png"}
    fingerprint = json.loads((artifacts / "training_set_fingerprint.json").read_text())
    assert fingerprint == trained.fingerprint
    drift = json.loads((artifacts / "reference_distributions.json").read_text())
    assert set(drift) == set(trained.model.feature_names)


LOAD_SCRIPT = """
import json, sys
import mlflow, pandas as pd
from churn_common.model import ChurnModel
mlflow.set_tracking_uri(sys.argv[1])
loaded = mlflow.pyfunc.load_model("models:/churn@challenger")
inner = loaded.unwrap_python_model()
frame = pd.read_parquet(sys.argv[2])
print(json.dumps({"type": type(inner).__name__, "is_churn_model": isinstance(inner, ChurnModel),
                  "proba": inner.predict_proba(frame).tolist(),
                  "pyfunc": loaded.predict(frame)["churn_probability"].tolist(),
                  "bands": loaded.predict(frame)["risk_band"].tolist()}))
"""


def test_model_loads_in_another_process(settings: Settings, trained: TrainingResult, tmp_path: Path) -> None:
    registry.log_and_register(settings, trained, FEATURE_SERVICE)
    rows = trained.split.test[trained.model.feature_names].head(20)
    # What serving sends: every number as float64.
    rows = rows.astype({c: "float64" for c in rows.select_dtypes("number").columns})
    rows.to_parquet(tmp_path / "rows.parquet")
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, settings.tracking_uri, str(tmp_path / "rows.parquet")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    expected = trained.model.predict_proba(rows)
    assert out["is_churn_model"], out["type"]
    assert out["proba"] == pytest.approx(expected.tolist())
    assert out["pyfunc"] == pytest.approx(expected.tolist())
    assert out["bands"] == [trained.model.risk_band(p) for p in expected]


@dataclass
class Story:
    first: dict
    better: dict
    worse: dict
    aliases_after: dict[str, dict[str, str]]
    refused_tags: dict[str, str]
    rollback: dict
    second_rollback_error: str


@pytest.fixture(scope="module")
def story(tmp_path_factory, trained: TrainingResult, noise_model: TrainingResult) -> Story:
    """v1 (noise) promoted with no champion; v2 (good) promoted over it; v3 (noise again) refused; rollback."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("registry") / "data")
    client = client_for(settings)
    steps, snapshots = {}, {}
    for name, result in (("first", noise_model), ("better", trained), ("worse", noise_model)):
        registry.log_and_register(settings, result, FEATURE_SERVICE)
        steps[name] = registry.promote(settings)
        snapshots[name] = aliases(client)
    refused_tags = client.get_model_version(REGISTERED_MODEL, "3").tags
    rolled = registry.rollback(settings)
    snapshots["rollback"] = aliases(client)
    with pytest.raises(ModelNotFound) as second:
        registry.rollback(settings)
    return Story(steps["first"], steps["better"], steps["worse"], snapshots, refused_tags, rolled, str(second.value))


def test_first_version_is_promoted_when_there_is_no_champion(story: Story) -> None:
    assert story.first["decision"] == "promoted" and story.first["champion_roc_auc"] is None
    assert story.aliases_after["first"] == {"challenger": "1", "champion": "1"}


def test_better_challenger_is_promoted_and_old_champion_kept_as_previous(story: Story, trained: TrainingResult) -> None:
    assert story.better["decision"] == "promoted"
    assert story.better["challenger_roc_auc"] == pytest.approx(trained.metrics["roc_auc"])
    assert story.better["champion_roc_auc"] < story.better["challenger_roc_auc"] - 0.1
    assert story.aliases_after["better"] == {"challenger": "2", "champion": "2", "previous_champion": "1"}


def test_worse_challenger_is_refused_and_the_decision_recorded(
    story: Story, trained: TrainingResult, noise_model: TrainingResult
) -> None:
    assert story.worse["decision"] == "refused"
    assert story.aliases_after["worse"] == {"challenger": "3", "champion": "2", "previous_champion": "1"}
    # Both numbers are scored on the challenger's own test window, computed here independently.
    test = noise_model.split.test
    assert story.worse["champion_roc_auc"] == pytest.approx(
        roc_auc_score(test["label"], trained.model.predict_proba(test))
    )
    assert story.worse["challenger_roc_auc"] == pytest.approx(roc_auc_score(test["label"], noise_model.test_scores))
    assert story.refused_tags["promotion.decision"] == "refused"
    assert float(story.refused_tags["promotion.champion_roc_auc"]) == pytest.approx(story.worse["champion_roc_auc"])
    assert float(story.refused_tags["promotion.challenger_roc_auc"]) == pytest.approx(story.worse["challenger_roc_auc"])


def test_rollback_restores_the_previous_champion(story: Story) -> None:
    assert story.rollback == {"champion_version": "1", "rolled_back_version": "2", "previous_champion": None}
    assert story.aliases_after["rollback"] == {"challenger": "3", "champion": "1"}
    assert "previous_champion" in story.second_rollback_error


def test_challenger_within_tolerance_is_promoted(settings: Settings, trained: TrainingResult) -> None:
    registry.log_and_register(settings, trained, FEATURE_SERVICE)
    registry.promote(settings)
    registry.log_and_register(settings, trained, FEATURE_SERVICE)
    decision = registry.promote(settings)
    # Identical models score identically: "not worse" passes the gate.
    assert decision["decision"] == "promoted"
    assert decision["challenger_roc_auc"] == pytest.approx(decision["champion_roc_auc"])


@pytest.fixture(scope="module")
def few_churners(training_data) -> TrainingResult:
    """The good frame with all but 12 churners of the test window relabelled: a window too small to compare on."""
    frame, truth = training_data
    frame = frame.copy()
    test_rows = frame["event_timestamp"] >= sorted(frame["event_timestamp"].unique())[-2]
    churners = frame.index[test_rows & (frame["label"] == 1)]
    frame.loc[churners[12:], "label"] = 0
    return train_churn_model(frame, HORIZON_DAYS, truth)


def test_a_test_window_with_too_few_churners_is_never_promoted(
    settings: Settings, trained: TrainingResult, few_churners: TrainingResult
) -> None:
    client = client_for(settings)
    registry.log_and_register(settings, trained, FEATURE_SERVICE)
    assert registry.promote(settings)["decision"] == "promoted"
    version = registry.log_and_register(settings, few_churners, FEATURE_SERVICE)
    decision = registry.promote(settings)
    assert decision["decision"] == "refused" and not decision["promoted"]
    assert decision["test_positives"] == 12 and decision["min_positives"] == settings.promotion_min_positives == 30
    assert "has 12 churners, fewer than promotion_min_positives=30" in decision["reason"]
    assert aliases(client) == {"challenger": str(version.version), "champion": "1"}
    tags = client.get_model_version(REGISTERED_MODEL, version.version).tags
    assert tags["promotion.decision"] == "refused" and tags["promotion.test_positives"] == "12"
    assert "too few to tell models apart" in tags["promotion.reason"]


def test_without_a_champion_too_few_churners_still_refuse(settings: Settings, trained: TrainingResult) -> None:
    # The rule is the setting: the same good model, with more churners required than its window holds.
    strict = settings.model_copy(update={"promotion_min_positives": int(trained.metrics["positives"]) + 1})
    registry.log_and_register(strict, trained, FEATURE_SERVICE)
    assert registry.promote(strict)["decision"] == "refused"
    assert "champion" not in aliases(client_for(strict))
    relaxed = settings.model_copy(update={"promotion_min_positives": int(trained.metrics["positives"])})
    assert registry.promote(relaxed)["decision"] == "promoted"


def test_promote_without_challenger_is_model_not_found(settings: Settings) -> None:
    with pytest.raises(ModelNotFound, match="challenger"):
        registry.promote(settings)


def test_unreachable_tracking_server(settings: Settings, trained: TrainingResult) -> None:
    port = closed_port()
    unreachable = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{port}"})
    with pytest.raises(TrackingServerUnavailable, match=f"127.0.0.1:{port} is unreachable"):
        registry.log_and_register(unreachable, trained, FEATURE_SERVICE)
    with pytest.raises(TrackingServerUnavailable):
        registry.promote(unreachable)
