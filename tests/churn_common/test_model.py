"""ChurnModel: banding, the pyfunc output, input checks and reason codes on a model whose answer is known."""

import math

import numpy as np
import pandas as pd
import pytest

from churn_common.errors import SchemaError
from churn_common.model import ChurnModel, RiskThresholds

WEIGHTS = {"a": 1.0, "b": 0.8, "c": -0.5, "d": 0.0}
FREE_PLAN_BONUS = 0.25
REFERENCE = {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0, "plan": "annual"}
FEATURES = ["a", "b", "c", "d", "plan"]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class KnownLogit:
    """p = sigmoid(sum(w_j * x_j) + 0.25 * [plan == free]): each feature's effect is known in closed form."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        logit = sum(w * frame[name].to_numpy(dtype=float) for name, w in WEIGHTS.items())
        logit = logit + FREE_PLAN_BONUS * (frame["plan"].to_numpy() == "free")
        p = 1.0 / (1.0 + np.exp(-logit))
        return np.column_stack([1 - p, p])


@pytest.fixture
def model() -> ChurnModel:
    return ChurnModel(KnownLogit(), FEATURES, RiskThresholds(high=0.6, medium=0.3), REFERENCE)


def row(**values) -> dict:
    return {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0, "plan": "annual"} | values


def test_reasons_match_the_closed_form(model: ChurnModel) -> None:
    frame = pd.DataFrame([row(a=2.0, b=1.0, c=-1.0, d=3.0, plan="free")])
    total = 2.0 * 1.0 + 1.0 * 0.8 + (-1.0) * (-0.5) + FREE_PLAN_BONUS
    # Replacing one feature by its reference removes exactly its term from the logit.
    expected = {
        "a": sigmoid(total) - sigmoid(total - 2.0),
        "b": sigmoid(total) - sigmoid(total - 0.8),
        "c": sigmoid(total) - sigmoid(total - 0.5),
    }
    reasons = model.explain(frame)[0]
    assert [r["feature"] for r in reasons] == ["a", "b", "c"]
    for reason in reasons:
        assert reason["direction"] == "up"
        assert reason["contribution"] == pytest.approx(expected[reason["feature"]], abs=1e-6)
    assert [r["value"] for r in reasons] == [2.0, 1.0, -1.0]


def test_features_lowering_risk_or_without_effect_are_not_reasons(model: ChurnModel) -> None:
    frame = pd.DataFrame([row(a=-3.0, d=50.0, plan="free"), row()])
    first, at_reference = model.explain(frame, top_k=3)
    assert [r["feature"] for r in first] == ["plan"]
    assert first[0]["value"] == "free"
    assert at_reference == []


def test_reasons_do_not_depend_on_the_batch(model: ChurnModel) -> None:
    rows = [row(a=1.5, b=-2.0, c=-3.0), row(b=2.0, plan="free"), row(a=0.1, c=-0.1)]
    batch = model.explain(pd.DataFrame(rows))
    alone = [model.explain(pd.DataFrame([r]))[0] for r in rows]
    assert batch == alone


def test_missing_value_is_reported_as_none() -> None:
    class NanIsRisky(KnownLogit):
        def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
            p = np.where(frame["a"].isna(), 0.9, 0.1)
            return np.column_stack([1 - p, p])

    model = ChurnModel(NanIsRisky(), FEATURES, RiskThresholds(0.6, 0.3), REFERENCE)
    reasons = model.explain(pd.DataFrame([row(a=np.nan)]))[0]
    assert reasons == [{"feature": "a", "value": None, "direction": "up", "contribution": pytest.approx(0.8)}]


@pytest.mark.parametrize(
    ("p", "band"), [(0.95, "high"), (0.6, "high"), (0.5999, "medium"), (0.3, "medium"), (0.2999, "low"), (0.0, "low")]
)
def test_risk_band_boundaries(model: ChurnModel, p: float, band: str) -> None:
    assert model.risk_band(p) == band


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="medium <= high"):
        RiskThresholds(high=0.2, medium=0.5)


def test_predict_returns_probability_and_band(model: ChurnModel) -> None:
    frame = pd.DataFrame([row(a=3.0), row(a=-3.0), row(a=-0.5)], index=[10, 11, 12])
    out = model.predict(None, frame)
    assert list(out.columns) == ["churn_probability", "risk_band"]
    assert list(out.index) == [10, 11, 12]
    assert out["churn_probability"].tolist() == pytest.approx([sigmoid(3.0), sigmoid(-3.0), sigmoid(-0.5)])
    assert out["risk_band"].tolist() == ["high", "low", "medium"]


def test_input_columns_are_selected_by_name(model: ChurnModel) -> None:
    frame = pd.DataFrame([row(a=1.0, b=2.0)])
    shuffled = frame[list(reversed(FEATURES))].assign(unrelated=7)
    assert model.predict_proba(shuffled) == pytest.approx(model.predict_proba(frame))


def test_missing_feature_is_a_schema_error(model: ChurnModel) -> None:
    with pytest.raises(SchemaError, match=r"\['c'\]"):
        model.predict_proba(pd.DataFrame([row()]).drop(columns=["c"]))


def test_every_feature_needs_a_reference_value() -> None:
    with pytest.raises(ValueError, match="no reference value"):
        ChurnModel(KnownLogit(), FEATURES, RiskThresholds(0.6, 0.3), {"a": 0.0})
