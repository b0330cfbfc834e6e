"""Request and response bodies of the serving API."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

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


class Prediction(BaseModel):
    user_id: int
    churn_probability: float = Field(ge=0, le=1)
    risk_band: str
    reasons: list[Reason]
    model: ModelRef
    features_as_of: datetime | None = Field(description="Newest feature snapshot used for this user")
    feature_service: str


class BatchRequest(BaseModel):
    user_ids: list[int] = Field(min_length=1, description="At most settings.batch_max_ids ids")


class PredictionError(BaseModel):
    user_id: int
    status: int = Field(description="The HTTP status a single /predict for this id would have returned")
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
