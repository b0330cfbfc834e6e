"""Metric definitions checked against values worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from tests.factories import utc
from training.evaluate import classification_metrics, evaluate, save_plots, slice_metrics, top_fraction_mask

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
