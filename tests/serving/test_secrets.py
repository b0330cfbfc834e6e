"""Secrets that work whatever they hold and never show: a Redis password with the characters Feast's connection
string splits on, end to end through a throwaway password-protected redis-server; credentials in URIs redacted."""

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from feast.infra.online_stores.redis import RedisOnlineStore
from pydantic import SecretStr

from churn_common.feature_frame import service_schema
from churn_common.settings import Settings
from churn_common.store import feature_store, repo_config
from products.elearning import FEATURE_SERVICE
from serving.redaction import Redactor, redactor_for
from tests.conftest import unique_name
from tests.serving.conftest import app_client, redis_server
from tests.serving.expected import expected_prediction
from tests.serving.world import FRESH_USERS, World, free_port, make_world

PASSWORD = "p,a=ss@%"
PASSWORDS = [
    PASSWORD,
    "x,db=5",  # selected db 5 instead of the configured one
    "a,b",  # "b" became a Redis node
    "123",  # read as JSON: the number 123
    "true",
    "null",  # read as JSON: no password at all
    '"quoted"',
    'back\\slash"quote',  # break the YAML the string is substituted into
    "new\nline",
    " spaced ",
    "ünï✓😀",
    "%41%2C",  # percent-encoded text is not decoded by anyone
]


@pytest.mark.parametrize("password", PASSWORDS)
def test_feast_reads_back_exactly_the_redis_password_and_db(password: str):
    settings = Settings(feast_profile="redis", redis_db=11, redis_password=SecretStr(password))

    nodes, options = RedisOnlineStore._parse_connection_string(repo_config(settings).online_store.connection_string)

    assert nodes == [{"host": "127.0.0.1", "port": "6379"}]
    assert options == {"db": 11, "password": password}


def test_uri_credentials_and_known_secrets_are_masked_in_any_spelling():
    redact = Redactor(["s3cr@t/pw", "tok-123"])
    text = (
        "API request to http://alice:s3cr%40t%2Fpw@mlflow:5000/api failed; "
        "retrying https://bob:other@host/x and postgresql+psycopg://feast:pg-pw@db:5432/feast; "
        "password s3cr@t/pw, token tok-123, encoded s3cr%40t%2Fpw; no userinfo in http://host:80/path?a=b@c"
    )

    assert redact(text) == (
        "API request to http://***@mlflow:5000/api failed; "
        "retrying https://***@host/x and postgresql+psycopg://***@db:5432/feast; "
        "password ***, token ***, encoded ***; no userinfo in http://host:80/path?a=b@c"
    )


def test_the_api_redacts_every_secret_the_settings_hold():
    settings = Settings(
        mlflow_tracking_uri="http://alice:ml-pw-1@mlflow:5000",
        registry_url="postgresql+psycopg://feast:reg-pw-2@db/feast",
        redis_password=SecretStr("redis-pw-3"),
        api_token=SecretStr("tok-4"),
        api_tokens=SecretStr(json.dumps({"crm": "tok-5"})),
    )
    said = "ml-pw-1 reg-pw-2 redis-pw-3 tok-4 tok-5"

    assert redactor_for(settings)(said) == "*** *** *** *** ***"


@pytest.fixture(scope="module")
def protected(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A world materialised (through Feast) into a redis-server whose password Feast's string would split."""
    root: Path = tmp_path_factory.mktemp("protected")
    port = free_port()
    with redis_server(port, root, password=PASSWORD):
        yield make_world(
            root,
            unique_name("srvpw"),
            11,
            redis_port=port,
            redis_password=PASSWORD,
            tracking_uri=world.settings.tracking_uri,
        )


@pytest.mark.redis
def test_a_password_with_separators_works_end_to_end_and_never_shows(
    world: World, protected: World, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    user = FRESH_USERS[0]
    schema = service_schema(feature_store(protected.settings).get_feature_service(FEATURE_SERVICE))
    with app_client(protected.settings) as client:
        served = client.get("/predict", params={"user_id": user})
        # The server's password changes and its connections drop: the API's reconnection is refused.
        redis.Redis(port=protected.settings.redis_port, password=PASSWORD).config_set("requirepass", "rotated")
        redis.Redis(port=protected.settings.redis_port, password="rotated").client_kill_filter(_type="normal")
        ready = client.get("/ready")
        refused = client.get("/predict", params={"user_id": user})

    assert served.status_code == 200, served.text
    expected = expected_prediction(world.model, schema, protected.snapshots, user)
    assert served.json()["churn_probability"] == pytest.approx(expected["probability"], abs=1e-9)
    assert ready.status_code == 503 and "WRONGPASS" in ready.json()["reasons"][0]
    assert refused.status_code == 503
    shown = [served.text, refused.text, ready.text, caplog.text, *(record.getMessage() for record in caplog.records)]
    for spelling in (PASSWORD, "p%2Ca%3Dss%40%25", json.dumps(PASSWORD), "p\\u002ca=ss@%", "a=ss@%"):
        assert not any(spelling in text for text in shown), spelling
