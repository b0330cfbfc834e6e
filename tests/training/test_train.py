"""End-to-end fitting on the synthetic frame, the training-set checks, and what the run records."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from churn_common.compiled import compile_verified
from churn_common.errors import TrainingError
from churn_common.population import PopulationRule, Status
from tests.training.conftest import HORIZON_DAYS
from tests.training.frames import (
    ACTIVE_WINDOW_DAYS,
    candidate_schema,
    feature_names,
    make_training_frame,
    with_unscored_candidates,
)
from training import models
from training.dataset import scored_rows
from training.train import (
    HIGH_RISK_SHARE,
    MEDIUM_RISK_SHARE,
    fingerprint,
    reference_distributions,
    reference_rows,
    train_churn_model,
)


def test_model_learns_and_approaches_the_oracle(trained) -> None:
    assert trained.metrics["roc_auc"] > 0.72
    assert trained.metrics["roc_auc_oracle_ratio"] > 0.9
    assert trained.metrics["lift_top_decile"] > 1.5
    assert trained.family in ("logistic_regression", "hist_gradient_boosting")
    for family in ("logistic_regression", "hist_gradient_boosting"):
        assert 0.6 < trained.metrics[f"{family}.cv_roc_auc"] <= trained.metrics["cv_roc_auc"]
    assert trained.metrics["cv_folds"] == len(trained.split.folds)


def test_the_final_model_is_fitted_on_every_training_row(trained) -> None:
    # Refit the chosen candidate on all training rows by hand: the frozen pipeline inside the model scores alike.
    names = trained.model.feature_names
    numeric, categorical = models.feature_kinds(trained.split.train, names)
    by_hand = models.build_pipeline(trained.family, numeric, categorical, trained.params)
    by_hand.fit(trained.split.train[names], trained.split.train["label"])
    frozen = trained.model.estimator.calibrated_classifiers_[0].estimator
    rows = trained.split.test[names]
    assert frozen.predict_proba(rows)[:, 1] == pytest.approx(by_hand.predict_proba(rows)[:, 1])
    # Every observation time at least a horizon before the test window, 16 - 2 test times - 4 embargoed weeks.
    assert trained.split.train["event_timestamp"].nunique() == 10
    assert len(trained.split.train) == 300 * 10


def test_test_metrics_carry_bootstrap_intervals(trained) -> None:
    for name in ("roc_auc", "pr_auc"):
        low, high = trained.metrics[f"{name}_ci_low"], trained.metrics[f"{name}_ci_high"]
        assert low < trained.metrics[name] < high
        assert high - low < 0.2
    labels = trained.split.test["label"].to_numpy()
    assert trained.metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, trained.test_scores))
    assert trained.metrics["positives"] == labels.sum()


def test_calibration_does_not_worsen_the_test_brier_score(trained) -> None:
    labels = trained.split.test["label"].to_numpy()
    frozen = trained.model.estimator.calibrated_classifiers_[0].estimator
    uncalibrated = frozen.predict_proba(trained.split.test[trained.model.feature_names])[:, 1]
    calibrated = trained.model.predict_proba(trained.split.test)
    difference = (calibrated - labels) ** 2 - (uncalibrated - labels) ** 2
    per_user = trained.split.test.assign(d=difference).groupby("user_id")["d"].sum()
    standard_error = per_user.std() * np.sqrt(len(per_user)) / len(labels)
    assert brier_score_loss(labels, calibrated) - brier_score_loss(labels, uncalibrated) < 2 * standard_error
    assert trained.metrics["brier_uncalibrated"] == pytest.approx(brier_score_loss(labels, uncalibrated))


def test_the_trained_model_compiles_for_serving(trained) -> None:
    compiled = compile_verified(trained.model)
    assert compiled is not None
    rows = trained.split.test[trained.model.feature_names].head(20)
    records = rows.astype(object).where(rows.notna(), None).to_dict(orient="records")
    assert compiled.proba(compiled.encode_rows(records)) == pytest.approx(trained.model.predict_proba(rows), abs=1e-9)


def test_four_months_of_weekly_observations_give_a_valid_fit() -> None:
    # 13 weekly observation times, the last one's label ending 114 days after the first: the old split left one
    # observation time to fit on; this one fits on seven, with purged folds to choose and calibrate.
    frame, truth = make_training_frame(n_users=300, n_times=13, seed=4)
    result = train_churn_model(frame, HORIZON_DAYS, truth)
    assert result.split.train["event_timestamp"].nunique() == 7
    assert len(result.split.folds) >= 2
    assert result.metrics["roc_auc"] > 0.7
    assert result.metrics["roc_auc_ci_low"] > 0.6


def test_ground_truth_never_reaches_the_model(trained) -> None:
    assert "churn_propensity" not in trained.model.feature_names
    assert "label" not in trained.model.feature_names


def test_risk_thresholds_cut_the_training_rows_into_10_and_20_percent(trained) -> None:
    scores = trained.model.predict_proba(trained.split.train)
    high, medium = trained.model.risk_thresholds.high, trained.model.risk_thresholds.medium
    assert np.mean(scores >= high) == pytest.approx(0.10, abs=0.01)
    assert np.mean((scores >= medium) & (scores < high)) == pytest.approx(0.20, abs=0.01)


def share_tolerance(share: float, n_rows: int) -> float:
    """Three standard errors of the difference between two shares of ``n_rows`` rows each: the training rows set
    the cut (more rows than the test slice: this bounds the noise from above), a test slice measures it."""
    return 3 * math.sqrt(2 * share * (1 - share) / n_rows)


def test_risk_bands_reproduce_their_documented_shares_on_the_scored_test_population(trained, candidates) -> None:
    # The test slice holds scored rows only: every candidate row of the test times that the rule scores, no other.
    test_times = trained.split.test["event_timestamp"].unique()
    at_test_times = candidates[0][candidates[0]["event_timestamp"].isin(test_times)]
    assert len(trained.split.test) == PopulationRule(ACTIVE_WINDOW_DAYS).scored(at_test_times).sum()
    assert len(trained.split.test) < len(at_test_times)
    scores = trained.model.predict_proba(trained.split.test)
    high, medium = trained.model.risk_thresholds.high, trained.model.risk_thresholds.medium
    n = len(scores)
    assert np.mean(scores >= high) == pytest.approx(HIGH_RISK_SHARE, abs=share_tolerance(0.10, n))
    assert np.mean((scores >= medium) & (scores < high)) == pytest.approx(0.20, abs=share_tolerance(0.20, n))
    assert (HIGH_RISK_SHARE, MEDIUM_RISK_SHARE) == (0.10, 0.20)


def test_training_set_is_exactly_the_scored_candidates(candidates, training_set) -> None:
    frame, _ = make_training_frame(n_users=300, n_times=16, seed=0)
    pd.testing.assert_frame_equal(training_set.frame, frame, check_dtype=False)
    assert list(training_set.frame.columns) == ["user_id", "event_timestamp", "label", *feature_names()]
    # with_unscored_candidates adds 15 users per unscored status at each of the 16 times.
    assert training_set.population.counts == {
        Status.SCORED: 300 * 16,
        Status.CLOSED: 15 * 16,
        Status.INACTIVE: 15 * 16,
        Status.STALE: 15 * 16,
        Status.UNKNOWN: 15 * 16,
    }
    assert sum(training_set.population.counts.values()) == len(candidates[0])


def test_population_is_recorded_with_the_result(trained, training_set) -> None:
    assert trained.population == training_set.population
    assert trained.population.params()["population.active_window_days"] == ACTIVE_WINDOW_DAYS
    assert trained.population.metrics()["population.scored"] == len(training_set.frame)


def test_bands_set_on_all_candidates_would_miss_their_shares_on_the_scored(candidates, trained) -> None:
    # Why the cut matters: trained on every candidate that has any feature, the model ranks the unscored rows (all
    # churners, told apart by missing or zero activity) first and sets its high-risk band on them, so the users
    # serving does score rarely reach it.
    frame = candidates[0]
    everything = frame[frame["account_status"].notna()].drop(columns=["account_status"])
    model = train_churn_model(everything, HORIZON_DAYS).model
    scores = model.predict_proba(trained.split.test)
    assert np.mean(scores >= model.risk_thresholds.high) < HIGH_RISK_SHARE / 2


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


def test_a_row_with_every_feature_missing_is_a_training_error(training_data) -> None:
    frame = training_data[0].copy()
    frame.loc[frame.index[3], feature_names()] = None
    with pytest.raises(TrainingError, match="1 training rows have every feature missing"):
        train_churn_model(frame, HORIZON_DAYS)


def test_account_status_is_never_a_model_input(training_data) -> None:
    with pytest.raises(TrainingError, match="account_status decides who is scored"):
        train_churn_model(training_data[0].assign(account_status="open"), HORIZON_DAYS)


def test_a_kept_row_without_any_model_feature_is_a_training_error() -> None:
    # Were the rule's activity count a population field too, a scored row could carry no model feature at all.
    frame = with_unscored_candidates(make_training_frame(n_users=20, n_times=4, seed=2)[0], n_each=2)
    frame.loc[frame.index[0], [name for name in feature_names() if name != "active_days_30d"]] = None
    schema = candidate_schema()
    narrowed = dataclasses.replace(schema, population_features=schema.population_features | {"active_days_30d"})
    with pytest.raises(TrainingError, match="1 training rows have every feature missing"):
        scored_rows(frame, narrowed, PopulationRule(ACTIVE_WINDOW_DAYS))


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


def test_drift_references_describe_only_rows_with_full_windows() -> None:
    times = pd.to_datetime(["2026-01-31", "2026-02-07", "2026-05-02", "2026-05-09"], utc=True)
    train = pd.DataFrame({"event_timestamp": times, "events_90d": [3.0, 4.0, 40.0, 41.0]})
    full_from = pd.Timestamp("2026-05-01", tz="UTC")  # 90 days after the data's first day
    assert reference_rows(train, full_from)["events_90d"].tolist() == [40.0, 41.0]
    # A history too short for any full window keeps every row (and says so).
    assert reference_rows(train, pd.Timestamp("2026-06-01", tz="UTC")).equals(train)
    assert reference_rows(train, None).equals(train)
