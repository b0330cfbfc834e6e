"""No input produces a 500, and every answer is JSON that a strict parser reads: a hand-written list of nasty
bodies and queries against the served app (a token configured, so each request goes the whole way)."""

import json
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from tests.serving.conftest import app_client
from tests.serving.world import FRESH_USERS, World

pytestmark = pytest.mark.redis
TOKEN = "nasty-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}

NON_FINITE = {
    b'{"user_ids": [NaN]}': "NaN",
    b'{"user_ids": [Infinity]}': "Infinity",
    b'{"user_ids": [-Infinity]}': "-Infinity",
    b'{"user_ids": [1e999]}': "Infinity",  # a finite-looking literal Python's parser makes infinite
    b'{"user_ids": [1, NaN, 2]}': "NaN",
}
# JSON values that are not ids: each was read as one by lax validation, or is no integer at all.
NOT_IDS = [b"true", b"false", b"1.0", b"1e3", b'"1"', b'"1_000"', b'"+1"', b'" 1"', b"null", b"[1]", b"{}"]
# Anything else a client might send; each must get a 4xx (or a 200 where it is a valid request).
NASTY = [
    b"",
    b"{}",
    b"[]",
    b"null",
    b'"user_ids"',
    b'{"user_ids": NaN}',
    b'{"user_ids": {}}',
    b'{"user_ids": [',
    b'{"user_ids": [1]} trailing',
    b'{"user_ids": [1], "user_ids": [2]}',
    b"\xff\xfe\x00\x00",
    '\ufeff{"user_ids": [1]}'.encode(),
    b"[" * 100_000 + b"]" * 100_000,
    b'{"user_ids": [1' + b"0" * 5000 + b"]}",
    b'{"user_ids": [18446744073709551616, -1, 0]}',
    b'{"user_ids": ["\\ud800"]}',
    b'{"user_ids": {"\\udfff": 1}}',
    b'{"\\u0000": 1, "user_ids": [1]}',
]
QUERIES = ["user_id=NaN", "user_id=Infinity", "user_id=%00", "user_id=%ff", "user_id=1%00", "user_id=" + "1" * 8000]


def strict_json(response: httpx.Response):
    """The body as JSON, refusing NaN and Infinity, which JSON has no word for."""

    def refuse(constant: str):
        raise ValueError(f"{constant} in a response body")

    return json.loads(response.content, parse_constant=refuse)


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[httpx.Client]:
    with app_client(world.settings.model_copy(update={"api_token": SecretStr(TOKEN)})) as api:
        yield api


def post(client: httpx.Client, body: bytes, headers: dict[str, str] = JSON) -> httpx.Response:
    return client.post("/predict/batch", content=body, headers={**AUTH, **headers})


@pytest.mark.parametrize(("body", "word"), NON_FINITE.items())
def test_non_finite_numbers_are_a_422_that_names_them(client: httpx.Client, body: bytes, word: str):
    response = post(client, body)

    assert response.status_code == 422, response.text
    [error] = strict_json(response)["detail"]
    assert error["type"] == "int_type" and error["input"] == word
    assert error["loc"][:2] == ["body", "user_ids"]


@pytest.mark.parametrize("value", NOT_IDS)
def test_a_batch_id_is_a_json_integer(client: httpx.Client, value: bytes):
    response = post(client, b'{"user_ids": [%d, %s]}' % (FRESH_USERS[0], value))

    assert response.status_code == 422, response.text
    [error] = strict_json(response)["detail"]
    assert error["loc"] == ["body", "user_ids", 1]


@pytest.mark.parametrize("body", NASTY, ids=lambda body: repr(body[:40]))
def test_nasty_bodies_never_get_a_500(client: httpx.Client, body: bytes):
    for headers in (JSON, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}):
        response = post(client, body, headers)
        assert 200 <= response.status_code < 500, (headers, response.status_code, response.text[:300])
        strict_json(response)


@pytest.mark.parametrize("query", QUERIES)
def test_nasty_queries_never_get_a_500(client: httpx.Client, query: str):
    response = client.get(f"/predict?{query}", headers=AUTH)

    assert response.status_code == 422, response.text[:300]
    assert strict_json(response)["detail"][0]["loc"] == ["query", "user_id"]
