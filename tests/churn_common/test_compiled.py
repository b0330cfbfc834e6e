"""The compiled scorer: equal to sklearn's predict_proba and to ChurnModel's reasons for the shapes training builds,
and a refusal (so serving falls back to sklearn) for every shape it does not compile."""

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

from churn_common.compiled import Uncompilable, compile_model, compile_verified, probe_rows, verify
from churn_common.model import ChurnModel, RiskThresholds
from training.models import BOOSTING, LABEL, LOGISTIC, build_pipeline, calibrate, fit
from training.train import reference_values

NUMERIC = ["sessions_7d", "watch_minutes_30d", "days_since_last_event", "tickets_90d"]
STRINGS = ["plan", "country"]
FEATURES = NUMERIC + STRINGS
PARAMS = {LOGISTIC: {"C": 1.0}, BOOSTING: {"max_iter": 40, "max_leaf_nodes": 15}}


def training_frame(n: int, seed: int) -> pd.DataFrame:
    """Counts, minutes with gaps, and categories with missing values, with a label that depends on several."""
    rng = np.random.default_rng(seed)
    minutes = rng.gamma(2.0, 40.0, n)
    minutes[rng.random(n) < 0.15] = np.nan
    recency = rng.exponential(12.0, n)
    plan = rng.choice(np.array(["free", "monthly", "annual", None], dtype=object), n, p=[0.4, 0.3, 0.25, 0.05])
    frame = pd.DataFrame(
        {
            "sessions_7d": rng.poisson(4.0, n).astype(np.int64),
            "watch_minutes_30d": minutes,
            "days_since_last_event": recency,
            "tickets_90d": rng.poisson(0.5, n).astype(np.float64),
            "plan": plan,
            "country": rng.choice(np.array(["DE", "BR", "US", "IN"], dtype=object), n),
        }
    )
    logit = 0.08 * recency - 0.3 * frame["sessions_7d"] + 0.6 * (plan == "free") + 0.7 * np.isnan(minutes) - 0.5
    frame[LABEL] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return frame


def churn_model(family: str, calibrated: bool, seed: int = 0) -> ChurnModel:
    frame = training_frame(1_500, seed)
    fitted = fit(build_pipeline(family, NUMERIC, STRINGS, PARAMS[family]), frame.iloc[:1_000], FEATURES)
    estimator = calibrate(fitted, frame.iloc[1_000:], FEATURES) if calibrated else fitted
    return ChurnModel(estimator, FEATURES, RiskThresholds(high=0.6, medium=0.3), reference_values(frame, FEATURES))


def serving_rows(n: int, seed: int) -> list[dict]:
    """Rows as the online reader hands them over: ints stay ints, missing values are None, categories may be new."""
    frame = training_frame(n, seed).drop(columns=LABEL)
    rows = [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        for r in frame.to_dict("records")
    ]
    rows[0]["country"] = "ZZ"  # never seen in training
    rows[1]["plan"] = None
    rows[2] = {name: None for name in FEATURES}
    return rows


def as_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        {name: pd.Series([r[name] for r in rows], dtype=object if name in STRINGS else np.float64) for name in FEATURES}
    )


MODELS = pytest.mark.parametrize(
    ("family", "calibrated"), [(LOGISTIC, True), (LOGISTIC, False), (BOOSTING, True), (BOOSTING, False)]
)


@MODELS
def test_probabilities_equal_predict_proba(family: str, calibrated: bool) -> None:
    model = churn_model(family, calibrated)
    compiled = compile_model(model)
    rows = serving_rows(300, seed=1) + probe_rows(model, compiled)

    got = compiled.proba(compiled.encode_rows(rows))

    expected = model.predict_proba(as_frame(rows))
    assert np.abs(got - expected).max() <= 1e-12
    assert got.std() > 0.05  # a model that answers the same for everyone would pass the line above trivially


@MODELS
def test_reasons_equal_the_sklearn_path(family: str, calibrated: bool) -> None:
    model = churn_model(family, calibrated, seed=2)
    compiled = compile_model(model)
    rows = serving_rows(40, seed=3)

    probabilities, reasons = compiled.score_and_explain(rows, top_k=3)

    want_probabilities, want_reasons = model.score_and_explain(as_frame(rows), top_k=3)
    assert np.abs(probabilities - want_probabilities).max() <= 1e-12
    assert reasons == want_reasons
    # == says 3 == 3.0; the JSON a client reads does not: a count is reported as a float on both paths
    assert [[type(r["value"]) for r in row] for row in reasons] == [
        [type(r["value"]) for r in row] for row in want_reasons
    ]
    assert sum(len(r) for r in reasons) > 40  # most rows have reasons, so the comparison covers the ranking
    assert {r["feature"] for row in reasons for r in row} & set(STRINGS)  # categorical occlusion is exercised


def test_an_unknown_category_encodes_like_sklearn_ignores_it() -> None:
    model = churn_model(LOGISTIC, calibrated=False)
    compiled = compile_model(model)
    row = serving_rows(3, seed=4)[0]

    encoded = compiled.encode_rows([row, row | {"country": "DE"}])

    transformed = model.estimator.steps[0][1].transform(as_frame([row, row | {"country": "DE"}]))
    np.testing.assert_array_equal(encoded, transformed)
    assert encoded[0].sum() != encoded[1].sum()  # "ZZ" set no one-hot column, "DE" did


def test_a_changed_model_fails_verification() -> None:
    compiled = compile_model(churn_model(LOGISTIC, calibrated=True))
    other = churn_model(LOGISTIC, calibrated=True, seed=9)
    compiled.model = other  # the arrays of the first model, checked against the second's predict_proba

    with pytest.raises(Uncompilable, match="differ from predict_proba"):
        verify(compiled, probe_rows(other, compiled))


def _with_estimator(estimator, frame: pd.DataFrame) -> ChurnModel:
    estimator.fit(frame[FEATURES], frame[LABEL])
    return ChurnModel(estimator, FEATURES, RiskThresholds(0.6, 0.3), reference_values(frame, FEATURES))


def _pipeline(numeric, categorical, classifier) -> Pipeline:
    preprocess = ColumnTransformer([("numeric", numeric, NUMERIC), ("categorical", categorical, STRINGS)])
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def _lr_pipeline(frame: pd.DataFrame) -> Pipeline:
    return fit(build_pipeline(LOGISTIC, NUMERIC, STRINGS, {"C": 1.0}), frame, FEATURES)


UNCOMPILABLE = {
    "isotonic calibration": lambda f: CalibratedClassifierCV(FrozenEstimator(_lr_pipeline(f)), method="isotonic"),
    "random forest": lambda f: _pipeline(
        SimpleImputer(), OneHotEncoder(handle_unknown="ignore"), RandomForestClassifier(n_estimators=3)
    ),
    "ordinal encoding": lambda f: _pipeline(
        SimpleImputer(),
        OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
        build_pipeline(LOGISTIC, [], [], {}).steps[1][1],
    ),
    "imputer without scaler": lambda f: _pipeline(
        SimpleImputer(), OneHotEncoder(handle_unknown="ignore"), build_pipeline(LOGISTIC, [], [], {}).steps[1][1]
    ),
}


@pytest.mark.parametrize("shape", sorted(UNCOMPILABLE))
def test_other_shapes_are_refused_and_logged(shape: str, caplog: pytest.LogCaptureFixture) -> None:
    frame = training_frame(600, seed=5).fillna({"plan": "none"})
    model = _with_estimator(UNCOMPILABLE[shape](frame), frame)

    with pytest.raises(Uncompilable):
        compile_model(model)
    with caplog.at_level(logging.WARNING, logger="churn_common.compiled"):
        assert compile_verified(model) is None
    assert "scoring with sklearn" in caplog.text


def test_compile_verified_returns_the_training_shapes() -> None:
    for family in (LOGISTIC, BOOSTING):
        assert compile_verified(churn_model(family, calibrated=True)) is not None
