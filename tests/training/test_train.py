"""End-to-end fitting on the synthetic frame, the training-set checks, and what the run records."""

import numpy as np
import pandas as pd
import pytest

from churn_common.errors import TrainingError
from tests.training.conftest import HORIZON_DAYS
from tests.training.frames import make_training_frame
from training.train import fingerprint, reference_distributions, train_churn_model


def test_model_learns_and_approaches_the_oracle(trained) -> None:
    assert trained.metrics["roc_auc"] > 0.72
    assert trained.metrics["roc_auc_oracle_ratio"] > 0.9
    assert trained.metrics["lift_top_decile"] > 1.5
    assert trained.family in ("logistic_regression", "hist_gradient_boosting")
    for family in ("logistic_regression", "hist_gradient_boosting"):
        assert f"{family}.validation_roc_auc" in trained.metrics


def test_ground_truth_never_reaches_the_model(trained) -> None:
    assert "churn_propensity" not in trained.model.feature_names
    assert "label" not in trained.model.feature_names


def test_risk_thresholds_cut_validation_into_10_and_20_percent(trained) -> None:
    scores = trained.model.predict_proba(trained.split.validation)
    high, medium = trained.model.risk_thresholds.high, trained.model.risk_thresholds.medium
    assert np.mean(scores >= high) == pytest.approx(0.10, abs=0.01)
    assert np.mean((scores >= medium) & (scores < high)) == pytest.approx(0.20, abs=0.01)


def test_test_scores_are_calibrated(trained) -> None:
    assert trained.test_scores.mean() == pytest.approx(trained.split.test["label"].mean(), abs=0.05)


def test_reasons_for_a_trained_model_are_deterministic(trained) -> None:
    rows = trained.split.test.head(4)
    first = trained.model.explain(rows)
    assert first == trained.model.explain(rows)
    assert first == [trained.model.explain(rows.iloc[[i]])[0] for i in range(4)]
    assert all(1 <= len(reasons) <= 3 for reasons in first)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.iloc[0:0], "empty"),
        (lambda f: f.assign(label=0), "both churners and non-churners"),
        (lambda f: f.drop(columns=["label"]), "misses columns"),
        (lambda f: f[["user_id", "event_timestamp", "label"]], "no feature columns"),
    ],
)
def test_unusable_frames_are_training_errors(training_data, mutate, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        train_churn_model(mutate(training_data[0]), HORIZON_DAYS)


def test_a_slice_without_churners_is_a_training_error(training_data) -> None:
    frame = training_data[0].copy()
    last_two = frame["event_timestamp"] >= sorted(frame["event_timestamp"].unique())[-2]
    frame.loc[last_two, "label"] = 0
    with pytest.raises(TrainingError, match="the test slice"):
        train_churn_model(frame, HORIZON_DAYS)


def test_fingerprint_ignores_row_order_and_sees_values(training_data) -> None:
    frame = training_data[0]
    shuffled = frame.sample(frac=1.0, random_state=5)
    assert fingerprint(shuffled) == fingerprint(frame)
    changed = frame.copy()
    changed.loc[changed.index[7], "sessions_7d"] += 1
    assert fingerprint(changed)["sha256"] != fingerprint(frame)["sha256"]
    assert fingerprint(frame)["rows"] == len(frame)
    assert fingerprint(frame)["time_min"] == frame["event_timestamp"].min().isoformat()


def test_reference_distributions_cover_every_value() -> None:
    frame = pd.DataFrame({"x": [float(v) for v in range(100)] + [np.nan] * 25, "plan": ["free"] * 75 + ["annual"] * 50})
    ref = reference_distributions(frame, ["x", "plan"])
    x = ref["x"]
    assert x["bin_edges"][0] == "-inf" and x["bin_edges"][-1] == "inf"
    assert x["missing_share"] == pytest.approx(25 / 125)
    assert sum(x["proportions"]) == pytest.approx(1.0)
    # Deciles of 0..99: nine inner edges, ten bins of ten values each.
    assert x["proportions"] == pytest.approx([0.1] * 10)
    assert ref["plan"] == {"kind": "categorical", "proportions": {"annual": 0.4, "free": 0.6}}


def test_frames_from_another_seed_train_too() -> None:
    frame, truth = make_training_frame(n_users=150, n_times=14, seed=11)
    result = train_churn_model(frame, HORIZON_DAYS, truth)
    assert set(result.slices["slice"]) == {"time", "plan"}
    assert result.metrics["roc_auc"] > 0.65
