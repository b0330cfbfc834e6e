"""The candidate models: sklearn Pipelines holding all preprocessing, a small search over the purged time folds
(training.split), and sigmoid calibration cross-fitted on the same folds.

Selection rule: the family and its hyper-parameters together, by mean ROC-AUC over the held-out blocks of the
purged folds. ROC-AUC because the product is a ranked outreach list (top decile), and it is comparable across time
slices whose churn rate differs, where PR-AUC moves with the base rate. PR-AUC is reported on the test window.
"""

import logging
from collections.abc import Sequence
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
from training.split import Fold

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
class CrossValidation:
    """One candidate configuration scored over the purged folds."""

    family: str
    params: dict[str, Any]
    fold_roc_auc: tuple[float, ...]
    out_of_fold: np.ndarray
    """Decision value of every training row from the fold that held it out; NaN where no fold did."""
    fitted_on: np.ndarray
    """Per training row, how many rows the fold model that scored it was fitted on (0: none scored it)."""

    @property
    def roc_auc(self) -> float:
        return float(np.mean(self.fold_roc_auc))


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


def search(train: pd.DataFrame, feature_names: list[str], folds: Sequence[Fold]) -> list[CrossValidation]:
    """Every candidate of every family over the folds that have both classes on both sides, best mean ROC-AUC
    first (ties keep the candidates' order)."""
    scorable = _scorable_folds(train[LABEL].to_numpy(), folds)
    results = [
        cross_validate(family, params, train, feature_names, scorable)
        for family, candidates in CANDIDATES.items()
        for params in candidates
    ]
    return sorted(results, key=lambda result: -result.roc_auc)


def cross_validate(
    family: str, params: dict[str, Any], train: pd.DataFrame, feature_names: list[str], folds: Sequence[Fold]
) -> CrossValidation:
    """The candidate fitted per fold: each held-out block's ROC-AUC, and its rows' decision values."""
    labels = train[LABEL].to_numpy()
    out_of_fold, fitted_on = np.full(len(train), np.nan), np.zeros(len(train), dtype=np.int64)
    scores = []
    for fold in folds:
        # The fold's own rows decide its inputs: a feature may have values in `train` and none in an early fold.
        fitted = train.iloc[fold.train]
        pipeline = fit(build_pipeline(family, *feature_kinds(fitted, feature_names), params), fitted, feature_names)
        out_of_fold[fold.held_out] = pipeline.decision_function(train.iloc[fold.held_out][feature_names])
        fitted_on[fold.held_out] = len(fold.train)
        scores.append(float(roc_auc_score(labels[fold.held_out], out_of_fold[fold.held_out])))
    result = CrossValidation(family, params, tuple(scores), out_of_fold, fitted_on)
    logger.info("%s %s: purged CV ROC-AUC %.4f over %d folds", family, params, result.roc_auc, len(folds))
    return result


def fit(pipeline: Pipeline, frame: pd.DataFrame, feature_names: list[str]) -> Pipeline:
    with threadpool_limits(limits=None if len(frame) >= PARALLEL_MIN_ROWS else 1):
        return pipeline.fit(frame[feature_names], frame[LABEL].to_numpy())


def calibrate(pipeline: Pipeline, validation: pd.DataFrame, feature_names: list[str]) -> CalibratedClassifierCV:
    """Sigmoid calibration of the already fitted pipeline on held-out rows. Sigmoid rather than isotonic: it keeps
    the ranking (no ties), and a few thousand rows would overfit isotonic."""
    calibrated = CalibratedClassifierCV(FrozenEstimator(pipeline), method="sigmoid")
    return calibrated.fit(validation[feature_names], validation[LABEL].to_numpy())


def calibrate_out_of_fold(
    pipeline: Pipeline, train: pd.DataFrame, feature_names: list[str], cross_validation: CrossValidation
) -> CalibratedClassifierCV:
    """``pipeline``, fitted on all of ``train``, wrapped with a sigmoid cross-fitted on the out-of-fold decision
    values of the same candidate, its departure from the identity scaled down to the final model's size.

    Why cross-fitted: holding rows out for calibration starves the fit of the most recent times, an ensemble of fold
    models is not the model fitted on everything, and the final model's scores of its own training rows say nothing
    about its calibration. So the sigmoid learns from fold models scoring rows they never saw (scikit-learn's
    ensemble=False recipe; its cross_val_predict refuses purged folds, which leave rows unpredicted).

    Why scaled: purging and the embargo leave each fold model a fifth to a half of the training rows, and a fitted
    model's overconfidence (its optimism) falls roughly as 1/n. Their sigmoid, applied as is, over-shrank the final
    model: it made the test Brier score of both families worse than no calibration on short histories. Its slope
    and offset are therefore moved towards the identity by n_fold / n_final (n_fold: the harmonic mean size of the
    fold models behind the out-of-fold rows); with long histories the folds near the final size and the sigmoid is
    the plain out-of-fold one. Sigmoid rather than isotonic: it keeps the ranking (no ties).

    The calibrator is refitted in place, keeping the single frozen pipeline churn_common.compiled reads."""
    held = cross_validation.fitted_on > 0
    calibrated = calibrate(pipeline, train.iloc[np.flatnonzero(held)], feature_names)
    sigmoid = calibrated.calibrated_classifiers_[0].calibrators[0]
    sigmoid.fit(cross_validation.out_of_fold[held], train[LABEL].to_numpy()[held])
    scale = min(1.0, 1 / np.mean(1 / cross_validation.fitted_on[held]) / len(train))
    # sklearn's sigmoid is 1 / (1 + exp(a * d + b)); (a, b) = (-1, 0) returns the model's own probability.
    sigmoid.a_, sigmoid.b_ = -1 + scale * (1 + sigmoid.a_), scale * sigmoid.b_
    logger.info("calibration: out-of-fold sigmoid scaled by %.2f to a=%.4f, b=%.4f", scale, sigmoid.a_, sigmoid.b_)
    return calibrated


def _scorable_folds(labels: np.ndarray, folds: Sequence[Fold]) -> list[Fold]:
    scorable = [
        fold for fold in folds if len(np.unique(labels[fold.train])) == 2 and len(np.unique(labels[fold.held_out])) == 2
    ]
    if not scorable:
        raise TrainingError("no purged CV fold has both churners and non-churners on both sides")
    return scorable
