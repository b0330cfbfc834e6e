"""/predict's one query parameter, read and validated in the route instead of declared to FastAPI.

Declared as ``user_id: Annotated[int, Query(ge=0, le=MAX_USER_ID)]``, FastAPI's per-request parameter machinery
(solving the parameter, validating it through its model field, collecting errors) costs ~7 % of /predict's
instructions (callgrind, in-process). The same pydantic type validates it here, the error is the
``RequestValidationError`` FastAPI would raise (same 422 body), and the OpenAPI operation declares the parameter
and the 422 exactly as FastAPI generates them; tests/serving/test_query.py holds both to FastAPI's own output.

Stricter than FastAPI in two ways, each a 422 of the same shape: an id is ASCII digits only (FastAPI reads "+1",
" 1", "1_000" and Unicode digits as numbers, where a proxy or a log reader may not), and ``user_id`` given more than
once is refused (FastAPI scores the last one, while whatever reads the first sees another user).
"""

import math
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import validation_error_definition, validation_error_response_definition
from fastapi.responses import JSONResponse
from pydantic import Field, TypeAdapter, ValidationError
from starlette.datastructures import QueryParams

from serving.schemas import MAX_USER_ID

_NAME = "user_id"
_LOCATION = ("query", _NAME)
_DESCRIPTION = "The learner's account id"
UserId = Annotated[int, Field(ge=0, le=MAX_USER_ID, title="User Id", description=_DESCRIPTION)]
_USER_ID = TypeAdapter(UserId)

USER_ID_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": _NAME, "in": "query", "required": True, "schema": _USER_ID.json_schema(), "description": _DESCRIPTION}
    ]
}
VALIDATION_ERROR_RESPONSE: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "Validation Error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
    }
}


_NOT_AN_INTEGER = "Input should be a valid integer, unable to parse string as an integer"
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
BEARER_SCHEME = "HTTPBearer"
_BEARER = {"type": "http", "scheme": "bearer", "description": "Required when the service has API tokens configured"}


def user_id_of(query: QueryParams) -> int:
    values = query.getlist(_NAME)
    if not values:
        raise RequestValidationError([{"type": "missing", "loc": _LOCATION, "msg": "Field required", "input": None}])
    if len(values) > 1:
        msg = f"{_NAME} given {len(values)} times: give it once"
        raise RequestValidationError([{"type": "repeated", "loc": _LOCATION, "msg": msg, "input": values}])
    [raw] = values
    if not (raw.isascii() and raw.isdigit()):
        raise RequestValidationError([{"type": "int_parsing", "loc": _LOCATION, "msg": _NOT_AN_INTEGER, "input": raw}])
    try:
        return _USER_ID.validate_python(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**error, "loc": _LOCATION + error["loc"]} for error in errors]) from exc


async def validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own 422 body, with the inputs it echoes made writable first (each made FastAPI's handler fail
    with a 500): NaN and ±Infinity, which Python's JSON parser accepts and JSON cannot write back, as the words the
    client sent; bytes (a body sent as text/plain) and lone surrogates (JSON's "\ud800"), which have no UTF-8,
    escaped."""
    return JSONResponse({"detail": jsonable_encoder(_writable(exc.errors()))}, status_code=422)


def _writable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE.get(value, "NaN")
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {_writable(key): _writable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_writable(item) for item in value]
    return value


def openapi_with_validation_errors(app: FastAPI, bearer: bool) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` adding the schemas VALIDATION_ERROR_RESPONSE refers to (FastAPI adds them only for routes
    that declare their parameters) and, with ``bearer``, the scheme the guarded operations name (serving.gateway
    checks the token before FastAPI sees the request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            components = FastAPI.openapi(app).setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            schemas.setdefault("ValidationError", validation_error_definition)
            schemas.setdefault("HTTPValidationError", validation_error_response_definition)
            if bearer:
                components.setdefault("securitySchemes", {})[BEARER_SCHEME] = _BEARER
        return app.openapi_schema

    return openapi
