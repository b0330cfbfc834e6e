"""Request and response bodies of the serving API."""

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictInt

from churn_common.population import Status

# Feast keys users by a signed 64-bit integer; anything outside (0, 2**63) cannot name a user.
MAX_USER_ID = 2**63 - 1


class Reason(BaseModel):
    feature: str
    value: float | int | str | None
    direction: Literal["up"]
    contribution: float = Field(description="Drop in churn probability when the feature takes its usual value")


class ModelRef(BaseModel):
    name: str
    version: str
    alias: str


# The statuses /predict answers with 200; an unknown user is a 404 and a stale one a 503 (churn_common.population).
Answered = Literal[Status.SCORED, Status.CLOSED, Status.INACTIVE]


class Today(BaseModel):
    """The user's events so far today (UTC day of the service clock), as the push path keeps them online. Context for
    people: the model does not read it."""

    day: date = Field(description="The day counted: today by the service clock")
    as_of: datetime | None = Field(description="Time of the newest event counted; null: no event yet today")
    active: bool = Field(description="Whether any event today was an activity event")
    events: dict[str, int] = Field(description="Events so far today per event type of the catalogue")
    values: dict[str, float] = Field(description="Sum of today's values per event type that carries a value")


class Prediction(BaseModel):
    """A user's answer. Only ``scored`` users get a probability: the model is trained on the population the rule in
    churn_common.population defines, and closed or long-inactive accounts are outside it."""

    user_id: int
    status: Answered = Field(
        description="scored: in the scored population, probability given; closed: the account is closed; "
        "inactive: no activity in the trailing window (Settings.active_window_days). For closed and inactive, "
        "churn_probability and risk_band are null, reasons is empty and detail says why"
    )
    churn_probability: float | None = Field(ge=0, le=1, description="Null unless status is scored")
    risk_band: str | None = Field(description="Null unless status is scored")
    reasons: list[Reason] = Field(description="Empty unless status is scored")
    # Left out of a scored body rather than null: a scored answer is exactly what it was before statuses existed.
    detail: str | None = Field(
        None, exclude_if=lambda detail: detail is None, description="Why the user is not scored; absent when scored"
    )
    model: ModelRef
    features_as_of: datetime | None = Field(description="Newest feature snapshot used for this user")
    feature_service: str
    # Absent rather than null where the registry has no today view: the answer is then what it was before it.
    today: Today | None = Field(
        None, exclude_if=lambda today: today is None, description="Today's activity so far (not a model input)"
    )


class BatchRequest(BaseModel):
    # Strict: JSON integers only. Lax validation took true, 1.0, "1", "+1", " 1" and "1_000" as ids, where a proxy
    # or a log reader sees something else.
    user_ids: list[StrictInt] = Field(min_length=1, description="At most settings.batch_max_ids ids")


class PredictionError(BaseModel):
    user_id: int
    status: int = Field(
        description="The HTTP status a single /predict for this id would have returned: 404 unknown user, "
        "503 stale features, 422 invalid id"
    )
    detail: str


class BatchResponse(BaseModel):
    results: list[Prediction | PredictionError] = Field(description="One entry per requested id, in order")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    reasons: list[str] = Field(description="Why the service is not ready; empty when it is")
    model: ModelRef | None
    features_age_seconds: float | None


class ErrorBody(BaseModel):
    detail: str


class PushEvent(BaseModel):
    """One event of today, as the validation gate would read it."""

    user_id: StrictInt = Field(ge=0, le=MAX_USER_ID)
    event_type: str = Field(max_length=200, description="An event type of the catalogue")
    event_timestamp: datetime = Field(description="When it happened; UTC when no offset is given. Today, not later")
    value: Annotated[float, Field(allow_inf_nan=False)] | None = Field(
        None, description="Required for the types that carry a value (in the catalogue's range), absent otherwise"
    )


class PushRequest(BaseModel):
    events: list[PushEvent] = Field(min_length=1, description="At most settings.push_max_events events")


class PushedUser(BaseModel):
    user_id: int
    today: Today = Field(description="The user's row after this push, as /predict shows it")


class PushResponse(BaseModel):
    accepted: int = Field(description="Events added")
    users: list[PushedUser] = Field(description="One entry per user of the request, by user id")
