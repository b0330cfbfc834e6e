"""Named API tokens (JSON or a mounted file), checked before a body is read, and the audit record of every
prediction request: who (token id), what (user ids), with which model, and what came of it; never a token or a
feature value."""

import json
import logging
import socket
from pathlib import Path

import pytest
from pydantic import SecretStr

from churn_common.errors import ConfigurationError
from churn_common.settings import Settings
from serving.auth import load_tokens
from serving.logs import JsonFormatter
from tests.serving.conftest import app_client
from tests.serving.world import FRESH_USERS, STALE_USERS, UNKNOWN_USER, World

pytestmark = pytest.mark.redis
NAMED = {"crm": "tok-crm-4f1d", "support": "tok-support-9a2c"}
LEGACY = "tok-legacy-77e0"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    """The audit records as churn serve writes them: JSON lines."""
    formatter = JsonFormatter(lambda text: text)
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "churn.audit"]


@pytest.fixture
def audited(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="churn.audit")
    return caplog


def test_every_named_token_is_accepted_and_each_request_is_audited_with_its_id(world: World, audited):
    secured = world.settings.model_copy(
        update={"api_tokens": SecretStr(json.dumps(NAMED)), "api_token": SecretStr(LEGACY)}
    )
    user = FRESH_USERS[0]
    with app_client(secured) as client:
        answers = [
            client.get("/predict", params={"user_id": user}, headers=bearer(t)) for t in (*NAMED.values(), LEGACY)
        ]
        wrong = client.get("/predict", params={"user_id": user}, headers=bearer("tok-crm-4f1"))
        missing = client.post("/predict/batch", json={"user_ids": [user]})
        batch = client.post(
            "/predict/batch", json={"user_ids": [user, -1, STALE_USERS[0], UNKNOWN_USER]}, headers=bearer(NAMED["crm"])
        )
        later = [
            client.get("/predict", params={"user_id": u}, headers=bearer(NAMED["support"])) for u in (UNKNOWN_USER, "x")
        ]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert (wrong.status_code, missing.status_code, batch.status_code) == (401, 401, 200)
    assert [response.status_code for response in later] == [404, 422]
    assert (wrong.json(), missing.json()) == ({"detail": "invalid bearer token"}, {"detail": "missing bearer token"})
    version = answers[0].json()["model"]["version"]
    records = audit_lines(audited)
    fields = [{k: v for k, v in r.items() if k not in ("time", "level", "logger", "message")} for r in records]
    single = {"endpoint": "/predict", "status": 200, "user_ids": [user], "model_version": version}
    assert fields == [
        {**single, "token_id": "crm", "outcomes": ["scored"]},
        {**single, "token_id": "support", "outcomes": ["scored"]},
        {**single, "token_id": "default", "outcomes": ["scored"]},
        {"endpoint": "/predict", "token_id": None, "status": 401, "user_ids": None, "model_version": None,
         "outcomes": None},
        {"endpoint": "/predict/batch", "token_id": None, "status": 401, "user_ids": None, "model_version": None,
         "outcomes": None},
        {"endpoint": "/predict/batch", "token_id": "crm", "status": 200,
         "user_ids": [user, -1, STALE_USERS[0], UNKNOWN_USER], "model_version": version,
         "outcomes": ["scored", "invalid", "stale", "unknown"]},
        {"endpoint": "/predict", "token_id": "support", "status": 404, "user_ids": [UNKNOWN_USER],
         "model_version": version, "outcomes": ["unknown"]},
        {"endpoint": "/predict", "token_id": "support", "status": 422, "user_ids": None, "model_version": None,
         "outcomes": None},
    ]  # fmt: skip
    assert all(r["message"] == "prediction request" and r["logger"] == "churn.audit" for r in records)
    logged = "\n".join(json.dumps(r) for r in records)
    assert not any(token in logged for token in (*NAMED.values(), LEGACY))
    # No feature value: the scored answer's reasons carry them, the audit line does not.
    assert all(str(reason["value"]) not in json.dumps(records[0]) for reason in answers[0].json()["reasons"])


def test_tokens_can_come_from_a_mounted_file(world: World, tmp_path: Path, audited):
    secret = tmp_path / "api-tokens.json"
    secret.write_text(json.dumps(NAMED))
    with app_client(world.settings.model_copy(update={"api_tokens": SecretStr(str(secret))})) as client:
        ok = client.get("/predict", params={"user_id": FRESH_USERS[1]}, headers=bearer(NAMED["support"]))
        refused = client.get("/predict", params={"user_id": FRESH_USERS[1]}, headers=bearer(LEGACY))

    assert (ok.status_code, refused.status_code) == (200, 401)
    assert [r["token_id"] for r in audit_lines(audited)] == ["support", None]


def test_the_token_is_checked_before_the_body_is_read(world: World):
    """A 300 MB body declared and never sent: the 401 comes at once, without waiting for (or reading) a byte of it."""
    secured = world.settings.model_copy(update={"api_tokens": SecretStr(json.dumps(NAMED))})
    with app_client(secured) as client, socket.create_connection(_address(client), timeout=10) as sock:
        sock.sendall(b"POST /predict/batch HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n")
        sock.sendall(b"content-length: 300000000\r\n\r\n")
        response = sock.recv(65536)

    assert response.startswith(b"HTTP/1.1 401 "), response
    assert b"\r\nwww-authenticate: Bearer\r\n" in response
    assert response.endswith(b'{"detail": "missing bearer token"}')


def _address(client) -> tuple[str, int]:
    return client.base_url.host, client.base_url.port


def test_the_openapi_document_declares_the_bearer_scheme_only_when_tokens_are_configured(world: World):
    with app_client(world.settings.model_copy(update={"api_tokens": SecretStr(json.dumps(NAMED))})) as client:
        secured = client.get("/openapi.json").json()
    with app_client(world.settings) as client:
        open_api = client.get("/openapi.json").json()

    assert secured["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Required when the service has API tokens configured",
    }
    for path, method in (("/predict", "get"), ("/predict/batch", "post")):
        assert secured["paths"][path][method]["security"] == [{"HTTPBearer": []}]
        assert "security" not in open_api["paths"][path][method]
    assert "securitySchemes" not in open_api["components"]
    # The health and metrics endpoints stay open for probes and scrapers.
    assert "security" not in secured["paths"]["/ready"]["get"]


@pytest.mark.parametrize(
    ("tokens", "words"),
    [
        ('{"crm": "same-token", "support": "same-token"}', "share one token"),
        ('{"crm": ""}', "non-empty"),
        ('{"crm": 12345678}', "non-empty string token"),
        ('["crm", "not-a-map"]', "JSON object"),
        ('{"crm": "tok-crm-4f1d",}', "is not JSON"),
        ('{"default": "tok-x"}', "'default'"),
        ("/nonexistent/api-tokens.json", "cannot read the token file"),
    ],
)
def test_bad_token_configuration_is_a_clear_error_that_never_quotes_a_token(tokens: str, words: str):
    settings = Settings(api_tokens=SecretStr(tokens), api_token=SecretStr(LEGACY))
    with pytest.raises(ConfigurationError, match=words) as failure:
        load_tokens(settings)
    for token in ("same-token", "tok-crm-4f1d", "tok-x", "12345678", LEGACY):
        assert token not in str(failure.value)


def test_without_tokens_the_api_is_open(world: World, audited):
    with app_client(world.settings) as client:
        response = client.get("/predict", params={"user_id": FRESH_USERS[2]})

    assert response.status_code == 200
    [record] = audit_lines(audited)
    assert record["token_id"] is None and record["outcomes"] == ["scored"]


def test_the_console_page_is_open_and_its_reads_need_a_token(world: World, audited):
    """The page and its assets hold no data (a browser cannot send a bearer token on navigation); what it reads
    (a user's answer, the high-risk list) is guarded and audited as /predict is."""
    user = FRESH_USERS[0]
    with app_client(world.settings.model_copy(update={"api_tokens": SecretStr(json.dumps(NAMED))})) as client:
        page, script = client.get("/console"), client.get("/console/assets/console.js")
        reads = [client.get("/console/api/user", params={"user_id": user}), client.get("/console/api/high-risk")]
        allowed = client.get("/console/api/user", params={"user_id": user}, headers=bearer(NAMED["support"]))
    assert (page.status_code, script.status_code) == (200, 200) and "<form" in page.text
    assert [r.status_code for r in reads] == [401, 401]
    assert allowed.status_code == 200 and allowed.json()["prediction"]["status"] == "scored"
    console = [r for r in audit_lines(audited) if r["endpoint"] == "/console/api/user" and r["status"] == 200]
    assert [(r["token_id"], r["user_ids"], r["outcomes"]) for r in console] == [("support", [user], ["scored"])]
