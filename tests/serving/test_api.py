"""The API served in process (uvicorn in a thread) against real Redis and a real MLflow champion."""

import subprocess
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from churn_common.feature_frame import service_schema
from churn_common.store import feature_store
from products.elearning import FEATURE_SERVICE
from serving.schemas import Prediction
from tests.serving.conftest import app_client
from tests.serving.expected import expected_prediction, latest_row
from tests.serving.world import (
    CLOSED_USERS,
    FRESH_USERS,
    INACTIVE_USERS,
    JUST_CLOSED_USER,
    NO_ACCOUNT_USER,
    STALE_USERS,
    UNKNOWN_USER,
    World,
    free_port,
)

pytestmark = pytest.mark.redis
SNAPSHOT_VIEWS = "user_activity_7d, user_activity_14d, user_activity_30d, user_activity_90d, user_status_daily"


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


def newest_snapshot(world: World, users=None) -> datetime:
    rows = world.snapshots if users is None else world.snapshots[world.snapshots["user_id"].isin(users)]
    return rows["event_timestamp"].max().to_pydatetime()


def snapshot_time(world: World, user_id: int) -> datetime:
    return latest_row(world.snapshots, user_id)["event_timestamp"].iloc[0].to_pydatetime()


def assert_scored(body: dict, world: World, schema, user_id: int) -> None:
    expected = expected_prediction(world.model, schema, world.snapshots, user_id)
    assert body["user_id"] == user_id and body["status"] == "scored"
    assert body["churn_probability"] == pytest.approx(expected["probability"], abs=1e-9)
    assert body["risk_band"] == expected["risk_band"]
    assert datetime.fromisoformat(body["features_as_of"]) == expected["as_of"]


@pytest.mark.parametrize("user_id", [FRESH_USERS[0], FRESH_USERS[7], FRESH_USERS[-1]])
def test_predict_scores_the_newest_snapshot_with_the_champion(api: httpx.Client, world: World, schema, user_id):
    expected = expected_prediction(world.model, schema, world.snapshots, user_id)

    response = api.get("/predict", params={"user_id": user_id})

    assert response.status_code == 200, response.text
    body = response.json()
    # The body is serialised without building a Prediction: it must still be exactly one, with no detail when scored.
    assert set(body) == set(Prediction.model_fields) - {"detail"}
    assert Prediction.model_validate_json(response.content).model_dump(mode="json") == body
    assert_scored(body, world, schema, user_id)
    assert [r["feature"] for r in body["reasons"]] == [r["feature"] for r in expected["reasons"]]
    for got, want in zip(body["reasons"], expected["reasons"], strict=True):
        assert got["value"] == pytest.approx(want["value"]) if want["value"] is not None else got["value"] is None
        assert got["contribution"] == pytest.approx(want["contribution"], abs=1e-6)
    assert body["model"] == {"name": "churn", "version": "1", "alias": "champion"}
    assert body["feature_service"] == FEATURE_SERVICE


@pytest.mark.parametrize(
    ("user_id", "status", "words"),
    [
        (CLOSED_USERS[0], "closed", "the account is closed"),
        (CLOSED_USERS[-1], "closed", "the account is closed"),
        (INACTIVE_USERS[0], "inactive", "no activity in the last 30 days (active_days_30d is 0)"),
        (INACTIVE_USERS[-1], "inactive", "no activity in the last 30 days (active_days_30d is 0)"),
    ],
)
def test_closed_and_inactive_users_get_200_without_a_probability(
    api: httpx.Client, world: World, user_id: int, status: str, words: str
):
    response = api.get("/predict", params={"user_id": user_id})

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == set(Prediction.model_fields)
    assert Prediction.model_validate_json(response.content).model_dump(mode="json") == body
    assert (body["user_id"], body["status"]) == (user_id, status)
    assert (body["churn_probability"], body["risk_band"], body["reasons"]) == (None, None, [])
    assert words in body["detail"]
    assert body["model"] == {"name": "churn", "version": "1", "alias": "champion"}
    assert body["feature_service"] == FEATURE_SERVICE
    assert datetime.fromisoformat(body["features_as_of"]) == snapshot_time(world, user_id)


def test_an_account_closed_after_the_last_snapshot_is_closed(api: httpx.Client, world: World):
    closing = world.accounts.loc[world.accounts["user_id"] == JUST_CLOSED_USER, "valid_from"].max()
    body = api.get("/predict", params={"user_id": JUST_CLOSED_USER}).json()

    assert body["status"] == "closed" and body["churn_probability"] is None
    # Closed after the newest snapshot, which the answer still dates its features by (the account history holds
    # changes, not the features' age).
    assert closing.to_pydatetime() > snapshot_time(world, JUST_CLOSED_USER)
    assert datetime.fromisoformat(body["features_as_of"]) == snapshot_time(world, JUST_CLOSED_USER)


@pytest.mark.parametrize("raw", ["abc", "-5", "1.5", "", str(2**63)])
def test_invalid_user_id_is_422(api: httpx.Client, raw: str):
    response = api.get("/predict", params={"user_id": raw})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "user_id"]


def test_missing_user_id_is_422(api: httpx.Client):
    assert api.get("/predict").status_code == 422


@pytest.mark.parametrize("user_id", [UNKNOWN_USER, NO_ACCOUNT_USER])
def test_a_user_without_an_account_online_is_404(api: httpx.Client, user_id: int):
    # NO_ACCOUNT_USER has fresh snapshots: the account, not the snapshot, makes a user known.
    response = api.get("/predict", params={"user_id": user_id})
    assert response.status_code == 404
    assert response.json() == {"detail": f"user {user_id} is unknown: no account online"}


def test_stale_user_is_503_naming_the_stale_views_and_their_time(api: httpx.Client, world: World):
    user_id = STALE_USERS[0]
    response = api.get("/predict", params={"user_id": user_id})

    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail.startswith(f"features of user {user_id} are stale at ")
    assert f": {SNAPSHOT_VIEWS} outside their ttl; newest feature time {snapshot_time(world, user_id).isoformat()}" in (
        detail
    )


def test_batch_returns_one_entry_per_id_in_order(api: httpx.Client, world: World, schema):
    ids = [
        FRESH_USERS[1],
        -1,
        STALE_USERS[1],
        UNKNOWN_USER,
        CLOSED_USERS[1],
        INACTIVE_USERS[1],
        NO_ACCOUNT_USER,
        FRESH_USERS[2],
        FRESH_USERS[1],
    ]
    response = api.post("/predict/batch", json={"user_ids": ids})

    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["user_id"] for r in results] == ids
    statuses = [r["status"] for r in results]
    assert statuses == ["scored", 422, 503, 404, "closed", "inactive", 404, "scored", "scored"]
    for result in (results[0], results[7], results[8]):
        assert_scored(result, world, schema, result["user_id"])
    # Every entry a single /predict would answer with a body is that body; the others carry its status and detail.
    for user_id, result in zip(ids, results, strict=True):
        if user_id == -1:
            assert result["detail"] == "user_id must be in [0, 2**63)"
            continue
        single = api.get("/predict", params={"user_id": user_id})
        if single.status_code == 200:
            assert result == single.json()
        else:
            assert result["status"] == single.status_code
            assert result["detail"].split(" are stale at ")[0] == single.json()["detail"].split(" are stale at ")[0]


@pytest.mark.parametrize("body", [{"user_ids": []}, {"user_ids": ["x"]}, {}, {"user_ids": list(range(1, 102))}])
def test_bad_batch_body_is_422(api: httpx.Client, body):
    assert api.post("/predict/batch", json=body).status_code == 422


def test_health_and_ready(api: httpx.Client, world: World):
    assert api.get("/health").json() == {"status": "ok"}
    response = api.get("/ready")
    expected_age = (datetime.now(UTC) - newest_snapshot(world)).total_seconds()

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ready"] is True and body["reasons"] == []
    assert body["model"]["version"] == "1"
    assert abs(body["features_age_seconds"] - expected_age) < 60


def test_ready_means_can_serve_whatever_the_features_age(world: World):
    # Features older than the freshness SLO are the freshness alert's business (churn_feature_age_seconds): a pod
    # that can serve stays in the Service and answers each stale user with its 503.
    strict = world.settings.model_copy(update={"freshness_slo_seconds": 60})
    with app_client(strict) as client:
        response = client.get("/ready")
        exposed = sample("churn_feature_age_seconds", client.get("/metrics").text)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ready"] is True and body["reasons"] == []
    assert body["features_age_seconds"] > 60
    assert exposed == body["features_age_seconds"]


def test_a_clock_five_days_on_finds_the_fresh_world_stale(world: World):
    frozen = world.built_at + timedelta(days=5)
    later = world.settings.model_copy(update={"now": frozen})
    open_users = [FRESH_USERS[0], INACTIVE_USERS[0], STALE_USERS[0]]
    with app_client(later) as client:
        singles = [client.get("/predict", params={"user_id": user_id}) for user_id in open_users]
        closed = client.get("/predict", params={"user_id": CLOSED_USERS[0]})
        batch = client.post("/predict/batch", json={"user_ids": [*open_users, CLOSED_USERS[0]]}).json()["results"]
        ready = client.get("/ready")

    for user_id, response in zip(open_users, singles, strict=True):
        assert response.status_code == 503, response.text
        assert response.json()["detail"].startswith(f"features of user {user_id} are stale at {frozen.isoformat()}: ")
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    assert [entry["status"] for entry in batch] == [503, 503, 503, "closed"]
    # Every user's features are stale, and the pod still serves: each open user gets the defined 503.
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] is True and body["reasons"] == []
    # The age is read on the frozen clock, from the newest snapshot (not the newer account row of JUST_CLOSED_USER).
    assert body["features_age_seconds"] == (frozen - newest_snapshot(world)).total_seconds()


def test_a_clock_back_at_the_stale_users_snapshot_scores_them_and_not_the_fresh(world: World, schema):
    frozen = newest_snapshot(world, STALE_USERS) + timedelta(hours=12)
    earlier = world.settings.model_copy(update={"now": frozen})
    with app_client(earlier) as client:
        stale = client.get("/predict", params={"user_id": STALE_USERS[0]})
        fresh = client.get("/predict", params={"user_id": FRESH_USERS[0]})

    assert stale.status_code == 200, stale.text
    assert_scored(stale.json(), world, schema, STALE_USERS[0])
    # A snapshot from after the clock is not usable yet, as offline.
    assert fresh.status_code == 503
    assert fresh.json()["detail"].startswith(f"features of user {FRESH_USERS[0]} are stale at {frozen.isoformat()}: ")


def test_the_activity_window_is_the_settings(world: World, schema):
    # The inactive users had active days in the last 90 days: with a 90-day window they are scored.
    wider = world.settings.model_copy(update={"active_window_days": 90})
    with app_client(wider) as client:
        body = client.get("/predict", params={"user_id": INACTIVE_USERS[0]}).json()
    assert_scored(body, world, schema, INACTIVE_USERS[0])


def test_a_champion_whose_service_lacks_the_rules_features_is_not_served(world: World):
    # The service has no active_days_45d: the rule cannot be applied, so the champion must not load.
    odd = world.settings.model_copy(update={"active_window_days": 45})
    with app_client(odd) as client:
        ready = client.get("/ready")
        predict = client.get("/predict", params={"user_id": FRESH_USERS[0]})

    assert ready.status_code == 503
    [reason] = ready.json()["reasons"]
    assert f"cannot be served from {FEATURE_SERVICE}" in reason and "['active_days_45d']" in reason
    assert predict.status_code == 503 and "active_days_45d" in predict.json()["detail"]


def test_metrics_count_what_happened_and_pass_promtool(api: httpx.Client):
    before = api.get("/metrics").text
    for user_id in (FRESH_USERS[3], STALE_USERS[2], CLOSED_USERS[2], INACTIVE_USERS[2], UNKNOWN_USER, "nope"):
        api.get("/predict", params={"user_id": user_id})
    batch = [FRESH_USERS[4], CLOSED_USERS[3], INACTIVE_USERS[3], STALE_USERS[3], NO_ACCOUNT_USER, -1]
    assert api.post("/predict/batch", json={"user_ids": batch}).status_code == 200
    after = api.get("/metrics").text

    def delta(metric, **labels):
        return sample(metric, after, **labels) - sample(metric, before, **labels)

    # Closed and inactive users are answers, not server errors.
    assert delta("churn_http_requests_total", endpoint="/predict", status="200") == 3
    assert delta("churn_http_requests_total", endpoint="/predict", status="503") == 1
    assert delta("churn_http_requests_total", endpoint="/predict", status="404") == 1
    assert delta("churn_http_requests_total", endpoint="/predict", status="422") == 1
    assert delta("churn_http_request_duration_seconds_count", endpoint="/predict", status="200") == 3
    for status in ("scored", "closed", "inactive", "stale", "unknown"):
        assert delta("churn_predictions_by_status_total", status=status) == 2, status
    assert delta("churn_prediction_probability_count") == 2
    assert sum(delta("churn_predictions_by_risk_band_total", band=b) for b in ("low", "medium", "high")) == 2
    assert delta("churn_stale_feature_views_total", view="user_activity_7d") == 2
    assert delta("churn_missing_feature_views_total", view="user_account") == 1
    assert delta("churn_online_read_duration_seconds_count") == 6
    assert sample("churn_model_info", after, name="churn", version="1", alias="champion") == 1
    assert sample("churn_feature_age_seconds", after) > 0

    check = subprocess.run(["promtool", "check", "metrics"], input=after, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_openapi_document_declares_the_statuses(api: httpx.Client):
    document = api.get("/openapi.json").json()
    prediction = document["components"]["schemas"]["Prediction"]
    properties = prediction["properties"]

    assert properties["status"]["enum"] == ["scored", "closed", "inactive"]
    assert "status" in prediction["required"]
    for nullable in ("churn_probability", "risk_band"):
        assert {"type": "null"} in properties[nullable]["anyOf"]
        assert properties[nullable]["description"] == "Null unless status is scored"
    predict = document["paths"]["/predict"]["get"]["responses"]
    assert set(predict) == {"200", "401", "404", "422", "503"}
    assert predict["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Prediction"}
    assert "closed" in predict["200"]["description"] and "inactive" in predict["200"]["description"]
    assert "null" in predict["200"]["description"]
    assert "status unknown" in predict["404"]["description"] and "status stale" in predict["503"]["description"]
    batch = document["paths"]["/predict/batch"]["post"]["responses"]
    assert "404 unknown, 503 stale" in batch["200"]["description"]


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
