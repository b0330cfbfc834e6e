"""/predict reads ``user_id`` by hand (serving/query.py): held to what FastAPI itself does with the idiomatic
declaration, in answers (value or 422 body) and in the OpenAPI document, except where it is stricter on purpose: an
id is ASCII digits (FastAPI's lenient readings of "+7", " 7", "1_000", "7.0" and "-5" are FastAPI's own
"not an integer" 422 here), and a repeated ``user_id`` is a 422 of its own."""

import asyncio
from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI, Query, Request

from churn_common.settings import Settings
from serving.app import create_app
from serving.query import user_id_of
from serving.schemas import MAX_USER_ID

reference = FastAPI()
by_hand = FastAPI()


@reference.get("/predict")
def declared(user_id: Annotated[int, Query(ge=0, le=MAX_USER_ID, description="The learner's account id")]) -> int:
    return user_id


@by_hand.get("/predict")
def read_by_hand(request: Request) -> int:
    return user_id_of(request.query_params)


# Answered exactly as FastAPI answers them.
SAME = [
    "user_id=7",
    f"user_id={MAX_USER_ID}",
    "user_id=007",
    "",
    "other=1",
    "user_id=",
    "user_id=abc",
    "user_id=0",
    "user_id=1.5",
    "user_id=1e3",
    f"user_id={MAX_USER_ID + 1}",
    "user_id=%D9%A3",  # ARABIC-INDIC DIGIT THREE
    "user_id=" + "9" * 5000,
]
# Not ASCII digits, which FastAPI reads as numbers (or, for -5, as a number out of range).
NOT_DIGITS = {
    "user_id=%2B7": "+7",
    "user_id=%207": " 7",  # a leading space
    "user_id=7%20": "7 ",
    "user_id=1_000": "1_000",
    "user_id=7.0": "7.0",
    "user_id=-5": "-5",
}
REPEATED = {"user_id=1&user_id=2": ["1", "2"], "user_id=x&user_id=3": ["x", "3"], "user_id=3&user_id=3": ["3", "3"]}


async def get_from_both(url: str) -> list[httpx.Response]:
    responses = []
    for app in (reference, by_hand):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            responses.append(await client.get(url))
    return responses


@pytest.mark.parametrize("query", SAME)
def test_user_id_is_read_as_fastapi_reads_a_declared_query_parameter(query: str):
    expected, got = asyncio.run(get_from_both(f"/predict?{query}"))
    assert (got.status_code, got.json()) == (expected.status_code, expected.json())


@pytest.mark.parametrize(("query", "raw"), NOT_DIGITS.items())
def test_an_id_that_is_not_ascii_digits_is_fastapis_not_an_integer_422(query: str, raw: str):
    reference_error, _ = asyncio.run(get_from_both("/predict?user_id=abc"))
    [not_an_integer] = reference_error.json()["detail"]

    _, got = asyncio.run(get_from_both(f"/predict?{query}"))

    assert got.status_code == 422
    assert got.json() == {"detail": [{**not_an_integer, "input": raw}]}


@pytest.mark.parametrize(("query", "values"), REPEATED.items())
def test_a_repeated_user_id_is_a_422_naming_every_value(query: str, values: list[str]):
    reference_error, _ = asyncio.run(get_from_both("/predict?user_id=abc"))
    _, got = asyncio.run(get_from_both(f"/predict?{query}"))

    assert got.status_code == 422
    [error] = got.json()["detail"]
    assert error == {
        "type": "repeated",
        "loc": ["query", "user_id"],
        "msg": "user_id given 2 times: give it once",
        "input": values,
    }
    # The fields of FastAPI's own validation errors, no more.
    assert set(error) == set(reference_error.json()["detail"][0])


def test_the_openapi_document_declares_user_id_as_fastapi_would():
    expected = reference.openapi()
    document = create_app(Settings()).openapi()
    operation = document["paths"]["/predict"]["get"]
    expected_operation = expected["paths"]["/predict"]["get"]

    assert operation["parameters"] == expected_operation["parameters"]
    assert operation["responses"]["422"] == expected_operation["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        assert document["components"]["schemas"][name] == expected["components"]["schemas"][name]
