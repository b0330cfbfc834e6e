"""The API served in process (uvicorn in a thread) against real Redis and a real MLflow champion."""

import re
import subprocess
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from churn_common.feature_frame import service_schema
from churn_common.names import FEATURE_SERVICE
from churn_common.store import feature_store
from serving.schemas import Prediction
from tests.serving.conftest import app_client
from tests.serving.expected import expected_prediction
from tests.serving.world import FRESH_USERS, STALE_USERS, UNKNOWN_USER, World, free_port

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def schema(world: World):
    return service_schema(feature_store(world.settings).get_feature_service(FEATURE_SERVICE))


def sample(metric: str, text: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.mark.parametrize("user_id", [FRESH_USERS[0], FRESH_USERS[7], FRESH_USERS[-1]])
def test_predict_scores_the_newest_snapshot_with_the_champion(api: httpx.Client, world: World, schema, user_id):
    expected = expected_prediction(world.model, schema, world.snapshots, user_id)

    response = api.get("/predict", params={"user_id": user_id})

    assert response.status_code == 200, response.text
    body = response.json()
    # The body is serialised without building a Prediction: it must still be exactly one.
    assert set(body) == set(Prediction.model_fields)
    assert Prediction.model_validate_json(response.content).model_dump(mode="json") == body
    assert body["user_id"] == user_id
    assert body["churn_probability"] == pytest.approx(expected["probability"], abs=1e-9)
    assert body["risk_band"] == expected["risk_band"]
    assert [r["feature"] for r in body["reasons"]] == [r["feature"] for r in expected["reasons"]]
    for got, want in zip(body["reasons"], expected["reasons"], strict=True):
        assert got["value"] == pytest.approx(want["value"]) if want["value"] is not None else got["value"] is None
        assert got["contribution"] == pytest.approx(want["contribution"], abs=1e-6)
    assert body["model"] == {"name": "churn", "version": "1", "alias": "champion"}
    assert body["feature_service"] == FEATURE_SERVICE
    assert datetime.fromisoformat(body["features_as_of"]) == expected["as_of"]


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "1.5", "", str(2**63)])
def test_invalid_user_id_is_422(api: httpx.Client, raw: str):
    response = api.get("/predict", params={"user_id": raw})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "user_id"]


def test_missing_user_id_is_422(api: httpx.Client):
    assert api.get("/predict").status_code == 422


def test_unknown_user_is_404(api: httpx.Client):
    response = api.get("/predict", params={"user_id": UNKNOWN_USER})
    assert response.status_code == 404
    assert response.json() == {"detail": f"user {UNKNOWN_USER} has no features online"}


def test_stale_user_is_503_with_the_age(api: httpx.Client, world: World):
    user_id = STALE_USERS[0]
    as_of = world.snapshots.loc[world.snapshots["user_id"] == user_id, "event_timestamp"].max()
    response = api.get("/predict", params={"user_id": user_id})
    expected_age = (datetime.now(UTC) - as_of.to_pydatetime()).total_seconds()

    assert response.status_code == 503
    detail = response.json()["detail"]
    assert as_of.isoformat() in detail
    age = float(re.search(r"is (\d+)s old", detail).group(1))
    assert abs(age - expected_age) < 60  # the age is days; the minute bounds only the time between two clocks


def test_batch_returns_one_entry_per_id_in_order(api: httpx.Client, world: World, schema):
    ids = [FRESH_USERS[1], 0, STALE_USERS[1], UNKNOWN_USER, FRESH_USERS[2], FRESH_USERS[1]]
    response = api.post("/predict/batch", json={"user_ids": ids})

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["user_id"] for r in results] == ids
    assert [r.get("status", 200) for r in results] == [200, 422, 503, 404, 200, 200]
    for result in (results[0], results[4], results[5]):
        expected = expected_prediction(world.model, schema, world.snapshots, result["user_id"])
        assert result["churn_probability"] == pytest.approx(expected["probability"], abs=1e-9)
    single = api.get("/predict", params={"user_id": STALE_USERS[1]}).json()["detail"]
    assert results[2]["detail"].split(":")[0] == single.split(":")[0]
    assert results[0] == api.get("/predict", params={"user_id": FRESH_USERS[1]}).json()


@pytest.mark.parametrize("body", [{"user_ids": []}, {"user_ids": ["x"]}, {}, {"user_ids": list(range(1, 102))}])
def test_bad_batch_body_is_422(api: httpx.Client, body):
    assert api.post("/predict/batch", json=body).status_code == 422


def test_health_and_ready(api: httpx.Client, world: World):
    assert api.get("/health").json() == {"status": "ok"}
    response = api.get("/ready")
    newest = world.snapshots["event_timestamp"].max().to_pydatetime()
    expected_age = (datetime.now(UTC) - newest).total_seconds()

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ready"] is True and body["reasons"] == []
    assert body["model"]["version"] == "1"
    assert abs(body["features_age_seconds"] - expected_age) < 60


def test_not_ready_when_features_are_older_than_the_slo(world: World):
    strict = world.settings.model_copy(update={"freshness_slo_seconds": 60})
    with app_client(strict) as client:
        body = client.get("/ready").json()
        assert body["ready"] is False
        assert len(body["reasons"]) == 1 and "over the 60s freshness SLO" in body["reasons"][0]


def test_metrics_count_what_happened_and_pass_promtool(api: httpx.Client):
    before = api.get("/metrics").text
    api.get("/predict", params={"user_id": FRESH_USERS[3]})
    api.get("/predict", params={"user_id": STALE_USERS[2]})
    api.get("/predict", params={"user_id": "nope"})
    after = api.get("/metrics").text

    def delta(metric, **labels):
        return sample(metric, after, **labels) - sample(metric, before, **labels)

    assert delta("churn_http_requests_total", endpoint="/predict", status="200") == 1
    assert delta("churn_http_requests_total", endpoint="/predict", status="503") == 1
    assert delta("churn_http_requests_total", endpoint="/predict", status="422") == 1
    assert delta("churn_http_request_duration_seconds_count", endpoint="/predict", status="200") == 1
    assert delta("churn_prediction_probability_count") == 1
    assert sum(delta("churn_predictions_by_risk_band_total", band=b) for b in ("low", "medium", "high")) == 1
    assert delta("churn_stale_feature_views_total", view="user_activity_7d") == 1
    assert delta("churn_online_read_duration_seconds_count") == 2
    assert sample("churn_model_info", after, name="churn", version="1", alias="champion") == 1
    assert sample("churn_feature_age_seconds", after) > 0

    check = subprocess.run(["promtool", "check", "metrics"], input=after, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_token_required_when_configured(world: World):
    secured = world.settings.model_copy(update={"api_token": SecretStr("s3cret")})
    with app_client(secured) as client:
        params = {"user_id": FRESH_USERS[0]}
        missing = client.get("/predict", params=params)
        wrong = client.get("/predict", params=params, headers={"Authorization": "Bearer nope"})
        right = client.get("/predict", params=params, headers={"Authorization": "Bearer s3cret"})
        batch = client.post("/predict/batch", json={"user_ids": [1]})

        assert (missing.status_code, wrong.status_code, right.status_code, batch.status_code) == (401, 401, 200, 401)
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.get("/health").status_code == 200


def test_without_a_champion_the_app_starts_and_says_why(world: World, tmp_path):
    empty = world.settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{tmp_path / 'empty.db'}"})
    with app_client(empty) as client:
        ready = client.get("/ready")
        predict = client.get("/predict", params={"user_id": FRESH_USERS[0]})

        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert "alias 'champion'" in ready.json()["reasons"][0]
        assert predict.status_code == 503
        assert predict.json()["detail"].startswith("no model to serve: no version of model 'churn' has alias")


def test_unreachable_redis_is_503_and_not_ready(world: World):
    nowhere = world.settings.model_copy(update={"redis_port": free_port()})
    with app_client(nowhere) as client:
        predict = client.get("/predict", params={"user_id": FRESH_USERS[0]})
        ready = client.get("/ready")

        assert predict.status_code == 503
        assert "Redis" in predict.json()["detail"]
        assert ready.status_code == 503 and "Redis" in ready.json()["reasons"][0]
