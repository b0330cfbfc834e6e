"""The logged churn model: a pyfunc wrapper carrying everything prediction needs — the calibrated sklearn
pipeline, the ordered feature names, the risk-band thresholds and the reference values behind the reason
codes. Serving loads it from MLflow and imports only this module, never ``training/``.

Reason codes are occlusion-based: for each feature, the row's value is replaced by the training reference
(median for numbers, mode for strings) and the drop in churn probability is that feature's contribution.
It needs no model internals, so it works for any estimator with ``predict_proba`` and is deterministic.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from churn_common.errors import SchemaError

# Contributions below this are float noise from scoring a differently shaped batch, not a reason.
_MIN_CONTRIBUTION = 1e-9


@dataclass(frozen=True)
class RiskThresholds:
    """Probability cut-offs: ``p >= high`` is high risk, ``medium <= p < high`` medium, else low."""

    high: float
    medium: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.medium <= self.high <= 1.0:
            raise ValueError(f"need 0 <= medium <= high <= 1, got medium={self.medium}, high={self.high}")

    def as_dict(self) -> dict[str, float]:
        return {"high": self.high, "medium": self.medium}


class ChurnModel(mlflow.pyfunc.PythonModel):
    """A fitted churn classifier plus what serving needs to band and explain its scores."""

    def __init__(
        self,
        estimator: Any,
        feature_names: list[str],
        risk_thresholds: RiskThresholds,
        reference_values: dict[str, float | str],
    ) -> None:
        missing = [name for name in feature_names if name not in reference_values]
        if missing:
            raise ValueError(f"no reference value for features {missing}")
        self.estimator = estimator
        self.feature_names = list(feature_names)
        self.risk_thresholds = risk_thresholds
        self.reference_values = dict(reference_values)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        probabilities = self.predict_proba(model_input)
        return pd.DataFrame(
            {
                "churn_probability": probabilities,
                "risk_band": [self.risk_band(p) for p in probabilities],
            },
            index=model_input.index,
        )

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Churn probability per row (1-d). Extra columns are ignored; a missing feature is an error."""
        return self.estimator.predict_proba(self._features(frame))[:, 1]

    def risk_band(self, p: float) -> str:
        if p >= self.risk_thresholds.high:
            return "high"
        if p >= self.risk_thresholds.medium:
            return "medium"
        return "low"

    def explain(self, frame: pd.DataFrame, top_k: int = 3) -> list[list[dict]]:
        """Per row, up to ``top_k`` features pushing the probability up, largest contribution first."""
        return self.score_and_explain(frame, top_k)[1]

    def score_and_explain(
        self, rows: pd.DataFrame | Mapping[str, np.ndarray], top_k: int = 3
    ) -> tuple[np.ndarray, list[list[dict]]]:
        """``predict_proba`` and ``explain`` of the same rows from one model call.

        ``rows`` is a frame, or its columns as equal-length numpy arrays (no pandas on the way in). Each row is
        followed by its counterfactuals in one stacked batch, so a row costs one batch of ``features + 1`` rows
        instead of two model calls."""
        columns = self._columns(rows)
        n_rows = len(next(iter(columns.values())))
        width = len(self.feature_names) + 1
        stacked = pd.DataFrame(
            {name: self._occluded(columns[name], j, width) for j, name in enumerate(self.feature_names)}, copy=False
        )
        scores = self.estimator.predict_proba(stacked)[:, 1].reshape(n_rows, width)
        base = scores[:, 0]
        contributions = base[:, None] - scores[:, 1:]
        return base, self.top_reasons([_row_reader(columns, i) for i in range(n_rows)], contributions, top_k)

    def _columns(self, rows: pd.DataFrame | Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        if isinstance(rows, pd.DataFrame):
            features = self._features(rows)
            return {name: features[name].to_numpy() for name in self.feature_names}
        missing = [name for name in self.feature_names if name not in rows]
        if missing:
            raise SchemaError(f"model input misses features {missing}")
        return rows

    def _occluded(self, values: np.ndarray, j: int, width: int) -> np.ndarray:
        """Each value repeated ``width`` times, copy ``1 + j`` replaced by feature j's reference value."""
        if values.dtype.kind in "iub":
            # An integer count's median can be fractional; assigning it must not truncate.
            values = values.astype(np.float64)
        column = np.repeat(values, width)
        column[1 + j :: width] = self.reference_values[self.feature_names[j]]
        return column

    def _features(self, frame: pd.DataFrame) -> pd.DataFrame:
        missing = [name for name in self.feature_names if name not in frame.columns]
        if missing:
            raise SchemaError(f"model input misses features {missing}")
        return frame[self.feature_names]

    def top_reasons(
        self, value_readers: Sequence[Callable[[str], Any]], contributions: np.ndarray, top_k: int
    ) -> list[list[dict]]:
        """Per row (``contributions`` is rows x features), up to ``top_k`` features pushing the probability up,
        largest first. Ranked for all rows in one sort; ties are broken by feature name so equal contributions
        always come back in the same order."""
        ranks = np.broadcast_to(self._name_ranks, contributions.shape)
        ranked = np.lexsort((ranks, -contributions), axis=-1)[:, :top_k]
        top = np.take_along_axis(contributions, ranked, axis=-1).tolist()
        names = self.feature_names
        return [
            [
                {
                    "feature": names[j],
                    "value": _json_value(value_of(names[j])),
                    "direction": "up",
                    "contribution": round(contribution, 6),
                }
                for j, contribution in zip(row_ranked, row_top, strict=True)
                if contribution > _MIN_CONTRIBUTION
            ]
            for value_of, row_ranked, row_top in zip(value_readers, ranked.tolist(), top, strict=True)
        ]

    @cached_property
    def _name_ranks(self) -> np.ndarray:
        """Each feature's position in name order (computed on first use: pickled models predate it)."""
        ranks = np.empty(len(self.feature_names), dtype=np.intp)
        ranks[np.argsort(np.array(self.feature_names))] = np.arange(len(self.feature_names))
        return ranks


def _row_reader(columns: Mapping[str, np.ndarray], i: int) -> Callable[[str], Any]:
    return lambda name: columns[name][i]


def _json_value(value: Any) -> float | str | None:
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value
