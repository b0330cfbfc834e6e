"""The API's predictions reach the prediction log, in the batch log's shape, off the request path."""

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from churn_common.prediction_log import PREDICTION_LOG_SCHEMA
from tests.serving.conftest import app_client
from tests.serving.test_api import sample
from tests.serving.world import CLOSED_USERS, FRESH_USERS, World

pytestmark = pytest.mark.redis


def _logging(settings, directory: Path, share: float):
    """The world's settings with the API's prediction log in ``directory``, flushed every 50 ms."""
    changes = {"prediction_log_dir": directory, "prediction_log_share": share, "prediction_log_flush_seconds": 0.05}
    return settings.model_copy(update=changes)


def _logged(root: Path, deadline_s: float = 20.0, rows: int = 1) -> pd.DataFrame:
    """The API's log rows under ``root`` once at least ``rows`` were written (the writer runs in the background)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        files = sorted(root.glob("date=*/source=api-*.parquet"))
        if files and sum(pq.read_metadata(f).num_rows for f in files) >= rows:
            return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
        time.sleep(0.05)
    raise AssertionError(f"fewer than {rows} prediction log rows under {root} within {deadline_s}s")


def test_scored_answers_are_logged_like_batch_scores(world: World, tmp_path: Path):
    settings = _logging(world.settings, tmp_path / "log", 1.0)
    users = list(FRESH_USERS[:5])
    with app_client(settings) as api:
        single = [api.get("/predict", params={"user_id": u}).json() for u in users[:3]]
        batch = api.post("/predict/batch", json={"user_ids": [*users[3:], CLOSED_USERS[0]]}).json()["results"]
        logged = _logged(settings.prediction_log_root, rows=5)
        metrics = api.get("/metrics").text
    answers = {body["user_id"]: body for body in [*single, *batch] if body.get("status") == "scored"}
    assert sorted(logged["user_id"]) == sorted(answers) == users  # the closed user is answered, not logged
    assert pq.read_schema(next(settings.prediction_log_root.glob("date=*/*.parquet"))).equals(PREDICTION_LOG_SCHEMA)
    for row in logged.itertuples():
        body = answers[row.user_id]
        assert row.churn_probability == body["churn_probability"] and row.risk_band == body["risk_band"]
        assert json.loads(row.reasons) == body["reasons"] and row.source == "api"
        assert (row.model_version, row.feature_service) == (body["model"]["version"], body["feature_service"])
        assert row.features_as_of == pd.Timestamp(body["features_as_of"])
    assert sample("churn_prediction_log_rows_total", metrics) == 5


def test_no_share_logs_nothing_and_a_failing_log_never_fails_a_request(world: World, tmp_path: Path):
    off = _logging(world.settings, tmp_path / "off", 0.0)
    with app_client(off) as api:
        assert api.get("/predict", params={"user_id": FRESH_USERS[0]}).status_code == 200
    assert not off.prediction_log_root.exists()

    # The log's directory cannot be created: its parent is a file.
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    failing = _logging(world.settings, blocked / "log", 1.0)
    with app_client(failing) as api:
        assert all(api.get("/predict", params={"user_id": u}).status_code == 200 for u in FRESH_USERS[:3])
        deadline = time.monotonic() + 20
        while sample("churn_prediction_log_failures_total", api.get("/metrics").text) < 3:
            assert time.monotonic() < deadline, "the failed write was not counted"
            time.sleep(0.05)
