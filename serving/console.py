"""The support console: a page for support agents at /console, and the two reads it makes.

The page and its assets hold no data and load without a token (a browser cannot send one on navigation); every
read it makes goes through the same guards as /predict. A lookup is /predict's own answer (the same gathered
lookup, population rule and model) with the reasons in plain words (churn_common.reasons, as the batch high-risk
list words them), how old the features are, and the user's recent daily snapshots from the offline store.
"""

import asyncio
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from churn_common.catalog import feature_descriptions
from churn_common.reasons import plain_reason
from serving.deps import StateDep
from serving.gateway import CONSOLE_HIGH_RISK_PATH, CONSOLE_USER_PATH
from serving.history import Activity, HighRiskPage, high_risk_page, read_activity
from serving.prediction import prediction_body
from serving.query import BEARER_SCHEME, USER_ID_OPENAPI, VALIDATION_ERROR_RESPONSE
from serving.routes import look_up
from serving.schemas import ErrorBody, Prediction
from serving.state import ServingState

PAGE = Path(__file__).parent / "console"
HIGH_RISK_PAGE_MAX = 100
ACTIVITY_DAYS = 30


class ConsoleUser(BaseModel):
    prediction: Prediction = Field(description="What /predict answers for the user")
    reasons: list[str] = Field(description="The prediction's reasons in plain words, strongest first")
    now: datetime = Field(description="The instant the answer was given at (the service clock)")
    features_age_seconds: float | None = Field(description="How old the user's newest features are")
    activity: Activity


_LOOKUP_ERRORS = {
    404: {"model": ErrorBody, "description": "Unknown user: no account online"},
    503: {"model": ErrorBody, "description": "No model, online store unavailable, or the user's features stale"},
}


async def console_user(request: Request) -> ConsoleUser:
    """One user as a support agent sees them."""
    champion, found = await look_up(request)
    state: ServingState = request.app.state.serving
    catalog = state.settings.event_catalog()
    descriptions, typical = feature_descriptions(catalog), champion.model.reference_values
    reasons = [plain_reason(r, descriptions, typical) for r in (found.scored.reasons if found.scored else ())]
    as_of = found.vector.as_of
    activity = await asyncio.to_thread(
        read_activity, state.settings.paths, catalog, found.vector.user_id, found.now, ACTIVITY_DAYS
    )
    body = prediction_body(champion, found.vector, found.status, found.scored, found.now)
    return ConsoleUser(
        prediction=Prediction.model_validate(body),
        reasons=reasons,
        now=found.now,
        features_age_seconds=None if as_of is None else (found.now - as_of).total_seconds(),
        activity=activity,
    )


async def high_risk(
    state: StateDep,
    q: Annotated[str, Query(max_length=100, description="A user id prefix, or words of the reasons")] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=HIGH_RISK_PAGE_MAX)] = 20,
) -> HighRiskPage:
    """A page of the newest high-risk list batch scoring wrote (on or before today by the service clock)."""
    today: date = state.clock().date()
    return await asyncio.to_thread(high_risk_page, state.settings.paths, today, q, page, page_size)


async def console_page() -> FileResponse:
    return FileResponse(PAGE / "index.html", media_type="text/html")


def add_console(app: FastAPI, bearer: bool) -> None:
    """The page, its assets, and its reads (behind serving.gateway's tokens, as /predict; ``bearer``: declared)."""
    security = {"security": [{BEARER_SCHEME: []}]} if bearer else {}
    user_responses = _LOOKUP_ERRORS | VALIDATION_ERROR_RESPONSE
    app.add_api_route(
        CONSOLE_USER_PATH, console_user, tags=["console"], responses=user_responses,
        openapi_extra=USER_ID_OPENAPI | security,
    )  # fmt: skip
    app.add_api_route(CONSOLE_HIGH_RISK_PATH, high_risk, tags=["console"], openapi_extra=security)
    app.add_api_route("/console", console_page, include_in_schema=False)
    app.mount("/console/assets", StaticFiles(directory=PAGE / "assets"), name="console-assets")
