"""Time-based splits with a gap: a row observed at t carries a label about (t, t + horizon], so a training row
is only allowed when its label window closes before the first evaluated observation time.

    fit ──(gap ≥ horizon)── validation ──(gap ≥ horizon)── test        (test = the last observation times)
"""

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churn_common.errors import TrainingError
from churn_common.names import TIMESTAMP_FIELD

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimeSplit:
    train: pd.DataFrame
    """Everything before the test gap (fit + gap + validation), where hyper-parameters are searched."""
    fit: pd.DataFrame
    """Rows the estimator is fitted on."""
    validation: pd.DataFrame
    """Rows for calibration, risk thresholds and choosing the model family."""
    test: pd.DataFrame
    """The most recent observation times; touched once, for the reported metrics."""


def split_last_times(frame: pd.DataFrame, n_last_times: int, gap: pd.Timedelta) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(earlier, last)``: the rows of the last ``n_last_times`` observation times, and the rows whose
    observation time is at least ``gap`` before the first of them."""
    times = np.sort(frame[TIMESTAMP_FIELD].unique())
    if len(times) <= n_last_times:
        raise TrainingError(f"need more than {n_last_times} observation times to split, got {len(times)}")
    first_last = times[-n_last_times]
    last = frame[frame[TIMESTAMP_FIELD] >= first_last]
    earlier = frame[frame[TIMESTAMP_FIELD] <= first_last - gap]
    if earlier.empty:
        raise TrainingError(
            f"no observation time is {gap.days} days before {pd.Timestamp(first_last).date()}: "
            "the data span is too short for a gapped time split"
        )
    return earlier, last


def time_split(frame: pd.DataFrame, horizon_days: int, n_test_times: int = 2, n_validation_times: int = 2) -> TimeSplit:
    gap = pd.Timedelta(days=horizon_days)
    train, test = split_last_times(frame, n_test_times, gap)
    fit, validation = split_last_times(train, n_validation_times, gap)
    logger.info("time split: fit %d rows, validation %d rows, test %d rows", len(fit), len(validation), len(test))
    return TimeSplit(train=train, fit=fit, validation=validation, test=test)


def gapped_folds(timestamps: pd.Series, horizon_days: int, n_splits: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """Forward-chaining folds for hyper-parameter search: each of the last ``n_splits`` observation times is
    one validation fold, trained on every row at least ``horizon_days`` earlier. Returns positional indices."""
    values = timestamps.to_numpy()
    times = np.sort(np.unique(values))
    gap = np.timedelta64(pd.Timedelta(days=horizon_days))
    folds = []
    for held_out in times[-n_splits:]:
        train_idx = np.flatnonzero(values <= held_out - gap)
        if len(train_idx):
            folds.append((train_idx, np.flatnonzero(values == held_out)))
    if not folds:
        raise TrainingError(f"no time-based CV fold has training rows {horizon_days}+ days before it")
    return folds
