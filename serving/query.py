"""/predict's one query parameter, read and validated in the route instead of declared to FastAPI.

Declared as ``user_id: Annotated[int, Query(gt=0, le=MAX_USER_ID)]``, FastAPI's per-request parameter machinery
(solving the parameter, validating it through its model field, collecting errors) costs ~7 % of /predict's
instructions (callgrind, in-process). The same pydantic type validates it here, the error is the
``RequestValidationError`` FastAPI would raise (same 422 body), and the OpenAPI operation declares the parameter
and the 422 exactly as FastAPI generates them; tests/serving/test_query.py holds both to FastAPI's own output.
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import validation_error_definition, validation_error_response_definition
from pydantic import Field, TypeAdapter, ValidationError
from starlette.datastructures import QueryParams

from serving.schemas import MAX_USER_ID

_NAME = "user_id"
_LOCATION = ("query", _NAME)
_DESCRIPTION = "The learner's account id"
UserId = Annotated[int, Field(gt=0, le=MAX_USER_ID, title="User Id", description=_DESCRIPTION)]
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


def user_id_of(query: QueryParams) -> int:
    raw = query.get(_NAME)
    if raw is None:
        raise RequestValidationError([{"type": "missing", "loc": _LOCATION, "msg": "Field required", "input": None}])
    try:
        return _USER_ID.validate_python(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**error, "loc": _LOCATION + error["loc"]} for error in errors]) from exc


def openapi_with_validation_errors(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` adding the schemas VALIDATION_ERROR_RESPONSE refers to: FastAPI adds them only for routes
    that declare their parameters."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = FastAPI.openapi(app).setdefault("components", {}).setdefault("schemas", {})
            schemas.setdefault("ValidationError", validation_error_definition)
            schemas.setdefault("HTTPValidationError", validation_error_response_definition)
        return app.openapi_schema

    return openapi
