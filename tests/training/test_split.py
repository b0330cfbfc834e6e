"""Time splits never let a training label window overlap the period it is evaluated on."""

import numpy as np
import pandas as pd
import pytest

from churn_common.errors import TrainingError
from tests.training.frames import make_training_frame
from training.split import gapped_folds, time_split

HORIZON = pd.Timedelta(days=30)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_training_frame(n_users=40, n_times=16, seed=1)[0]


def times(part: pd.DataFrame) -> list[pd.Timestamp]:
    return sorted(part["event_timestamp"].unique())


def test_test_is_the_last_times_and_train_ends_a_horizon_before(frame: pd.DataFrame) -> None:
    split = time_split(frame, horizon_days=30, n_test_times=2, n_validation_times=2)
    grid = times(frame)
    assert times(split.test) == grid[-2:]
    # Every observation time whose label window (t, t + 30 d] closes by the first test time, and no other.
    assert times(split.train) == [t for t in grid if t + HORIZON <= grid[-2]]
    assert max(times(split.train)) + HORIZON <= min(times(split.test))


def test_validation_is_gapped_from_fit_the_same_way(frame: pd.DataFrame) -> None:
    split = time_split(frame, horizon_days=30)
    train_grid = times(split.train)
    assert times(split.validation) == train_grid[-2:]
    assert times(split.fit) == [t for t in train_grid if t + HORIZON <= train_grid[-2]]
    assert max(times(split.fit)) + HORIZON <= min(times(split.validation))


def test_splits_keep_whole_observation_times(frame: pd.DataFrame) -> None:
    split = time_split(frame, horizon_days=30)
    for part in (split.fit, split.validation, split.test):
        per_time = part.groupby("event_timestamp").size()
        assert (per_time == 40).all()


def test_too_short_a_span_is_a_training_error(frame: pd.DataFrame) -> None:
    recent = frame[frame["event_timestamp"] >= times(frame)[-5]]
    with pytest.raises(TrainingError, match="too short"):
        time_split(recent, horizon_days=30)


def test_cv_folds_hold_out_one_time_each_with_the_gap(frame: pd.DataFrame) -> None:
    stamps = frame["event_timestamp"].reset_index(drop=True)
    folds = gapped_folds(stamps, horizon_days=30, n_splits=3)
    grid = times(frame)
    assert len(folds) == 3
    for (fit_idx, held_idx), held_time in zip(folds, grid[-3:], strict=True):
        assert set(stamps.iloc[held_idx]) == {held_time}
        assert stamps.iloc[fit_idx].max() + HORIZON <= held_time
        assert len(fit_idx) == 40 * sum(t + HORIZON <= held_time for t in grid)
        assert np.intersect1d(fit_idx, held_idx).size == 0


def test_cv_without_any_gapped_fold_is_a_training_error(frame: pd.DataFrame) -> None:
    recent = frame[frame["event_timestamp"] >= times(frame)[-3]]["event_timestamp"]
    with pytest.raises(TrainingError, match="no time-based CV fold"):
        gapped_folds(recent, horizon_days=30)
