"""Training on data the project did not generate: a users table without an optional attribute (no ``plan``), or an
event type that never occurs, leaves model features without a single value. Training must neither crash nor
silently build a broken model: such a feature is left out of the model's inputs, and the model still compiles to
the numpy path serving uses, which agrees with predict_proba."""

import logging

import numpy as np
import pandas as pd
import pytest

from churn_common.compiled import compile_verified, probe_rows, verify
from tests.training.conftest import HORIZON_DAYS
from tests.training.frames import feature_names, make_training_frame
from training.models import BOOSTING, CANDIDATES, LOGISTIC, build_pipeline, cross_validate, feature_kinds, fit
from training.split import time_split
from training.train import reference_values, train_churn_model

NEVER_OCCURS = [f"quiz_score_mean_{w}d" for w in (7, 14, 30, 90)]


@pytest.fixture(scope="module")
def frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_training_frame(n_users=150, n_times=14, seed=4)


def test_reference_values_of_features_without_any_value_are_the_missing_markers() -> None:
    frame = pd.DataFrame(
        {
            "plan": pd.Series([None, None, None], dtype=object),
            "country": pd.Series(["DE", None, "DE"], dtype=object),
            "quiz": [np.nan] * 3,
            "sessions": [1.0, np.nan, 3.0],
        }
    )
    values = reference_values(frame, ["plan", "country", "quiz", "sessions"])
    # What normalize() gives the model for a missing string (None) and a missing number (NaN).
    assert values["plan"] is None and values["country"] == "DE"
    assert np.isnan(values["quiz"]) and values["sessions"] == 2.0


def test_pipelines_take_only_the_features_with_a_value_in_their_rows() -> None:
    frame = pd.DataFrame(
        {
            "plan": pd.Series([None, None], dtype=object),
            "country": ["DE", "FR"],
            "quiz": [np.nan, np.nan],
            "sessions": [1, 2],
        }
    )
    assert feature_kinds(frame, ["plan", "country", "quiz", "sessions"]) == (["sessions"], ["country"])


@pytest.mark.parametrize("family", [LOGISTIC, BOOSTING])
def test_each_family_fits_rows_where_a_feature_is_all_missing(frame, family: str) -> None:
    rows = frame[0].assign(plan=None, **dict.fromkeys(NEVER_OCCURS, np.nan))
    pipeline = build_pipeline(family, *feature_kinds(rows, feature_names()), {})
    scores = fit(pipeline, rows, feature_names()).predict_proba(rows[feature_names()])[:, 1]
    assert np.isfinite(scores).all() and len(np.unique(scores)) > 10
    split = time_split(rows, HORIZON_DAYS)
    cv = cross_validate(family, CANDIDATES[family][0], split.train, feature_names(), split.folds)
    assert cv.roc_auc > 0.6


def test_a_users_table_without_plan_trains_a_model_without_it(frame, caplog: pytest.LogCaptureFixture) -> None:
    rows = frame[0].assign(plan=None, **dict.fromkeys(NEVER_OCCURS, np.nan))
    with caplog.at_level(logging.WARNING, logger="training.train"):
        result = train_churn_model(rows, HORIZON_DAYS, frame[1])
    left_out = ["plan", *NEVER_OCCURS]
    assert result.model.feature_names == [name for name in feature_names() if name not in left_out]
    assert all(name in caplog.text for name in left_out) and "left out of the model inputs" in caplog.text
    assert result.metrics["roc_auc"] > 0.65
    assert set(result.model.reference_values) == set(result.model.feature_names)
    # Serving's fast path compiles it and agrees with predict_proba; rows still carrying the empty columns score.
    compiled = compile_verified(result.model)
    assert compiled is not None
    assert verify(compiled, probe_rows(result.model, compiled)) <= 1e-9
    assert np.isfinite(result.model.predict_proba(rows.head(50))).all()


def test_a_feature_missing_in_the_earliest_fold_trains_and_keeps_it(frame) -> None:
    # An attribute the users table gained late: absent in every row the first purged-CV fold is fitted on, present
    # in the later training rows. That fold fits without it; the final model, fitted on every training row, uses it.
    rows = frame[0].copy()
    split = time_split(rows, HORIZON_DAYS)
    earliest_fit = split.train.iloc[split.folds[-1].train]
    rows.loc[rows["event_timestamp"] <= earliest_fit["event_timestamp"].max(), "plan"] = None
    assert time_split(rows, HORIZON_DAYS).train["plan"].notna().any()
    result = train_churn_model(rows, HORIZON_DAYS, frame[1])
    assert "plan" in result.model.feature_names
    assert result.metrics["roc_auc"] > 0.65
    assert result.model.reference_values["plan"] is not None


def test_a_feature_with_values_only_after_the_training_rows_is_left_out(frame, caplog) -> None:
    # Present in the test rows only: the model could not have learned from it, so it is no input and no reason.
    rows = frame[0].copy()
    split = time_split(rows, HORIZON_DAYS)
    rows.loc[rows["event_timestamp"] <= split.train["event_timestamp"].max(), "plan"] = None
    with caplog.at_level(logging.WARNING, logger="training.train"):
        result = train_churn_model(rows, HORIZON_DAYS, frame[1])
    assert "plan" not in result.model.feature_names and "plan" in caplog.text
    reasons = result.model.explain(result.split.test.head(30))
    assert all(reason["feature"] != "plan" for row in reasons for reason in row)
