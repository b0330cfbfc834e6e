"""Metric definitions checked against values worked out by hand or sklearn, and the bootstrap intervals."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tests.factories import utc
from training.evaluate import (
    _average_precision,
    _roc_auc,
    _weighted_counts,
    bootstrap_intervals,
    classification_metrics,
    evaluate,
    save_plots,
    slice_metrics,
    top_fraction_mask,
)

# 20 rows, scores strictly decreasing. The top decile is the first 2 rows: one churner among them.
LABELS = np.array([1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
SCORES = np.linspace(0.95, 0.0, 20)


def test_lift_and_recall_at_top_decile() -> None:
    metrics = classification_metrics(LABELS, SCORES)
    base_rate = 5 / 20
    assert metrics["base_rate"] == pytest.approx(base_rate)
    assert metrics["lift_top_decile"] == pytest.approx((1 / 2) / base_rate)
    assert metrics["recall_top_decile"] == pytest.approx(1 / 5)


def test_brier_and_auc() -> None:
    metrics = classification_metrics(LABELS, SCORES)
    assert metrics["brier"] == pytest.approx(sum((s - y) ** 2 for s, y in zip(SCORES, LABELS, strict=True)) / 20)
    # ROC-AUC = share of (churner, non-churner) pairs ranked correctly, counted directly.
    pairs = [(p, n) for p in np.flatnonzero(LABELS) for n in np.flatnonzero(LABELS == 0)]
    assert metrics["roc_auc"] == pytest.approx(sum(SCORES[p] > SCORES[n] for p, n in pairs) / len(pairs))


def test_single_class_slice_has_no_auc() -> None:
    metrics = classification_metrics(np.zeros(5, dtype=int), np.linspace(0, 1, 5))
    assert "roc_auc" not in metrics and "pr_auc" not in metrics
    assert metrics["rows"] == 5


def test_top_fraction_rounds_up_and_breaks_ties_by_row_order() -> None:
    mask = top_fraction_mask(np.array([0.5, 0.9, 0.9, 0.1, 0.9, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8]))
    # ceil(11 * 0.1) = 2 rows; three tie at 0.9, the first two in row order win.
    assert np.flatnonzero(mask).tolist() == [1, 2]


def test_oracle_ratio_uses_the_same_rows() -> None:
    test = pd.DataFrame({"label": LABELS})
    perfect_oracle = LABELS.astype(float)
    metrics = evaluate(test, SCORES, perfect_oracle)
    assert metrics["oracle_roc_auc"] == pytest.approx(1.0)
    assert metrics["roc_auc_oracle_ratio"] == pytest.approx(metrics["roc_auc"])
    assert "oracle_roc_auc" not in evaluate(test, SCORES, None)


def test_slices_per_time_and_plan() -> None:
    test = pd.DataFrame(
        {
            "event_timestamp": [utc(2026, 5, 4)] * 10 + [utc(2026, 5, 11)] * 10,
            "plan": ["free", "annual"] * 10,
            "label": LABELS,
        }
    )
    slices = slice_metrics(test, SCORES).set_index(["slice", "value"])
    assert slices.loc[("time", "2026-05-04"), "rows"] == 10
    assert slices.loc[("plan", "free"), "base_rate"] == pytest.approx(LABELS[::2].mean())
    first_week = classification_metrics(LABELS[:10], SCORES[:10])
    assert slices.loc[("time", "2026-05-04"), "roc_auc"] == pytest.approx(first_week["roc_auc"])
    assert sorted(slices.index) == [
        ("plan", "annual"),
        ("plan", "free"),
        ("time", "2026-05-04"),
        ("time", "2026-05-11"),
    ]


def test_plots_are_png_files(tmp_path) -> None:
    paths = save_plots(LABELS, SCORES, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["calibration.png", "lift.png", "pr.png", "roc.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weighted_curves_match_sklearn_with_ties_and_zero_weights() -> None:
    # The bootstrap scores each resample as the full sample with per-row weights; sklearn's sample_weight is the
    # reference. Rounded scores make many ties; Poisson weights include zeros.
    rng = np.random.default_rng(3)
    labels = (rng.random(400) < 0.3).astype(float)
    scores = np.round(rng.random(400) + 0.4 * labels, 1)
    weights = rng.poisson(1.0, size=(6, 400)).astype(float)
    true_positives, false_positives = _weighted_counts(labels, scores, weights)
    expected_roc = [roc_auc_score(labels, scores, sample_weight=w) for w in weights]
    expected_pr = [average_precision_score(labels, scores, sample_weight=w) for w in weights]
    assert _roc_auc(true_positives, false_positives) == pytest.approx(expected_roc)
    assert _average_precision(true_positives, false_positives) == pytest.approx(expected_pr)


def test_bootstrap_resamples_users_so_a_users_repeated_rows_add_no_certainty() -> None:
    rng = np.random.default_rng(4)
    labels = (rng.random(300) < 0.25).astype(int)
    scores = rng.random(300) + 0.5 * labels
    users = np.arange(300)
    once = bootstrap_intervals(labels, scores, users)
    # Each user observed three times with the same outcome and score: nothing new is known.
    thrice = bootstrap_intervals(np.repeat(labels, 3), np.repeat(scores, 3), np.repeat(users, 3))
    assert thrice == pytest.approx(once)
    # Treating the copies as independent rows would narrow the interval: what resampling users avoids.
    as_rows = bootstrap_intervals(np.repeat(labels, 3), np.repeat(scores, 3), np.arange(900))
    assert as_rows["roc_auc_ci_high"] - as_rows["roc_auc_ci_low"] < 0.75 * (
        once["roc_auc_ci_high"] - once["roc_auc_ci_low"]
    )


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    metrics = classification_metrics(LABELS, SCORES)
    groups = np.arange(len(LABELS))
    first = bootstrap_intervals(LABELS, SCORES, groups)
    assert bootstrap_intervals(LABELS, SCORES, groups) == first
    assert bootstrap_intervals(LABELS, SCORES, groups, seed=1) != first
    for name in ("roc_auc", "pr_auc"):
        assert first[f"{name}_ci_low"] < metrics[name] < first[f"{name}_ci_high"]
    # Five churners among twenty rows: the interval is wide.
    assert first["roc_auc_ci_high"] - first["roc_auc_ci_low"] > 0.3


def test_bootstrap_of_a_single_class_has_no_interval() -> None:
    intervals = bootstrap_intervals(np.zeros(10, dtype=int), np.linspace(0, 1, 10), np.arange(10), n_resamples=20)
    assert set(intervals) == {"roc_auc_ci_low", "roc_auc_ci_high", "pr_auc_ci_low", "pr_auc_ci_high"}
    assert all(np.isnan(value) for value in intervals.values())
