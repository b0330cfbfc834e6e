"""The promise, end to end: generate -> validate -> features -> apply -> train -> materialise to real Redis ->
a real uvicorn process. For sampled users the API answers what the population rule says offline, and a scored
user's probability equals the registered champion's prediction on the offline vector from get_historical_features
at the materialisation time."""

from datetime import UTC, date, datetime, timedelta

import duckdb
import httpx
import numpy as np
import pandas as pd
import pytest

from churn_common.feature_frame import service_schema
from churn_common.names import CHAMPION_ALIAS, FEATURE_SERVICE_TAG
from churn_common.population import PopulationRule, Status
from churn_common.store import apply_repo, feature_store
from jobs.materialize import materialize
from jobs.model_commands import run_training
from products import GeneratorConfig
from products.elearning import CATALOG as ELEARNING
from products.elearning import FEATURE_SERVICE
from products.elearning.generator import generate
from tests.feature_repo.conftest import delete_project_keys
from tests.serving.world import running_server, server_env
from training import registry
from training.dataset import get_training_frame
from transformations.features import build_features
from transformations.validation import validate

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

USERS, DAYS = 800, 160


def _run_pipeline(settings) -> datetime:
    start = date.today() - timedelta(days=DAYS)  # the period ends yesterday, so features are fresh now
    generate(settings.paths, GeneratorConfig(USERS, start, DAYS, seed=21))
    report = validate(settings.paths, catalog=ELEARNING, now=datetime.now(UTC), max_quarantine_share=0.01)
    assert report.passed
    build_features(settings)
    apply_repo(settings)
    summary = run_training(settings, FEATURE_SERVICE, promote=True)
    assert summary["promotion"]["decision"] == "promoted"
    materialized_at = datetime.now(UTC)
    assert materialize(settings, end=materialized_at).mode == "refill"
    return materialized_at


def _fresh_users(settings, count: int) -> list[int]:
    newest = sorted(settings.paths.snapshots.glob("date=*/*.parquet"))[-1]
    with duckdb.connect() as con:
        rows = con.execute("SELECT user_id FROM read_parquet(?) ORDER BY hash(user_id) LIMIT ?", [str(newest), count])
        return [int(u) for (u,) in rows.fetchall()]


def _offline_answers(settings, user_ids: list[int], at: datetime) -> tuple[np.ndarray, np.ndarray]:
    """The champion's probability on each user's offline vector at ``at``, and the population rule's status there."""
    client = registry.connect(settings)
    champion = registry.version_by_alias(client, CHAMPION_ALIAS)
    assert champion.tags[FEATURE_SERVICE_TAG] == FEATURE_SERVICE
    model = registry.load_model(champion)
    entities = pd.DataFrame({"user_id": user_ids, "event_timestamp": [at] * len(user_ids)})
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[us, UTC]")
    frame = get_training_frame(feature_store(settings), entities, FEATURE_SERVICE)
    schema = service_schema(feature_store(settings).get_feature_service(FEATURE_SERVICE))
    assert model.feature_names == list(schema.model_features)
    assert frame[model.feature_names].notna().any(axis=1).all()  # every sampled user really has features
    return model.predict_proba(frame), PopulationRule(settings.active_window_days).statuses(frame)


def test_api_answers_equal_the_champion_on_offline_vectors(settings, redis_client):
    settings = settings.model_copy(update={"feast_profile": "redis"})
    try:
        materialized_at = _run_pipeline(settings)
        users = _fresh_users(settings, 40)
        with running_server(server_env(settings)) as base:
            responses = [httpx.get(f"{base}/predict", params={"user_id": u}, timeout=30) for u in users]
            ready = httpx.get(f"{base}/ready", timeout=30).json()
        assert [r.status_code for r in responses] == [200] * len(users), [r.text for r in responses]
        bodies = [r.json() for r in responses]
        assert ready["ready"] and all(b["feature_service"] == FEATURE_SERVICE for b in bodies)
        offline, statuses = _offline_answers(settings, users, materialized_at)
        # Who is scored online is who the rule scores offline; the others are answered with their status.
        assert [b["status"] for b in bodies] == [str(status) for status in statuses]
        scored = statuses == Status.SCORED
        assert scored.sum() >= 10
        online = np.array([b["churn_probability"] for b in bodies], dtype=object)
        np.testing.assert_allclose(online[scored].astype(float), offline[scored], rtol=0, atol=1e-9)
        assert all(probability is None for probability in online[~scored])
        assert len(set(np.round(online[scored].astype(float), 6))) > 1  # not a constant model
    finally:
        delete_project_keys(redis_client, settings.feast_project)
