"""The candidate models: sklearn Pipelines holding all preprocessing, a small hyper-parameter search over
gapped time folds, and sigmoid calibration on the validation slice.

Selection rule: hyper-parameters within a family by mean ROC-AUC over the time folds; the family by ROC-AUC on
the validation slice. ROC-AUC because the product is a ranked outreach list (top decile), and it is comparable
across time slices whose churn rate differs, where PR-AUC moves with the base rate. PR-AUC is logged as well.
"""

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from churn_common.errors import TrainingError
from churn_common.names import TIMESTAMP_FIELD
from training.split import gapped_folds

logger = logging.getLogger(__name__)

LABEL = "label"
# Below this many rows, OpenMP/BLAS threads cost more than they save; on a busy machine their spin-waiting
# made fitting a 5k-row frame ten times slower than a single thread.
PARALLEL_MIN_ROWS = 200_000
LOGISTIC = "logistic_regression"
BOOSTING = "hist_gradient_boosting"

CANDIDATES: dict[str, list[dict[str, Any]]] = {
    LOGISTIC: [{"C": 0.1}, {"C": 1.0}],
    BOOSTING: [
        {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 15},
        {"learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 31, "l2_regularization": 1.0},
    ],
}


@dataclass(frozen=True)
class SearchResult:
    family: str
    params: dict[str, Any]
    cv_roc_auc: float


def feature_kinds(frame: pd.DataFrame, feature_names: list[str]) -> tuple[list[str], list[str]]:
    """``(numeric, categorical)``: the features with a value in ``frame`` (the rows a pipeline is fitted on), by
    column dtype. A feature without any teaches nothing there and would break the preprocessing (the imputer drops
    such a column, gradient boosting cannot bin it): the pipeline leaves it out."""
    present = [name for name in feature_names if frame[name].notna().any()]
    if len(present) < len(feature_names):
        empty = [name for name in feature_names if name not in present]
        logger.info("features %s have no value in the %d rows fitted: left out of this pipeline", empty, len(frame))
    numeric = [name for name in present if is_numeric_dtype(frame[name])]
    categorical = [name for name in present if name not in numeric]
    return numeric, categorical


def build_pipeline(family: str, numeric: list[str], categorical: list[str], params: dict[str, Any]) -> Pipeline:
    one_hot = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    if family == LOGISTIC:
        numeric_steps = Pipeline(
            [("impute", SimpleImputer(strategy="median", add_indicator=True)), ("scale", StandardScaler())]
        )
        classifier = LogisticRegression(max_iter=2_000, **params)
    elif family == BOOSTING:
        # Gradient boosting routes missing values itself; imputing would hide "no events" from it.
        numeric_steps = "passthrough"
        classifier = HistGradientBoostingClassifier(early_stopping=False, random_state=0, **params)
    else:
        raise ValueError(f"unknown model family {family!r}")
    preprocess = ColumnTransformer(
        [("numeric", numeric_steps, numeric), ("categorical", one_hot, categorical)],
        verbose_feature_names_out=False,
    )
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def search(
    train: pd.DataFrame, feature_names: list[str], family: str, horizon_days: int, n_splits: int = 3
) -> SearchResult:
    """The family's best hyper-parameters by mean ROC-AUC over gapped time folds of ``train``."""
    folds = _scorable_folds(train, horizon_days, n_splits)
    scored = []
    for params in CANDIDATES[family]:
        scores = [_fold_roc_auc(family, params, train, feature_names, fold) for fold in folds]
        scored.append((float(np.mean(scores)), params))
        logger.info("%s %s: time-CV ROC-AUC %.4f over %d folds", family, params, scored[-1][0], len(folds))
    best_score, best_params = max(scored, key=lambda sp: sp[0])
    return SearchResult(family=family, params=best_params, cv_roc_auc=best_score)


def fit(pipeline: Pipeline, frame: pd.DataFrame, feature_names: list[str]) -> Pipeline:
    with threadpool_limits(limits=None if len(frame) >= PARALLEL_MIN_ROWS else 1):
        return pipeline.fit(frame[feature_names], frame[LABEL].to_numpy())


def calibrate(pipeline: Pipeline, validation: pd.DataFrame, feature_names: list[str]) -> CalibratedClassifierCV:
    """Sigmoid calibration of the already fitted pipeline on the validation slice. Sigmoid rather than
    isotonic: it keeps the ranking (no ties), and a few thousand validation rows would overfit isotonic."""
    calibrated = CalibratedClassifierCV(FrozenEstimator(pipeline), method="sigmoid")
    return calibrated.fit(validation[feature_names], validation[LABEL].to_numpy())


def _scorable_folds(train: pd.DataFrame, horizon_days: int, n_splits: int) -> list:
    labels = train[LABEL].to_numpy()
    folds = [
        (fit_idx, held_idx)
        for fit_idx, held_idx in gapped_folds(train[TIMESTAMP_FIELD], horizon_days, n_splits)
        if len(np.unique(labels[fit_idx])) == 2 and len(np.unique(labels[held_idx])) == 2
    ]
    if not folds:
        raise TrainingError("no time-based CV fold has both classes on both sides")
    return folds


def _fold_roc_auc(
    family: str,
    params: dict[str, Any],
    train: pd.DataFrame,
    feature_names: list[str],
    fold: tuple[np.ndarray, np.ndarray],
) -> float:
    fit_idx, held_idx = fold
    # The fold's own rows decide its inputs: a feature may have values in `train` and none in an early fold.
    fitted = train.iloc[fit_idx]
    pipeline = fit(build_pipeline(family, *feature_kinds(fitted, feature_names), params), fitted, feature_names)
    held = train.iloc[held_idx]
    return float(roc_auc_score(held[LABEL], pipeline.predict_proba(held[feature_names])[:, 1]))
