"""The promise, end to end: generate -> validate -> features -> apply -> train -> materialise to real Redis ->
a real uvicorn process. For sampled users the API answers what the population rule says offline, and a scored
user's probability equals the registered champion's prediction on the offline vector from get_historical_features
at the materialisation time."""

import json
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
from monitoring import scoring
from monitoring.scoring import score_batch
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
        with running_server(server_env(settings, CHURN_NOW=materialized_at.isoformat())) as base:
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
        _batch_scores_equal_the_api(settings, materialized_at, bodies)
    finally:
        delete_project_keys(redis_client, settings.feast_project)


def _batch_scores_equal_the_api(settings, at: datetime, bodies: list[dict]) -> None:
    """`churn score` at T logs, for every user /predict scored at T, the same probability (1e-9) and reasons."""
    report = score_batch(settings, at)
    log = pd.read_parquet(report.log).set_index("user_id")
    assert report.scored == len(log) and (log["scored_at"] == at).all() and (log["source"] == "batch").all()
    answered = [body for body in bodies if body["status"] == "scored"]
    assert set(log.index) >= {body["user_id"] for body in answered}
    unscored = {body["user_id"] for body in bodies if body["status"] != "scored"}
    assert not unscored & set(log.index)
    for body in answered:
        row = log.loc[body["user_id"]]
        assert row["churn_probability"] == pytest.approx(body["churn_probability"], abs=1e-9)
        assert json.loads(row["reasons"]) == body["reasons"] and row["risk_band"] == body["risk_band"]
        assert pd.Timestamp(body["features_as_of"]) == row["features_as_of"]
        assert row["model_version"] == body["model"]["version"] and row["feature_service"] == body["feature_service"]
    high_risk = pd.read_csv(report.high_risk_list)
    assert len(high_risk) == report.high_risk == (log["risk_band"] == "high").sum() > 0
    assert high_risk["churn_probability"].is_monotonic_decreasing and high_risk["why"].str.contains("last").any()
    again = score_batch(settings, at)  # idempotent per date
    assert again.log == report.log and pd.read_parquet(again.log).equals(pd.read_parquet(report.log))
    # In batches of 120 users (as a million users go through in batches), the same rows, features and counts.
    features = pd.read_parquet(report.features)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scoring, "SCORING_BATCH_USERS", 120)
        batched = score_batch(settings, at)
    assert pd.read_parquet(batched.log).equals(log.reset_index()[pd.read_parquet(batched.log).columns])
    assert pd.read_parquet(batched.features).equals(features) and batched.statuses == report.statuses
