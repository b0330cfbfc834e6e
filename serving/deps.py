"""Dependencies the routes declare, as ``Annotated`` aliases."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from churn_common.settings import Settings
from serving.metrics import ServingMetrics
from serving.model_loader import Champion, ChampionHolder
from serving.state import ServingState


def get_state(request: Request) -> ServingState:
    return request.app.state.serving


StateDep = Annotated[ServingState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_metrics(state: StateDep) -> ServingMetrics:
    return state.metrics


def get_holder(state: StateDep) -> ChampionHolder:
    return state.holder


def require_champion(holder: ChampionHolder) -> Champion:
    """Called in the route body, not as a dependency: request validation (422) must come first."""
    champion = holder.current
    if champion is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"no model to serve: {holder.problem}")
    return champion


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServingMetrics, Depends(get_metrics)]
HolderDep = Annotated[ChampionHolder, Depends(get_holder)]
