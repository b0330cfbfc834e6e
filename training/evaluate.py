"""Test-set metrics (overall, per observation time, per plan), their bootstrap intervals, the oracle comparison,
and the plots."""

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, precision_recall_curve, roc_auc_score, roc_curve

from churn_common.names import TIMESTAMP_FIELD

logger = logging.getLogger(__name__)

TOP_FRACTION = 0.10
BOOTSTRAP_RESAMPLES = 1_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
# Resamples scored per numpy pass: bounds the (resamples x rows) weight matrices to ~16 MB each.
_BOOTSTRAP_CELLS = 2_000_000


def top_fraction_mask(scores: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """The ``ceil(n * fraction)`` highest scores; ties resolved by row order so the mask is deterministic."""
    n_top = math.ceil(len(scores) * fraction)
    order = np.argsort(-scores, kind="stable")
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:n_top]] = True
    return mask


def classification_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Ranking and calibration metrics; the AUCs are absent when ``labels`` has a single class."""
    labels = np.asarray(labels, dtype=int)
    top = top_fraction_mask(scores)
    base_rate = labels.mean()
    metrics = {
        "rows": float(len(labels)),
        "positives": float(labels.sum()),
        "base_rate": float(base_rate),
        "brier": float(brier_score_loss(labels, scores)),
        "lift_top_decile": float(labels[top].mean() / base_rate) if base_rate > 0 else math.nan,
        "recall_top_decile": float(labels[top].sum() / labels.sum()) if base_rate > 0 else math.nan,
    }
    if len(np.unique(labels)) == 2:
        metrics["roc_auc"] = float(roc_auc_score(labels, scores))
        metrics["pr_auc"] = float(average_precision_score(labels, scores))
    return metrics


def evaluate(test: pd.DataFrame, scores: np.ndarray, oracle_scores: np.ndarray | None) -> dict[str, float]:
    """Overall test metrics, plus the oracle's ROC-AUC (the generator's true propensity used as the score on
    the same rows) and the model/oracle ratio when the oracle is known."""
    labels = test["label"].to_numpy()
    metrics = classification_metrics(labels, scores)
    if oracle_scores is not None and "roc_auc" in metrics:
        metrics["oracle_roc_auc"] = float(roc_auc_score(labels, oracle_scores))
        metrics["roc_auc_oracle_ratio"] = metrics["roc_auc"] / metrics["oracle_roc_auc"]
    return metrics


def bootstrap_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, float]:
    """Percentile intervals (``CONFIDENCE``) of ROC-AUC and PR-AUC: ``roc_auc_ci_low`` .. ``pr_auc_ci_high``.

    Resamples ``groups`` (users), not rows: a user's rows at the test times share the user, so rows are not
    independent draws and a row bootstrap would make the interval too narrow. Each resample weights a user's rows
    by how often it drew the user; resamples with a single class are left out (NaN bounds if all are). Seeded: same
    inputs, same bounds."""
    labels = np.asarray(labels, dtype=np.float64)
    roc, pr = [], []
    for weights in _user_resamples(groups, n_resamples, seed):
        true_positives, false_positives = _weighted_counts(labels, scores, weights)
        roc.append(_roc_auc(true_positives, false_positives))
        pr.append(_average_precision(true_positives, false_positives))
    intervals = {}
    for name, values in (("roc_auc", roc), ("pr_auc", pr)):
        intervals[f"{name}_ci_low"], intervals[f"{name}_ci_high"] = _percentile_interval(values)
    return intervals


def _user_resamples(groups: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Row weights of ``n_resamples`` bootstrap draws of the users in ``groups`` (how often each row's user was
    drawn), in chunks of (resamples, rows) bounded by ``_BOOTSTRAP_CELLS``. Seeded: same groups, same draws."""
    users, row_user = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // max(len(row_user), 1))
    for start in range(0, n_resamples, chunk):
        draws = rng.multinomial(len(users), np.full(len(users), 1 / len(users)), size=min(chunk, n_resamples - start))
        yield draws[:, row_user].astype(np.float64)


def _percentile_interval(chunks: list[np.ndarray]) -> tuple[float, float]:
    """The ``CONFIDENCE`` percentile interval of the finite values (NaN bounds when there are none)."""
    values = np.concatenate(chunks)
    values = values[np.isfinite(values)]
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan)
    return float(low), float(high)


def paired_roc_auc_difference(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    groups: np.ndarray,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, float]:
    """ROC-AUC of ``scores_a`` minus that of ``scores_b`` on the same rows, with its percentile interval over the
    same user resamples for both (paired: what the two models share, the rows' difficulty, cancels out, so the
    interval is far narrower than either model's own). Keys ``difference``, ``ci_low``, ``ci_high``."""
    labels = np.asarray(labels, dtype=np.float64)
    difference = float(roc_auc_score(labels, scores_a) - roc_auc_score(labels, scores_b))
    differences = [
        _roc_auc(*_weighted_counts(labels, scores_a, weights)) - _roc_auc(*_weighted_counts(labels, scores_b, weights))
        for weights in _user_resamples(groups, n_resamples, seed)
    ]
    low, high = _percentile_interval(differences)
    return {"difference": difference, "ci_low": low, "ci_high": high}


def _weighted_counts(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted true and false positives above each distinct score, highest score first: (resamples, scores)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    ordered = np.asarray(scores)[order]
    # Tied scores share one threshold: the counts are read at the last row of each run of equal scores.
    last_of_tie = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
    weights, positive = weights[:, order], labels[order]
    true_positives = np.cumsum(weights * positive, axis=1)[:, last_of_tie]
    false_positives = np.cumsum(weights * (1 - positive), axis=1)[:, last_of_tie]
    return true_positives, false_positives


def _roc_auc(true_positives: np.ndarray, false_positives: np.ndarray) -> np.ndarray:
    """Trapezoidal area under the ROC curve through the thresholds, as sklearn's roc_auc_score; NaN for one class."""
    tp = np.pad(true_positives, ((0, 0), (1, 0)))
    fp = np.pad(false_positives, ((0, 0), (1, 0)))
    area = np.sum(np.diff(fp, axis=1) * (tp[:, 1:] + tp[:, :-1]) / 2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return area / (tp[:, -1] * fp[:, -1])


def _average_precision(true_positives: np.ndarray, false_positives: np.ndarray) -> np.ndarray:
    """Sum of precision times recall gained at each threshold, as sklearn's average_precision_score."""
    predicted = true_positives + false_positives
    precision = np.divide(true_positives, predicted, out=np.zeros_like(predicted), where=predicted > 0)
    gained = np.diff(np.pad(true_positives, ((0, 0), (1, 0))), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(gained * precision, axis=1) / true_positives[:, -1]


def slice_metrics(test: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """One row per test observation time and per plan: ``slice``, ``value`` and the metrics."""
    rows = []
    by_slice = {"time": test[TIMESTAMP_FIELD].dt.strftime("%Y-%m-%d")}
    if "plan" in test.columns:
        by_slice["plan"] = test["plan"].astype(str)
    labels = test["label"].to_numpy()
    for slice_name, keys in by_slice.items():
        for value in sorted(keys.unique()):
            mask = (keys == value).to_numpy()
            rows.append({"slice": slice_name, "value": value, **classification_metrics(labels[mask], scores[mask])})
    return pd.DataFrame(rows)


def save_plots(labels: np.ndarray, scores: np.ndarray, out_dir: Path) -> list[Path]:
    """ROC, precision-recall, calibration and lift charts as PNG files in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in (("roc", _roc), ("pr", _pr), ("calibration", _calibration), ("lift", _lift)):
        # A bare Figure with the Agg canvas: no pyplot global state, no display needed.
        figure = Figure(figsize=(5, 4), layout="constrained")
        FigureCanvasAgg(figure)
        draw(figure.add_subplot(), np.asarray(labels, dtype=int), scores)
        path = out_dir / f"{name}.png"
        figure.savefig(path, dpi=80)
        paths.append(path)
    return paths


def _roc(ax, labels: np.ndarray, scores: np.ndarray) -> None:
    fpr, tpr, _ = roc_curve(labels, scores)
    ax.plot(fpr, tpr, label=f"model (AUC {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test)")
    ax.legend(loc="lower right")


def _pr(ax, labels: np.ndarray, scores: np.ndarray) -> None:
    precision, recall, _ = precision_recall_curve(labels, scores)
    ax.plot(recall, precision, label=f"model (AP {average_precision_score(labels, scores):.3f})")
    ax.axhline(labels.mean(), linestyle="--", color="grey", label="base rate")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)")
    ax.legend(loc="upper right")


def _calibration(ax, labels: np.ndarray, scores: np.ndarray) -> None:
    observed, predicted = calibration_curve(labels, scores, n_bins=10, strategy="quantile")
    ax.plot(predicted, observed, marker="o", label="model")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    ax.set(xlabel="predicted churn probability", ylabel="observed churn rate", title="Calibration (test)")
    ax.legend(loc="upper left")


def _lift(ax, labels: np.ndarray, scores: np.ndarray) -> None:
    """Cumulative lift: churn rate among the top-k% scores over the overall churn rate."""
    order = np.argsort(-scores, kind="stable")
    share = np.arange(1, len(labels) + 1) / len(labels)
    lift = np.cumsum(labels[order]) / np.arange(1, len(labels) + 1) / labels.mean()
    ax.plot(share, lift, label="model")
    ax.axhline(1.0, linestyle="--", color="grey", label="random")
    ax.axvline(TOP_FRACTION, linestyle=":", color="black", label="top decile")
    ax.set(xlabel="share of users contacted", ylabel="cumulative lift", title="Lift (test)")
    ax.legend(loc="upper right")
