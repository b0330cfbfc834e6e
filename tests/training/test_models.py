"""The candidate pipelines hold all preprocessing; the search scores every candidate on the purged folds; the
cross-fitted calibration keeps the fitted pipeline and its ranking, and improves the test window's Brier score."""

import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import spearmanr
from sklearn.calibration import _SigmoidCalibration
from sklearn.compose import ColumnTransformer
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import brier_score_loss, roc_auc_score

from tests.training.frames import STRING_FEATURES, feature_names, make_training_frame
from training import models
from training.split import time_split


@pytest.fixture(scope="module")
def split():
    frame, _ = make_training_frame(n_users=200, n_times=14, seed=3)
    return time_split(frame, horizon_days=30)


def fitted(split, family: str, params: dict):
    names = feature_names()
    numeric, categorical = models.feature_kinds(split.train, names)
    return models.fit(models.build_pipeline(family, numeric, categorical, params), split.train, names)


def test_feature_kinds_follow_dtypes(split) -> None:
    numeric, categorical = models.feature_kinds(split.train, feature_names())
    assert categorical == STRING_FEATURES
    assert "quiz_score_mean_7d" in numeric and len(numeric) + len(categorical) == len(feature_names())


@pytest.mark.parametrize("family", [models.LOGISTIC, models.BOOSTING])
def test_pipeline_handles_missing_values_and_unseen_categories(split, family: str) -> None:
    names = feature_names()
    pipeline = fitted(split, family, models.CANDIDATES[family][0])
    assert isinstance(pipeline.steps[0][1], ColumnTransformer)
    assert split.train["quiz_score_mean_7d"].isna().any()
    odd = split.test[names].head(3).copy()
    odd["country"] = "Atlantis"
    odd["plan"] = None
    odd["watch_minutes_7d"] = np.nan
    p = pipeline.predict_proba(odd)[:, 1]
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    assert roc_auc_score(split.test["label"], pipeline.predict_proba(split.test[names])[:, 1]) > 0.7


def test_logistic_pipeline_imputes_with_indicator_and_scales(split) -> None:
    numeric, categorical = models.feature_kinds(split.train, feature_names())
    pipeline = models.build_pipeline(models.LOGISTIC, numeric, categorical, {"C": 1.0})
    numeric_steps = {name: steps for name, steps, _ in pipeline.named_steps["preprocess"].transformers}["numeric"]
    assert numeric_steps.named_steps["impute"].add_indicator
    assert "scale" in numeric_steps.named_steps


@pytest.fixture(scope="module")
def searched(split) -> list[models.CrossValidation]:
    return models.search(split.train, feature_names(), split.folds)


def test_search_scores_every_candidate_best_first(searched) -> None:
    expected = sorted((family, str(params)) for family, grid in models.CANDIDATES.items() for params in grid)
    assert sorted((result.family, str(result.params)) for result in searched) == expected
    means = [result.roc_auc for result in searched]
    assert means == sorted(means, reverse=True)
    assert all(0.6 < auc <= 1.0 for auc in means)


def test_out_of_fold_scores_come_from_a_model_that_never_saw_the_row(split, searched) -> None:
    # Refit the chosen candidate on one fold's training rows by hand: its scores of the held-out block are the
    # recorded out-of-fold values, and the rows no fold held out have none.
    names, chosen, fold = feature_names(), searched[0], split.folds[-1]
    numeric, categorical = models.feature_kinds(split.train, names)
    by_hand = models.build_pipeline(chosen.family, numeric, categorical, chosen.params)
    by_hand.fit(split.train.iloc[fold.train][names], split.train.iloc[fold.train]["label"])
    held = split.train.iloc[fold.held_out][names]
    assert chosen.out_of_fold[fold.held_out] == pytest.approx(by_hand.decision_function(held))
    assert (chosen.fitted_on[fold.held_out] == len(fold.train)).all()
    covered = np.concatenate([f.held_out for f in split.folds])
    assert np.isnan(np.delete(chosen.out_of_fold, covered)).all()
    assert (np.delete(chosen.fitted_on, covered) == 0).all()


def test_calibration_freezes_the_final_pipeline_and_keeps_its_ranking(split, searched) -> None:
    names, chosen = feature_names(), searched[0]
    pipeline = fitted(split, chosen.family, chosen.params)
    raw = pipeline.predict_proba(split.test[names])[:, 1]
    calibrated = models.calibrate_out_of_fold(pipeline, split.train, names, chosen)
    assert calibrated.calibrated_classifiers_[0].estimator.estimator is pipeline
    assert isinstance(calibrated.calibrated_classifiers_[0].estimator, FrozenEstimator)
    # The frozen pipeline was not refitted: its own scores are unchanged.
    assert pipeline.predict_proba(split.test[names])[:, 1] == pytest.approx(raw)
    scores = calibrated.predict_proba(split.test[names])[:, 1]
    assert spearmanr(raw, scores).statistic == pytest.approx(1.0)


def test_the_sigmoid_is_the_out_of_fold_one_scaled_to_the_final_size(split, searched) -> None:
    names, chosen = feature_names(), searched[0]
    calibrated = models.calibrate_out_of_fold(fitted(split, chosen.family, chosen.params), split.train, names, chosen)
    held = chosen.fitted_on > 0
    plain = _SigmoidCalibration().fit(chosen.out_of_fold[held], split.train["label"].to_numpy()[held])
    # Harmonic mean of the fold models' sizes over the rows they scored, over the final model's size.
    scale = len(chosen.fitted_on[held]) / np.sum(1 / chosen.fitted_on[held]) / len(split.train)
    assert 0 < scale < 1
    sigmoid = calibrated.calibrated_classifiers_[0].calibrators[0]
    assert sigmoid.a_ == pytest.approx(-1 + scale * (1 + plain.a_))
    assert sigmoid.b_ == pytest.approx(scale * plain.b_)


@pytest.mark.parametrize("family", [models.BOOSTING, models.LOGISTIC])
def test_calibration_is_not_worse_than_none_on_the_test_window(split, family: str) -> None:
    """Brier score on the test window: the calibrated model against its own frozen pipeline, and against the
    out-of-fold sigmoid applied unscaled (which fold models a third of the final size would give it)."""
    names, params = feature_names(), models.CANDIDATES[family][0]
    result = models.cross_validate(family, params, split.train, names, split.folds)
    pipeline = fitted(split, family, params)
    labels = split.test["label"].to_numpy()
    decision = pipeline.decision_function(split.test[names])
    held = result.fitted_on > 0
    plain = _SigmoidCalibration().fit(result.out_of_fold[held], split.train["label"].to_numpy()[held])
    calibrated = models.calibrate_out_of_fold(pipeline, split.train, names, result)
    brier = brier_score_loss(labels, calibrated.predict_proba(split.test[names])[:, 1])
    uncalibrated = brier_score_loss(labels, expit(decision))
    assert uncalibrated == pytest.approx(brier_score_loss(labels, pipeline.predict_proba(split.test[names])[:, 1]))
    assert brier < brier_score_loss(labels, plain.predict(decision))
    squared = (calibrated.predict_proba(split.test[names])[:, 1] - labels) ** 2 - (expit(decision) - labels) ** 2
    per_user = split.test.assign(d=squared).groupby("user_id")["d"].sum()
    standard_error = per_user.std() * np.sqrt(len(per_user)) / len(labels)
    if family == models.BOOSTING:
        # Boosting scores unseen rows overconfidently: the sigmoid must help.
        assert brier < uncalibrated
    else:
        # Logistic regression is near calibrated already: no worse beyond the noise of the paired difference.
        assert brier - uncalibrated < 2 * standard_error


def test_unknown_family_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model family"):
        models.build_pipeline("svm", ["a"], [], {})
