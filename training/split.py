"""The time split and its purged cross-validation folds. A row observed at t carries a label about (t, t + horizon],
so no row may learn from a label window that overlaps the period it is evaluated on:

    train: every time ≥ one horizon before the test window ──(embargo)── test: the last observation times
           └ purged CV folds: blocks of train times held out in turn, trained on the rows ≥ one horizon away

Model selection, hyper-parameters and calibration all come from the folds, so the final model is fitted on every
training row and the test window is touched once, for the reported metrics.

The minimum history is defined here once (:func:`minimum_observation_times`, :func:`minimum_history_days`): the
training times must span one horizon (else no fold has training rows), then the embargo, then the test times.
"""

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churn_common.errors import TrainingError
from churn_common.names import TIMESTAMP_FIELD

logger = logging.getLogger(__name__)

# Two weekly test times double the churners the reported interval and the promotion gate rest on, for the cost
# of one training time.
N_TEST_TIMES = 2
N_FOLDS = 5


@dataclass(frozen=True)
class Fold:
    """Positional indices into ``TimeSplit.train``."""

    train: np.ndarray
    held_out: np.ndarray


@dataclass(frozen=True)
class TimeSplit:
    train: pd.DataFrame
    """Every observation time at least one horizon before the first test time: folds, then the final fit."""
    test: pd.DataFrame
    """The most recent observation times; touched once, for the reported metrics."""
    folds: tuple[Fold, ...]
    """Purged CV folds over ``train`` (at least one)."""


def minimum_observation_times(horizon_days: int, cadence_days: int, n_test_times: int = N_TEST_TIMES) -> int:
    """Observation times on a regular grid that a sound split needs: training times spanning one horizon (the
    first can then be held out against the last), an embargo of one horizon, and the test times."""
    steps = math.ceil(horizon_days / cadence_days)
    return 2 * steps + n_test_times


def minimum_history_days(
    horizon_days: int, cadence_days: int, active_window_days: int, n_test_times: int = N_TEST_TIMES
) -> int:
    """Whole days of events, first and last included, behind :func:`minimum_observation_times`: the first time
    has a full active window before it, the last a full horizon after it (training.labels' observation range)."""
    span = (minimum_observation_times(horizon_days, cadence_days, n_test_times) - 1) * cadence_days
    return active_window_days + span + horizon_days + 1


def require_history(
    times: pd.Series, horizon_days: int, cadence_days: int, active_window_days: int, n_test_times: int = N_TEST_TIMES
) -> None:
    """TrainingError naming the minimum history when ``times`` (the labels' observation times) are too few."""
    distinct = times.drop_duplicates().sort_values()
    needed = minimum_observation_times(horizon_days, cadence_days, n_test_times)
    if len(distinct) >= needed:
        return
    window = f" ({distinct.iloc[0]:%Y-%m-%d}..{distinct.iloc[-1]:%Y-%m-%d})" if len(distinct) else ""
    days = minimum_history_days(horizon_days, cadence_days, active_window_days, n_test_times)
    raise TrainingError(
        f"the history is too short for a sound time split: {len(distinct)} observation times{window}, need "
        f"{needed} every {cadence_days} days, i.e. at least {days} days of events ({active_window_days} d active "
        f"window, training times spanning the {horizon_days} d label horizon, a {horizon_days} d embargo, "
        f"{n_test_times} test times and their {horizon_days} d horizon)"
    )


def time_split(
    frame: pd.DataFrame, horizon_days: int, n_test_times: int = N_TEST_TIMES, n_folds: int = N_FOLDS
) -> TimeSplit:
    times = np.sort(frame[TIMESTAMP_FIELD].unique())
    if len(times) <= n_test_times:
        raise TrainingError(f"need more than {n_test_times} observation times to split, got {len(times)}")
    first_test = times[-n_test_times]
    test = frame[frame[TIMESTAMP_FIELD] >= first_test]
    train = frame[frame[TIMESTAMP_FIELD] <= first_test - pd.Timedelta(days=horizon_days)]
    folds = purged_folds(train[TIMESTAMP_FIELD], horizon_days, n_folds)
    if not folds:
        raise TrainingError(_too_short(times, train, horizon_days, n_test_times))
    logger.info(
        "time split: train %d rows at %d times (%d purged folds), test %d rows at %d times",
        len(train),
        train[TIMESTAMP_FIELD].nunique(),
        len(folds),
        len(test),
        n_test_times,
    )
    return TimeSplit(train=train, test=test, folds=tuple(folds))


def _too_short(times: np.ndarray, train: pd.DataFrame, horizon_days: int, n_test_times: int) -> str:
    cadence_days = max(int(np.diff(times).min() / np.timedelta64(1, "D")), 1)
    needed = minimum_observation_times(horizon_days, cadence_days, n_test_times)
    return (
        f"the data span is too short for a sound time split: {len(times)} observation times "
        f"({pd.Timestamp(times[0]):%Y-%m-%d}..{pd.Timestamp(times[-1]):%Y-%m-%d}) leave "
        f"{train[TIMESTAMP_FIELD].nunique()} training times {horizon_days}+ days before the test window, too close "
        f"together for a purged CV fold; every {cadence_days} days that needs at least {needed} observation times"
    )


def purged_folds(timestamps: pd.Series, horizon_days: int, n_folds: int = N_FOLDS) -> list[Fold]:
    """Contiguous blocks of observation times, each held out once. A block trains on the rows whose label window
    (t, t + horizon] closes by its first time (purging) and on the rows observed one horizon or more after its last
    time (embargo: closer ones' features cover the block's label windows). Blocks left without training rows are
    dropped."""
    values = timestamps.to_numpy(dtype="datetime64[us]")
    times = np.unique(values)
    gap = np.timedelta64(horizon_days, "D")
    folds = []
    for block in np.array_split(times, min(n_folds, len(times))):
        train = (values <= block[0] - gap) | (values >= block[-1] + gap)
        if train.any():
            held_out = (values >= block[0]) & (values <= block[-1])
            folds.append(Fold(train=np.flatnonzero(train), held_out=np.flatnonzero(held_out)))
    return folds
