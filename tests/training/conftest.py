"""One model trained once per session on the synthetic frame, shared by the tests that only read it. The frame is
cut from synthetic candidates by the population rule, as get_training_set cuts the point-in-time join."""

import pandas as pd
import pytest

from churn_common.population import PopulationRule
from tests.training.frames import ACTIVE_WINDOW_DAYS, candidate_schema, make_training_frame, with_unscored_candidates
from training.dataset import TrainingSet, scored_rows
from training.train import TrainingResult, train_churn_model

HORIZON_DAYS = 30


@pytest.fixture(scope="session")
def candidates() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame, truth = make_training_frame(n_users=300, n_times=16, seed=0)
    return with_unscored_candidates(frame, seed=0), truth


@pytest.fixture(scope="session")
def training_set(candidates: tuple[pd.DataFrame, pd.DataFrame]) -> TrainingSet:
    return scored_rows(candidates[0], candidate_schema(), PopulationRule(ACTIVE_WINDOW_DAYS))


@pytest.fixture(scope="session")
def training_data(
    candidates: tuple[pd.DataFrame, pd.DataFrame], training_set: TrainingSet
) -> tuple[pd.DataFrame, pd.DataFrame]:
    return training_set.frame, candidates[1]


@pytest.fixture(scope="session")
def trained(training_data: tuple[pd.DataFrame, pd.DataFrame], training_set: TrainingSet) -> TrainingResult:
    frame, truth = training_data
    return train_churn_model(frame, HORIZON_DAYS, truth, training_set.population)
