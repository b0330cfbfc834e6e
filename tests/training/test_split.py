"""Time splits and purged folds never let a label window overlap the period it is evaluated on, and a short
history still gives several training times; the minimum history is worked out by hand here."""

import numpy as np
import pandas as pd
import pytest

from churn_common.errors import TrainingError
from tests.training.frames import make_training_frame
from training.split import (
    minimum_history_days,
    minimum_observation_times,
    purged_folds,
    require_history,
    time_split,
)

HORIZON = pd.Timedelta(days=30)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_training_frame(n_users=40, n_times=16, seed=1)[0]


def times(part: pd.DataFrame) -> list[pd.Timestamp]:
    return sorted(part["event_timestamp"].unique())


def test_test_is_the_last_two_times_and_train_ends_a_horizon_before(frame: pd.DataFrame) -> None:
    split = time_split(frame, horizon_days=30)
    grid = times(frame)
    assert times(split.test) == grid[-2:]
    # Every observation time whose label window (t, t + 30 d] closes by the first test time, and no other:
    # 4 weeks (28 d) are not enough, so the last training time is 5 weeks before the first test time.
    assert times(split.train) == grid[: len(grid) - 2 - 4]
    assert max(times(split.train)) + HORIZON <= min(times(split.test))


def test_splits_keep_whole_observation_times(frame: pd.DataFrame) -> None:
    split = time_split(frame, horizon_days=30)
    for part in (split.train, split.test):
        assert (part.groupby("event_timestamp").size() == 40).all()


def test_every_fold_is_purged_before_and_embargoed_after_its_held_out_block(frame: pd.DataFrame) -> None:
    split = time_split(frame, horizon_days=30)
    stamps = split.train["event_timestamp"].reset_index(drop=True)
    assert split.folds
    for fold in split.folds:
        held = stamps.iloc[fold.held_out]
        first, last = held.min(), held.max()
        trained = stamps.iloc[fold.train]
        # A training row's label window (t, t + 30 d] closes by the block's first time, or the row comes a whole
        # horizon after the block's last time.
        assert ((trained + HORIZON <= first) | (trained >= last + HORIZON)).all()
        assert np.intersect1d(fold.train, fold.held_out).size == 0
        # Whole observation times, and every row of the training times that qualify.
        assert set(held) == set(stamps[(stamps >= first) & (stamps <= last)])
        qualifying = (stamps + HORIZON <= first) | (stamps >= last + HORIZON)
        assert len(fold.train) == qualifying.sum()


def test_folds_are_contiguous_blocks_and_blocks_without_training_rows_are_dropped(frame: pd.DataFrame) -> None:
    split = time_split(frame, horizon_days=30, n_folds=5)
    stamps = split.train["event_timestamp"].reset_index(drop=True)
    grid = times(split.train)
    assert len(grid) == 10
    # Five blocks of two weeks. Weeks 0-1 train on weeks 6-9 (embargo); weeks 2-3 on 8-9; weeks 4-5 have every
    # other week within 30 days on one side or the other and are dropped; weeks 6-7 train on 0-1, weeks 8-9 on 0-3.
    blocks = [sorted(stamps.iloc[fold.held_out].unique()) for fold in split.folds]
    trained = [sorted(stamps.iloc[fold.train].unique()) for fold in split.folds]
    assert blocks == [grid[0:2], grid[2:4], grid[6:8], grid[8:10]]
    assert trained == [grid[6:10], grid[8:10], grid[0:2], grid[0:4]]


def test_four_months_of_weekly_observations_leave_several_training_times() -> None:
    # 13 weekly observation times: the last one's 30-day label ends 114 days after the first, about 4 months.
    frame, _ = make_training_frame(n_users=40, n_times=13, seed=4)
    split = time_split(frame, horizon_days=30)
    assert len(times(split.train)) == 13 - 2 - 4
    assert len(split.folds) == 3


def test_minimum_history_worked_out_by_hand() -> None:
    # 30 d horizon on a weekly grid: 5 steps. Training times 0..5 span 35 d >= 30 d; the first test time is 5 steps
    # after the last training time (index 10); two test times: 12 observation times.
    assert minimum_observation_times(horizon_days=30, cadence_days=7) == 12
    assert minimum_observation_times(horizon_days=28, cadence_days=7, n_test_times=1) == 9
    # 30 d active window before the first time, 11 weekly steps, the 30 d horizon after the last, whole days:
    # events on days 0..137 put the first time at day 30 and the last at day 107.
    assert minimum_history_days(horizon_days=30, cadence_days=7, active_window_days=30) == 30 + 77 + 30 + 1


def test_the_minimum_history_splits_and_one_time_less_does_not() -> None:
    frame, _ = make_training_frame(n_users=60, n_times=12, seed=2)
    split = time_split(frame, horizon_days=30)
    assert len(split.folds) >= 1
    shorter = frame[frame["event_timestamp"] > frame["event_timestamp"].min()]
    with pytest.raises(TrainingError, match="too short for a sound time split.*at least 12 observation times"):
        time_split(shorter, horizon_days=30)


def test_require_history_names_the_minimum(frame: pd.DataFrame) -> None:
    stamps = frame["event_timestamp"]
    require_history(stamps, horizon_days=30, cadence_days=7, active_window_days=30)
    recent = stamps[stamps >= times(frame)[-11]]
    with pytest.raises(TrainingError, match="11 observation times .* need 12 every 7 days, i.e. at least 138 days"):
        require_history(recent, horizon_days=30, cadence_days=7, active_window_days=30)


def test_purged_folds_without_any_training_rows_are_empty(frame: pd.DataFrame) -> None:
    # Four weekly times span 21 days: every pair is within one horizon.
    recent = frame[frame["event_timestamp"] >= times(frame)[-4]]["event_timestamp"]
    assert purged_folds(recent, horizon_days=30) == []
