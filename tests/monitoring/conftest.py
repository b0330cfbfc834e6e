"""A champion registered once per module in a real MLflow (SQLite), trained on the synthetic frame of
tests/training, and helpers that lay down what batch scoring writes for a date: the scored feature matrix and the
prediction log."""

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churn_common.names import JOIN_KEY
from churn_common.prediction_log import PREDICTION_LOG_SCHEMA, log_file
from churn_common.settings import Settings
from monitoring.scoring import scoring_features_file
from products.elearning import FEATURE_SERVICE
from tests.training.frames import make_training_frame
from training import registry
from training.train import TrainingResult, train_churn_model

HORIZON_DAYS = 30


@pytest.fixture(scope="session")
def trained() -> TrainingResult:
    frame, truth = make_training_frame(n_users=150, n_times=14, seed=11)
    return train_churn_model(frame, HORIZON_DAYS, truth)


def register_champion(data_dir: Path, result: TrainingResult, label: str | None = None) -> Settings:
    """Log, register and promote ``result`` (as trained with ``label``, default the catalogue's) in the MLflow under
    ``data_dir``; settings whose tracking URI is it."""
    owner = Settings(data_dir=data_dir, label=label)
    registry.log_and_register(owner, result, FEATURE_SERVICE)
    assert registry.promote(owner)["promoted"]
    return owner


@pytest.fixture(scope="module")
def champion_uri(tmp_path_factory: pytest.TempPathFactory, trained: TrainingResult) -> str:
    return register_champion(tmp_path_factory.mktemp("registry"), trained).tracking_uri


@pytest.fixture
def world(settings: Settings, champion_uri: str) -> Settings:
    """A fresh data directory of its own, with the module's champion."""
    return settings.model_copy(update={"mlflow_tracking_uri": champion_uri})


def after_training(result: TrainingResult, days: int = 7) -> date:
    """A scoring date ``days`` after the champion's last training day."""
    return result.split.test["event_timestamp"].max().date() + timedelta(days=days)


def write_scoring(settings: Settings, day: date, features: pd.DataFrame, scores: np.ndarray | None = None) -> None:
    """What `churn score` writes for ``day``: the scored feature matrix and, when given, the batch log's scores
    (by version 1, the module's champion)."""
    matrix = scoring_features_file(settings.paths, day.isoformat())
    matrix.parent.mkdir(parents=True, exist_ok=True)
    features.reset_index(drop=True).to_parquet(matrix, index=False)
    if scores is None:
        return
    n, at = len(scores), pd.Timestamp(day, tz="UTC")
    columns = {
        "scored_at": [at] * n,
        JOIN_KEY: features[JOIN_KEY].to_numpy(),
        "features_as_of": [at] * n,
        "churn_probability": scores,
        "risk_band": ["low"] * n,
        "reasons": [json.dumps([])] * n,
        "model_name": ["churn"] * n,
        "model_version": ["1"] * n,
        "feature_service": [FEATURE_SERVICE] * n,
        "source": ["batch"] * n,
    }
    target = log_file(settings.prediction_log_root, day.isoformat(), "batch")
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=PREDICTION_LOG_SCHEMA), target)
