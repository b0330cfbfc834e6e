"""Known answers for drift monitoring against a real champion in a real MLflow: identical data has PSI ~ 0, a shift
above the training maximum a large PSI, a category never seen in training counts, a reference feature missing from
the snapshot is an error; thresholds come from the settings; the command's exit codes."""

import json
import math
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pydantic import ValidationError
from typer.testing import CliRunner

from churn_common.errors import ConfigurationError, DataError, ModelNotFound
from churn_common.names import JOIN_KEY
from churn_common.settings import Settings
from jobs.cli import app
from monitoring.drift import NEW_BUCKET, compare, drift_report, drift_report_file
from tests.monitoring.conftest import after_training, register_champion, write_scoring
from training.train import TrainingResult


def training_rows(result: TrainingResult) -> pd.DataFrame:
    """The champion's training rows as a scoring matrix: the very rows its reference describes."""
    return result.split.train[[JOIN_KEY, *result.model.feature_names]].reset_index(drop=True)


def test_identical_data_has_no_drift(world: Settings, trained: TrainingResult) -> None:
    day = after_training(trained)
    rows = training_rows(trained)
    write_scoring(world, day, rows, trained.model.predict_proba(rows))
    report = drift_report(world, day)
    assert {drift.name for drift in report.features} == set(trained.model.feature_names)
    assert all(drift.psi < 0.01 and drift.js_distance < 0.01 for drift in report.features), report.summary()
    assert report.drifted == [] and report.rows == len(rows) and report.not_comparable == []
    prediction = report.prediction.as_dict()
    assert prediction["available"] and prediction["rows"] == len(rows) and prediction["psi"] < 0.01
    assert json.loads(drift_report_file(world.paths, day).read_text()) == report.as_dict()


def test_shift_above_the_training_maximum_is_a_large_psi(world: Settings, trained: TrainingResult) -> None:
    day = after_training(trained)
    rows = training_rows(trained)
    rows["tenure_days"] = rows["tenure_days"] + rows["tenure_days"].max() + 1  # every value beyond training
    write_scoring(world, day, rows)
    report = drift_report(world, day)
    tenure = next(drift for drift in report.features if drift.name == "tenure_days")
    assert tenure.psi > 1 and tenure.drifted and report.drifted == ["tenure_days"]
    assert tenure.buckets.actual[-2] == 1.0  # all in the open upper bin, none lost
    assert tenure.buckets.labels[-2].endswith("inf)") and tenure.buckets.labels[-1] == "missing"
    assert report.worst.name == "tenure_days"


def test_psi_and_js_by_hand() -> None:
    reference = {"kind": "numeric", "bin_edges": ["-inf", 1.0, 2.0, "inf"], "proportions": [0.5, 0.25, 0.25]}
    drift = compare("x", reference | {"missing_share": 0.0}, pd.Series([10.0, 20.0, 30.0, 40.0]), 0.2)
    # Reference shares 0.5, 0.25, 0.25, missing 0; all values in the top bin; empty buckets count as 1e-4.
    by_hand = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (1e-4 - 0.25) * math.log(1e-4 / 0.25) + 0.75 * math.log(4)
    assert drift.psi == pytest.approx(by_hand, rel=1e-9) and drift.psi == pytest.approx(7.2527, abs=1e-4)
    # M = (0.25, 0.125, 0.625): KL(P||M) = 0.5 + 0.25 + 0.25 log2(0.4), KL(Q||M) = log2(1.6).
    assert drift.js_distance == pytest.approx(math.sqrt((0.75 + 0.25 * math.log2(0.4) + math.log2(1.6)) / 2))

    with_missing = {"kind": "numeric", "bin_edges": ["-inf", 0.0, "inf"], "proportions": [0.5, 0.5]}
    values = pd.Series([np.nan, 1.0, 0.0, -1.0])  # 0.0 sits on the edge: bins are [a, b), as training cut them
    drift = compare("y", with_missing | {"missing_share": 0.2}, values, 0.2)
    np.testing.assert_allclose(drift.buckets.expected, [0.4, 0.4, 0.2])
    np.testing.assert_allclose(drift.buckets.actual, [0.25, 0.5, 0.25])
    assert drift.psi == pytest.approx(0.15 * math.log(1.6) + 0.1 * math.log(1.25) + 0.05 * math.log(1.25))
    assert not drift.drifted


def test_a_new_category_counts(world: Settings, trained: TrainingResult) -> None:
    day = after_training(trained)
    rows = training_rows(trained)
    switched = rows.sample(frac=0.2, random_state=1).index
    rows.loc[switched, "acquisition_channel"] = "tiktok_ads"
    write_scoring(world, day, rows)
    channel = next(drift for drift in drift_report(world, day).features if drift.name == "acquisition_channel")
    assert channel.new_categories == {"tiktok_ads": len(switched)}
    assert channel.buckets.labels[-1] == NEW_BUCKET and channel.buckets.expected[-1] == 0.0
    assert channel.buckets.actual[-1] == pytest.approx(len(switched) / len(rows))
    assert channel.drifted and channel.psi > 1 and channel.as_dict()["new_categories"] == {"tiktok_ads": len(switched)}


def test_a_reference_feature_missing_from_the_snapshot_is_an_error(world: Settings, trained: TrainingResult) -> None:
    day = after_training(trained)
    write_scoring(world, day, training_rows(trained).drop(columns=["watch_minutes_7d"]))
    with pytest.raises(DataError, match="watch_minutes_7d"):
        drift_report(world, day)
    assert not drift_report_file(world.paths, day).exists()


def test_a_snapshot_column_without_reference_is_not_comparable(world: Settings, trained: TrainingResult) -> None:
    day = after_training(trained)
    write_scoring(world, day, training_rows(trained).assign(new_signal=1.0))
    report = drift_report(world, day)
    assert report.not_comparable == ["new_signal"] and report.as_dict()["not_comparable"] == ["new_signal"]
    assert "new_signal" not in {drift.name for drift in report.features}


def test_thresholds_come_from_the_settings(world: Settings, trained: TrainingResult) -> None:
    day = after_training(trained)
    rows = training_rows(trained)
    rows["tenure_days"] = rows["tenure_days"] + rows["tenure_days"].max() + 1
    write_scoring(world, day, rows)
    lenient = drift_report(world.model_copy(update={"drift_thresholds": {"tenure_days": 50.0}}), day)
    tenure = next(drift for drift in lenient.features if drift.name == "tenure_days")
    assert tenure.threshold == 50.0 and not tenure.drifted and lenient.drifted == []
    assert {drift.threshold for drift in lenient.features if drift.name != "tenure_days"} == {0.2}
    default = drift_report(world.model_copy(update={"drift_psi_threshold": 50.0}), day)
    assert {drift.threshold for drift in default.features} == {50.0} and default.drifted == []
    with pytest.raises(ConfigurationError, match="tenure_dayz"):
        drift_report(world.model_copy(update={"drift_thresholds": {"tenure_dayz": 0.5}}), day)


def test_thresholds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURN_DRIFT_THRESHOLDS", '{"tenure_days": 0.5, "churn_probability": 0.1}')
    monkeypatch.setenv("CHURN_DRIFT_PSI_THRESHOLD", "0.25")
    settings = Settings()
    assert settings.drift_thresholds == {"tenure_days": 0.5, "churn_probability": 0.1}
    assert settings.drift_psi_threshold == 0.25
    monkeypatch.setenv("CHURN_DRIFT_THRESHOLDS", '{"tenure_days": -1}')
    with pytest.raises(ValidationError, match="drift_thresholds"):
        Settings()


def test_prediction_drift_of_shifted_scores(world: Settings, trained: TrainingResult) -> None:
    day = after_training(trained)
    rows = training_rows(trained)
    write_scoring(world, day, rows, np.clip(trained.model.predict_proba(rows) + 0.5, 0, 1))
    prediction = drift_report(world, day).prediction.as_dict()
    assert prediction["available"] and prediction["drifted"] and prediction["psi"] > 1


def test_the_run_logs_the_scores_on_its_training_rows(world: Settings, trained: TrainingResult, tmp_path: Path) -> None:
    client = MlflowClient(tracking_uri=world.tracking_uri, registry_uri=world.tracking_uri)
    run_id = client.get_model_version_by_alias("churn", "champion").run_id
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="reference_predictions.json", dst_path=tmp_path, tracking_uri=world.tracking_uri
    )
    reference = json.loads(Path(local).read_text())
    scores = trained.model.predict_proba(trained.split.train)
    assert reference["kind"] == "numeric" and reference["missing_share"] == 0.0
    assert reference["bin_edges"][0] == "-inf" and reference["bin_edges"][-1] == "inf"
    np.testing.assert_allclose(reference["bin_edges"][1:-1], np.quantile(scores, np.arange(1, 10) / 10), rtol=1e-9)
    np.testing.assert_allclose(reference["proportions"], [0.1] * 10, atol=2 / len(scores))


def _delete_artifact(settings: Settings, name: str) -> None:
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    run_id = client.get_model_version_by_alias("churn", "champion").run_id
    root = Path(urlparse(client.get_run(run_id).info.artifact_uri).path)
    (root / name).unlink()


def test_old_versions_without_prediction_reference(settings: Settings, trained: TrainingResult) -> None:
    """A version logged before reference_predictions.json existed: features compared, predictions unavailable. One
    without reference_distributions.json cannot be compared at all: the command says so and exits 1."""
    register_champion(settings.data_dir, trained)
    _delete_artifact(settings, "reference_predictions.json")
    day = after_training(trained)
    rows = training_rows(trained)
    write_scoring(settings, day, rows, trained.model.predict_proba(rows))
    report = drift_report(settings, day)
    assert report.prediction.as_dict() == {
        "available": False,
        "reason": "version 1 was logged without reference_predictions.json",
    }
    assert len(report.features) == len(trained.model.feature_names) and report.drifted == []

    _delete_artifact(settings, "reference_distributions.json")
    result = CliRunner().invoke(app, ["monitor", "drift", "--date", day.isoformat()])
    assert result.exit_code == 1 and "has no reference_distributions.json" in result.stderr


def test_prediction_drift_without_a_batch_log(world: Settings, trained: TrainingResult) -> None:
    day = after_training(trained)
    write_scoring(world, day, training_rows(trained))
    prediction = drift_report(world, day).prediction.as_dict()
    assert prediction["available"] is False and "no batch prediction log" in prediction["reason"]


def test_the_latest_scoring_date_by_default(world: Settings, trained: TrainingResult) -> None:
    earlier, later = after_training(trained, 7), after_training(trained, 14)
    rows = training_rows(trained)
    write_scoring(world, later, rows)
    shifted = rows.assign(tenure_days=rows["tenure_days"] + rows["tenure_days"].max() + 1)
    write_scoring(world, earlier, shifted)
    report = drift_report(world)
    assert report.day == later and report.drifted == []
    assert drift_report_file(world.paths, later).exists() and not drift_report_file(world.paths, earlier).exists()


def test_a_snapshot_of_a_training_day_is_refused(world: Settings, trained: TrainingResult) -> None:
    last_training_day = after_training(trained, 0)
    write_scoring(world, last_training_day, training_rows(trained))
    with pytest.raises(DataError, match="not after the champion's training data"):
        drift_report(world, last_training_day)


def test_an_empty_snapshot_is_an_error(world: Settings, trained: TrainingResult) -> None:
    day = after_training(trained)
    write_scoring(world, day, training_rows(trained).iloc[:0])
    with pytest.raises(DataError, match="no rows"):
        drift_report(world, day)


def _cli(world: Settings, monkeypatch: pytest.MonkeyPatch, *args: str):
    monkeypatch.setenv("CHURN_MLFLOW_TRACKING_URI", world.tracking_uri)
    return CliRunner().invoke(app, ["monitor", "drift", *args])


def test_command_prints_the_summary_and_exits_0_on_drift(
    world: Settings, trained: TrainingResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = after_training(trained)
    rows = training_rows(trained)
    rows["tenure_days"] = rows["tenure_days"] + rows["tenure_days"].max() + 1
    write_scoring(world, day, rows, trained.model.predict_proba(rows))
    result = _cli(world, monkeypatch, "--date", day.isoformat())
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["features_drifted"] == ["tenure_days"] and summary["worst_feature"] == "tenure_days"
    assert summary["worst_psi"] > 1 and summary["date"] == day.isoformat()
    assert summary["prediction_drift"]["available"] is True
    assert drift_report_file(world.paths, day).exists()


def test_command_without_champion_exits_1(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["monitor", "drift"])
    assert result.exit_code == 1 and "ModelNotFound" in result.stderr and "champion" in result.stderr
    with pytest.raises(ModelNotFound):
        drift_report(settings)


def test_command_without_scoring_snapshot_exits_1(world: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _cli(world, monkeypatch)
    assert result.exit_code == 1 and "no scoring snapshot" in result.stderr and "churn score" in result.stderr
