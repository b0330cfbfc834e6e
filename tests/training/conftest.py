"""One model trained once per session on the synthetic frame, shared by the tests that only read it."""

import pandas as pd
import pytest

from tests.training.frames import make_training_frame
from training.train import TrainingResult, train_churn_model

HORIZON_DAYS = 30


@pytest.fixture(scope="session")
def training_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_training_frame(n_users=300, n_times=16, seed=0)


@pytest.fixture(scope="session")
def trained(training_data: tuple[pd.DataFrame, pd.DataFrame]) -> TrainingResult:
    frame, truth = training_data
    return train_churn_model(frame, HORIZON_DAYS, truth)
