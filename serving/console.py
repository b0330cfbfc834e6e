"""The support console: a page for support agents at /console, and the two reads it makes.

The page and its assets hold no data and load without a token (a browser cannot send one on navigation); every
read it makes goes through the same guards as /predict. A lookup is /predict's own answer (the same gathered
lookup, population rule and model) with the reasons in plain words (churn_common.reasons, as the batch high-risk
list words them), how old the features are, and the user's recent daily snapshots from the offline store.
"""

import asyncio
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Query, params, status
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from churn_common.catalog import feature_descriptions
from churn_common.errors import FeatureStoreUnavailable
from churn_common.reasons import plain_reason
from serving.deps import StateDep, require_champion
from serving.history import Activity, HighRiskPage, high_risk_page, read_activity
from serving.prediction import check_answerable, prediction_body
from serving.query import UserId
from serving.schemas import ErrorBody, Prediction

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


async def console_user(user_id: Annotated[UserId, Query()], state: StateDep) -> ConsoleUser:
    """One user as a support agent sees them."""
    champion = require_champion(state.holder)
    async with state.slots:
        try:
            found = await state.lookups(champion)(user_id)
        except FeatureStoreUnavailable as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    check_answerable(found.vector, found.status, found.now)
    if found.scored is not None:
        state.prediction_log.record(champion, found.vector, found.scored, found.now)
    catalog = state.settings.event_catalog()
    descriptions, typical = feature_descriptions(catalog), champion.model.reference_values
    reasons = [plain_reason(r, descriptions, typical) for r in (found.scored.reasons if found.scored else ())]
    as_of = found.vector.as_of
    activity = await asyncio.to_thread(read_activity, state.settings.paths, catalog, user_id, found.now, ACTIVITY_DAYS)
    return ConsoleUser(
        prediction=Prediction.model_validate(prediction_body(champion, found.vector, found.status, found.scored)),
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


def add_console(app: FastAPI, guards: Sequence[params.Depends]) -> None:
    """The page, its assets, and its reads (behind ``guards``, as /predict)."""
    api = APIRouter(prefix="/console/api", tags=["console"], dependencies=list(guards))
    api.add_api_route("/user", console_user, methods=["GET"], responses=_LOOKUP_ERRORS)
    api.add_api_route("/high-risk", high_risk, methods=["GET"])
    app.include_router(api)
    app.add_api_route("/console", console_page, methods=["GET"], include_in_schema=False)
    app.mount("/console/assets", StaticFiles(directory=PAGE / "assets"), name="console-assets")
