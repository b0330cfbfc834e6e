"""Fit, calibrate, threshold and evaluate a churn model on a point-in-time training frame.

Pure computation: nothing here talks to MLflow, so a training set that cannot produce a model fails with
``TrainingError`` before any run or model version exists.
"""

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype
from sklearn.metrics import brier_score_loss

from churn_common.errors import TrainingError
from churn_common.model import ChurnModel, RiskThresholds
from churn_common.names import ACCOUNT_STATUS, JOIN_KEY, TIMESTAMP_FIELD
from training import models
from training.evaluate import bootstrap_intervals, evaluate, slice_metrics
from training.labels import Population
from training.models import LABEL
from training.split import TimeSplit, time_split

logger = logging.getLogger(__name__)

KEY_COLUMNS = (JOIN_KEY, TIMESTAMP_FIELD, LABEL)
HIGH_RISK_SHARE, MEDIUM_RISK_SHARE = 0.10, 0.20
DRIFT_BINS = 10


@dataclass
class TrainingResult:
    model: ChurnModel
    family: str
    params: dict[str, Any]
    split: TimeSplit
    test_scores: np.ndarray
    metrics: dict[str, float]
    """Test metrics with their bootstrap intervals (``roc_auc_ci_low`` ...), the uncalibrated Brier score, and
    the purged-CV ROC-AUC of the chosen candidate (``cv_roc_auc``) and of each family's best (``<family>.cv_*``)."""
    slices: pd.DataFrame
    fingerprint: dict[str, Any]
    reference_distributions: dict[str, Any] = field(repr=False)
    reference_predictions: dict[str, Any] = field(repr=False)
    """The model's scores on the reference rows, binned like a numeric feature: prediction drift's reference."""
    cross_validation: models.CrossValidation = field(repr=False)
    """The chosen candidate over the purged folds, its out-of-fold decision values included."""
    population: Population | None = None
    """What the population rule made of the candidate rows the frame was cut from, when known."""


def train_churn_model(
    frame: pd.DataFrame,
    horizon_days: int,
    ground_truth: pd.DataFrame | None = None,
    population: Population | None = None,
    reference_from: pd.Timestamp | None = None,
) -> TrainingResult:
    """``frame``: user_id, event_timestamp, label and the model features of the scored rows (see
    training.dataset.get_training_set). ``ground_truth`` (user_id, churn_propensity) only scores the oracle on the
    test rows; it never reaches the model. ``population`` is recorded with the result. The drift references are
    taken from the training rows observed at or after ``reference_from`` (see :func:`reference_rows`)."""
    all_features = _check_frame(frame)
    split = time_split(frame, horizon_days)
    feature_names = _with_values(split.train, all_features)
    for name, part in (("training", split.train), ("test", split.test)):
        require_both_classes(part, f"the {name} slice")
    reference = reference_rows(split.train, reference_from)
    candidates = models.search(split.train, feature_names, split.folds)
    chosen = candidates[0]
    model = _package(split, feature_names, chosen)
    scores = model.predict_proba(split.test)
    metrics = _test_metrics(split.test, scores, model, _oracle_scores(split.test, ground_truth))
    metrics |= _selection_metrics(candidates)
    logger.info(
        "trained %s: test ROC-AUC %.4f (95 %% CI %.4f..%.4f), PR-AUC %.4f",
        chosen.family,
        metrics["roc_auc"],
        metrics["roc_auc_ci_low"],
        metrics["roc_auc_ci_high"],
        metrics["pr_auc"],
    )
    return TrainingResult(
        model=model,
        family=chosen.family,
        params=chosen.params,
        split=split,
        test_scores=scores,
        metrics=metrics,
        slices=slice_metrics(split.test, scores),
        fingerprint=fingerprint(frame),
        reference_distributions=reference_distributions(reference, feature_names),
        reference_predictions=reference_predictions(model, reference),
        cross_validation=chosen,
        population=population,
    )


def _check_frame(frame: pd.DataFrame) -> list[str]:
    missing = [column for column in KEY_COLUMNS if column not in frame.columns]
    if missing:
        raise TrainingError(f"training frame misses columns {missing}")
    if frame.empty:
        raise TrainingError("training frame is empty: no labelled observations")
    require_both_classes(frame, "the training frame")
    feature_names = [column for column in frame.columns if column not in KEY_COLUMNS]
    if not feature_names:
        raise TrainingError("training frame has no feature columns")
    if ACCOUNT_STATUS in feature_names:
        raise TrainingError(f"{ACCOUNT_STATUS} decides who is scored and is never a model input")
    require_feature_vectors(frame, feature_names)
    return feature_names


def _with_values(frame: pd.DataFrame, feature_names: list[str]) -> list[str]:
    """The features with a value in some training row. One without any (e.g. an optional account attribute the
    users table lacks) can teach the model nothing: it is left out of the model's inputs, with a warning."""
    empty = [name for name in feature_names if not frame[name].notna().any()]
    if empty:
        logger.warning(
            "features %s have no value in any of the %d training rows (an optional attribute the users table "
            "lacks, an event type that never occurs?): left out of the model inputs",
            empty,
            len(frame),
        )
    return [name for name in feature_names if name not in empty]


def require_feature_vectors(frame: pd.DataFrame, feature_names: list[str]) -> None:
    """No row may have every feature missing: serving never scores such a vector, so no model learns from one."""
    empty = ~frame[feature_names].notna().any(axis=1)
    if empty.any():
        user_id, at = frame.loc[empty, [JOIN_KEY, TIMESTAMP_FIELD]].iloc[0]
        raise TrainingError(
            f"{int(empty.sum())} training rows have every feature missing, e.g. user {user_id} at {at.isoformat()}"
        )


def require_both_classes(frame: pd.DataFrame, what: str) -> None:
    classes = sorted(frame[LABEL].unique().tolist())
    if classes != [0, 1]:
        raise TrainingError(f"{what} needs both churners and non-churners, has labels {classes}")


def _package(split: TimeSplit, feature_names: list[str], chosen: models.CrossValidation) -> ChurnModel:
    """The chosen candidate fitted on every training row, calibrated on its out-of-fold scores, with risk bands cut
    at the quantiles of its calibrated scores of the training rows. The training rows rather than the out-of-fold
    scores: the bands cut the distribution of the final model's scores, which on new users differs from that on its
    training rows only by its own optimism, while the fold models, fitted on a fraction of the rows, score more
    extremely. The frame holds scored rows only, so these are the population serving scores."""
    numeric, categorical = models.feature_kinds(split.train, feature_names)
    pipeline = models.build_pipeline(chosen.family, numeric, categorical, chosen.params)
    models.fit(pipeline, split.train, feature_names)
    calibrated = models.calibrate_out_of_fold(pipeline, split.train, feature_names, chosen)
    training_scores = calibrated.predict_proba(split.train[feature_names])[:, 1]
    thresholds = RiskThresholds(
        high=float(np.quantile(training_scores, 1 - HIGH_RISK_SHARE)),
        medium=float(np.quantile(training_scores, 1 - HIGH_RISK_SHARE - MEDIUM_RISK_SHARE)),
    )
    return ChurnModel(calibrated, feature_names, thresholds, reference_values(split.train, feature_names))


def _test_metrics(
    test: pd.DataFrame, scores: np.ndarray, model: ChurnModel, oracle_scores: np.ndarray | None
) -> dict[str, float]:
    """The test window's metrics, their bootstrap intervals (resampling users), and the Brier score the frozen
    pipeline would have without its calibrator."""
    labels = test[LABEL].to_numpy()
    uncalibrated = model.estimator.calibrated_classifiers_[0].estimator.predict_proba(test[model.feature_names])
    return (
        evaluate(test, scores, oracle_scores)
        | bootstrap_intervals(labels, scores, test[JOIN_KEY].to_numpy())
        | {"brier_uncalibrated": float(brier_score_loss(labels, uncalibrated[:, 1]))}
    )


def _selection_metrics(candidates: list[models.CrossValidation]) -> dict[str, float]:
    chosen = candidates[0]
    metrics = {"cv_roc_auc": chosen.roc_auc, "cv_folds": float(len(chosen.fold_roc_auc))}
    for result in reversed(candidates):  # best last, so it wins per family
        metrics[f"{result.family}.cv_roc_auc"] = result.roc_auc
        metrics[f"{result.family}.cv_roc_auc_min"] = min(result.fold_roc_auc)
    return metrics


def _oracle_scores(test: pd.DataFrame, ground_truth: pd.DataFrame | None) -> np.ndarray | None:
    if ground_truth is None:
        return None
    propensity = test[[JOIN_KEY]].merge(ground_truth[[JOIN_KEY, "churn_propensity"]], on=JOIN_KEY, how="left")
    if propensity["churn_propensity"].isna().any():
        raise TrainingError("ground truth misses users of the test set; cannot score the oracle")
    return propensity["churn_propensity"].to_numpy()


def reference_values(frame: pd.DataFrame, feature_names: list[str]) -> dict[str, float | str | None]:
    """The typical value of each feature in the training rows: median for numbers, mode for strings.
    Reason codes measure how far a user's value moves the score away from this. A feature without any value in
    ``frame`` gets the marker the model sees for a missing value (churn_common.feature_frame.normalize): NaN for a
    number, None for a string, so replacing a missing value by the reference changes nothing."""
    values: dict[str, float | str | None] = {}
    for name in feature_names:
        present = frame[name].dropna()
        if is_numeric_dtype(frame[name]):
            values[name] = float(present.median()) if len(present) else float("nan")
        else:
            values[name] = str(present.mode().sort_values().iloc[0]) if len(present) else None
    return values


def fingerprint(frame: pd.DataFrame) -> dict[str, Any]:
    """Identifies the training set: same rows and values give the same sha256, whatever their order."""
    ordered = frame.sort_values([JOIN_KEY, TIMESTAMP_FIELD]).reset_index(drop=True)
    ordered = ordered[sorted(ordered.columns)]
    digest = hashlib.sha256(pd.util.hash_pandas_object(ordered, index=False).to_numpy().tobytes())
    digest.update(",".join(ordered.columns).encode())
    return {
        "rows": len(frame),
        "users": int(frame[JOIN_KEY].nunique()),
        "observation_times": int(frame[TIMESTAMP_FIELD].nunique()),
        "time_min": frame[TIMESTAMP_FIELD].min().isoformat(),
        "time_max": frame[TIMESTAMP_FIELD].max().isoformat(),
        "label_rate": float(frame[LABEL].mean()),
        "sha256": digest.hexdigest(),
    }


def reference_rows(train: pd.DataFrame, reference_from: pd.Timestamp | None) -> pd.DataFrame:
    """The training rows the drift references describe: those observed once every window had its full length of
    data behind it. Earlier rows see less history than their longest windows span (a 90-day count at day 30 of the
    data covers 30 days), so they would make every later, complete value look drifted. All training rows when no
    row is that late (a short history)."""
    if reference_from is None:
        return train
    late = train[train[TIMESTAMP_FIELD] >= reference_from]
    if late.empty:
        logger.warning("no training row observed after %s: drift references include partial windows", reference_from)
        return train
    return late


def reference_distributions(frame: pd.DataFrame, feature_names: list[str]) -> dict[str, Any]:
    """Per-feature training distributions for drift checks (PSI). Numeric: decile bin edges whose outer
    edges are -inf/+inf, so serving values outside the training range land in the end bins instead of
    vanishing, plus the share of missing values. Categorical: the share of each training category."""
    distributions: dict[str, Any] = {}
    for name in feature_names:
        column = frame[name]
        if is_numeric_dtype(column):
            distributions[name] = _numeric_distribution(column.astype("float64"))
        else:
            shares = column.astype(str).value_counts(normalize=True).sort_index()
            distributions[name] = {"kind": "categorical", "proportions": shares.round(6).to_dict()}
    return distributions


def reference_predictions(model: ChurnModel, fit: pd.DataFrame) -> dict[str, Any]:
    """The model's scores on its fit rows, binned like a numeric feature's reference: what drift monitoring compares
    the champion's later batch scores with (the same rows as ``reference_distributions``)."""
    return _numeric_distribution(pd.Series(model.predict_proba(fit), dtype="float64"))


def _numeric_distribution(column: pd.Series) -> dict[str, Any]:
    present = column.dropna().to_numpy()
    inner = np.unique(np.quantile(present, np.linspace(0, 1, DRIFT_BINS + 1)[1:-1])) if len(present) else []
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    # np.histogram bins are [a, b): a value equal to an inner edge counts in the bin above it.
    counts = np.histogram(present, bins=edges)[0] if len(present) else np.zeros(len(edges) - 1)
    return {
        "kind": "numeric",
        "bin_edges": [_json_float(edge) for edge in edges],
        "proportions": [round(float(c) / max(len(present), 1), 6) for c in counts],
        "missing_share": round(float(column.isna().mean()), 6),
    }


def _json_float(value: float) -> float | str:
    return {np.inf: "inf", -np.inf: "-inf"}.get(value, float(value))
