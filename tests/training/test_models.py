"""The candidate pipelines hold all preprocessing; calibration keeps the fitted pipeline and its ranking."""

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.compose import ColumnTransformer
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score

from tests.training.frames import STRING_FEATURES, feature_names, make_training_frame
from training import models
from training.split import time_split


@pytest.fixture(scope="module")
def split():
    frame, _ = make_training_frame(n_users=200, n_times=14, seed=3)
    return time_split(frame, horizon_days=30)


def test_feature_kinds_follow_dtypes(split) -> None:
    numeric, categorical = models.feature_kinds(split.fit, feature_names())
    assert categorical == STRING_FEATURES
    assert "quiz_score_mean_7d" in numeric and len(numeric) + len(categorical) == len(feature_names())


@pytest.mark.parametrize("family", [models.LOGISTIC, models.BOOSTING])
def test_pipeline_handles_missing_values_and_unseen_categories(split, family: str) -> None:
    names = feature_names()
    numeric, categorical = models.feature_kinds(split.fit, names)
    pipeline = models.fit(
        models.build_pipeline(family, numeric, categorical, models.CANDIDATES[family][0]), split.fit, names
    )
    assert isinstance(pipeline.steps[0][1], ColumnTransformer)
    assert split.fit["quiz_score_mean_7d"].isna().any()
    odd = split.test[names].head(3).copy()
    odd["country"] = "Atlantis"
    odd["plan"] = None
    odd["watch_minutes_7d"] = np.nan
    p = pipeline.predict_proba(odd)[:, 1]
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    assert roc_auc_score(split.test["label"], pipeline.predict_proba(split.test[names])[:, 1]) > 0.7


def test_logistic_pipeline_imputes_with_indicator_and_scales(split) -> None:
    numeric, categorical = models.feature_kinds(split.fit, feature_names())
    pipeline = models.build_pipeline(models.LOGISTIC, numeric, categorical, {"C": 1.0})
    numeric_steps = {name: steps for name, steps, _ in pipeline.named_steps["preprocess"].transformers}["numeric"]
    assert numeric_steps.named_steps["impute"].add_indicator
    assert "scale" in numeric_steps.named_steps


def test_search_returns_one_of_the_candidates(split) -> None:
    result = models.search(split.train, feature_names(), models.LOGISTIC, horizon_days=30)
    assert result.params in models.CANDIDATES[models.LOGISTIC]
    assert 0.6 < result.cv_roc_auc <= 1.0


def test_calibration_freezes_the_pipeline_and_keeps_its_ranking(split) -> None:
    names = feature_names()
    numeric, categorical = models.feature_kinds(split.fit, names)
    pipeline = models.fit(
        models.build_pipeline(models.BOOSTING, numeric, categorical, models.CANDIDATES[models.BOOSTING][0]),
        split.fit,
        names,
    )
    raw = pipeline.predict_proba(split.test[names])[:, 1]
    calibrated = models.calibrate(pipeline, split.validation, names)
    assert isinstance(calibrated.calibrated_classifiers_[0].estimator, FrozenEstimator)
    # The frozen pipeline was not refitted on the validation slice: its own scores are unchanged.
    assert pipeline.predict_proba(split.test[names])[:, 1] == pytest.approx(raw)
    scores = calibrated.predict_proba(split.test[names])[:, 1]
    assert spearmanr(raw, scores).statistic == pytest.approx(1.0)
    # Sigmoid calibration on validation brings the mean prediction near the validation churn rate.
    validation_scores = calibrated.predict_proba(split.validation[names])[:, 1]
    assert validation_scores.mean() == pytest.approx(split.validation["label"].mean(), abs=0.02)


def test_unknown_family_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model family"):
        models.build_pipeline("svm", ["a"], [], {})
