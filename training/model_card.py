"""The model card logged with every trained version (``model_card.md`` in its run; `churn model show` prints it):
what the model is for, the data it saw, who it scores, what its label means, how well it did with intervals, per
slice, and where it must not be trusted."""

from typing import Any

import pandas as pd

from churn_common.labels import LabelSpec
from churn_common.settings import Settings
from training.train import TrainingResult

MODEL_CARD_ARTIFACT = "model_card.md"

_LABELS = {
    "inactivity": "no activity event (the catalogue's activity types) in the {h} days after the observation time",
    "closure": "the account closes within the {h} days after the observation time",
}


def _window(frame: pd.DataFrame) -> str:
    times = frame["event_timestamp"]
    return f"{times.min():%Y-%m-%d} .. {times.max():%Y-%m-%d} ({times.nunique()} observation times, {len(frame)} rows)"


def _interval(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.3f} (95 % CI {metrics[f'{name}_ci_low']:.3f} .. {metrics[f'{name}_ci_high']:.3f})"


def _slices(slices: pd.DataFrame) -> list[str]:
    if slices.empty:
        return ["No slice had enough rows of both classes to score."]
    columns = [column for column in slices.columns if column not in ("slice", "value")]
    rows = ["| slice | value | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for record in slices.to_dict(orient="records"):
        cells = [f"{record[c]:.3f}" if isinstance(record[c], float) else str(record[c]) for c in columns]
        rows.append(f"| {record['slice']} | {record['value']} | " + " | ".join(cells) + " |")
    return rows


def _population(result: TrainingResult) -> str:
    population = result.population
    if population is None:
        return "Not recorded (trained outside `churn train`)."
    counts = ", ".join(f"{status.value} {count}" for status, count in population.counts.items())
    return (
        f"Open accounts active in the {population.active_window_days} days before the observation time, the rule "
        f"serving and batch scoring apply (churn_common.population). Candidate rows by status: {counts}; only "
        "`scored` rows are trained on, and a user outside the population is answered with its status, never a score."
    )


def model_card(settings: Settings, result: TrainingResult, feature_service: str) -> str:
    label = LabelSpec.of(settings)
    metrics: dict[str, Any] = result.metrics
    split = result.split
    lines = [
        f"# Model card: {result.family} on `{feature_service}`",
        "",
        "## Intended use",
        "Ranks customers by their probability of churning so that support agents and retention campaigns reach the "
        "likeliest leavers first, with the features that push each score up as reasons. Not for decisions about a "
        "single customer without a person looking at the reasons.",
        "",
        "## Data",
        f"- Catalogue `{settings.catalog}`, FeatureService `{feature_service}`, {len(result.model.feature_names)} "
        "model inputs, read point-in-time through Feast (what was known at each observation time).",
        f"- Training rows: {_window(split.train)}; {len(split.folds)} purged cross-validation folds.",
        f"- Test rows (the most recent labelled window, never fitted on): {_window(split.test)}.",
        f"- Training set sha256 `{result.fingerprint['sha256']}`.",
        "",
        "## Population",
        _population(result),
        "",
        "## Label",
        f"`{label.kind}`: " + _LABELS[label.kind].format(h=label.horizon_days) + ".",
        "",
        "## Performance on the test window",
        f"- ROC-AUC {_interval(metrics, 'roc_auc')}; PR-AUC {_interval(metrics, 'pr_auc')} at a churn rate of "
        f"{metrics['base_rate']:.3f}.",
        f"- Top decile: lift {metrics['lift_top_decile']:.2f}, recall {metrics['recall_top_decile']:.2f}.",
        f"- Brier {metrics['brier']:.4f} (before calibration {metrics['brier_uncalibrated']:.4f}); purged CV "
        f"ROC-AUC {metrics['cv_roc_auc']:.3f}.",
        "",
        "### By slice",
        *_slices(result.slices),
        "",
        "## Limits",
        f"- Labels arrive {label.horizon_days} days late: performance on new data is estimated (CBPE) until they "
        "mature, and the estimate is only as good as the calibration (`churn monitor performance` says when it "
        "drifted).",
        "- It learnt the churn process of its training window. A change in why customers leave (a competitor, a "
        "price change) that the features do not show is invisible to it until retraining on labels of the new "
        "regime; drift monitoring compares the served features with this run's reference distributions.",
        "- Intervals are over users resampled in the test window; slices with few churners are noisy.",
    ]
    return "\n".join(lines) + "\n"
