"""HTTP routes: predictions, health, readiness and metrics."""

from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.routing import APIRoute

from churn_common.errors import FeatureStoreUnavailable
from churn_common.online import OnlineVector
from churn_common.population import Status
from serving.deps import HolderDep, MetricsDep, SettingsDep, StateDep, require_champion
from serving.gateway import AUDIT_FACTS
from serving.lookups import Lookup
from serving.model_loader import Champion
from serving.prediction import (
    check_answerable,
    error_entry,
    population_status,
    prediction_body,
    prediction_json,
    read_vectors,
    score,
)
from serving.prediction_log import PredictionLog
from serving.query import BEARER_SCHEME, USER_ID_OPENAPI, VALIDATION_ERROR_RESPONSE, user_id_of
from serving.schemas import (
    MAX_USER_ID,
    BatchRequest,
    BatchResponse,
    ErrorBody,
    Health,
    ModelRef,
    Prediction,
    PredictionError,
    Readiness,
)
from serving.scoring import Scored
from serving.state import ServingState

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "API token required and missing or wrong"},
    503: {
        "model": ErrorBody,
        "description": "No model loaded, online store unavailable (no answer within the online timeout of the "
        "request's arrival), or the user's features stale (status stale: the platform, not the user, is behind)",
    },
}
_LIMITS: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorBody, "description": "The body did not arrive within the body timeout"},
    413: {"model": ErrorBody, "description": "The body is over the size limit"},
}
_ANSWERED = {
    200: {
        "description": "status scored: churn_probability, risk_band and reasons. status closed (account closed) or "
        "inactive (no activity in the trailing window): outside the scored population, so churn_probability and "
        "risk_band are null, reasons is empty and detail says why"
    }
}
_NOT_FOUND = {404: {"model": ErrorBody, "description": "Unknown user (status unknown): no account online"}}
_BATCH_ANSWERED = {
    200: {
        "description": "One entry per id: a Prediction (status scored, closed or inactive, as /predict answers "
        "with 200) or a PredictionError with the status code /predict would have given (404 unknown, 503 stale, "
        "422 invalid id)"
    }
}
_BATCH_TOO_BIG = {422: {"description": "Invalid body or more ids than the batch limit"}}
_NOT_READY = {503: {"model": Readiness, "description": "Not ready; reasons say why"}}
_EXPOSITION = {200: {"content": {"text/plain": {}}}}


async def _read(
    state: ServingState, champion: Champion, user_ids: Sequence[int], now: datetime, deadline: float
) -> list[OnlineVector]:
    try:
        return await read_vectors(champion, state.metrics, user_ids, now, deadline)
    except FeatureStoreUnavailable as exc:
        raise _unavailable(state, exc) from exc


def _unavailable(state: ServingState, exc: Exception) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, state.redact(str(exc)))


async def look_up(request: Request) -> tuple[Champion, Lookup]:
    """The user the query names, as /predict answers them: the champion's lookup, observed, audited and logged;
    HTTPException for what /predict answers without a body (422 bad id, 404 unknown, 503 stale or no store)."""
    # The state comes straight from the request: a dependency per attribute costs more than the Redis read.
    state: ServingState = request.app.state.serving
    # The online timeout runs from here: waiting for a slot or behind a stalled read counts.
    deadline = state.loop.time() + state.online_timeout_s
    user_id = user_id_of(request.query_params)
    scope = request.scope
    scope[AUDIT_FACTS] = ((user_id,), None, None)
    champion = require_champion(state.holder)
    async with state.slots:
        try:
            found = await state.lookups(champion)(user_id, deadline)
        except FeatureStoreUnavailable as exc:
            raise _unavailable(state, exc) from exc
    state.metrics.observe_status(found.status)
    scope[AUDIT_FACTS] = ((user_id,), champion.version, (found.status.value,))
    check_answerable(found.vector, found.status, found.now)
    if found.scored is not None:
        state.metrics.observe_prediction(found.scored.probability, found.scored.band)
        state.prediction_log.record(champion, found.vector, found.scored, found.now)
    return champion, found


async def predict(request: Request) -> Response:
    champion, found = await look_up(request)
    body = prediction_json(champion, found.vector, found.status, found.scored, found.now)
    return Response(body, media_type="application/json")


async def predict_batch(
    request: Request, body: BatchRequest, state: StateDep, settings: SettingsDep, holder: HolderDep
) -> BatchResponse:
    # From the body's end rather than the request's arrival: reading the body has its own bound.
    deadline = state.loop.time() + state.online_timeout_s
    request.scope[AUDIT_FACTS] = (body.user_ids, None, None)
    if len(body.user_ids) > settings.batch_max_ids:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{len(body.user_ids)} ids requested; at most {settings.batch_max_ids} per batch",
        )
    champion = require_champion(holder)
    now = state.clock()
    valid = [user_id for user_id in body.user_ids if 0 <= user_id <= MAX_USER_ID]
    async with state.slots:
        read = await _read(state, champion, valid, now, deadline) if valid else []
        answers = await _batch_answers(champion, {vector.user_id: vector for vector in read}, now, state.prediction_log)
    entries = [answers.get(user_id) or (None, _invalid(user_id)) for user_id in body.user_ids]
    for user_status, entry in entries:
        if user_status is not None:  # an invalid id is no user: it has no status
            state.metrics.observe_status(user_status)
        if user_status is Status.SCORED:
            state.metrics.observe_prediction(entry.churn_probability, entry.risk_band)
    outcomes = [_INVALID if user_status is None else user_status.value for user_status, _ in entries]
    request.scope[AUDIT_FACTS] = (body.user_ids, champion.version, outcomes)
    return BatchResponse(results=[entry for _, entry in entries])


_INVALID = "invalid"  # an id outside (0, 2**63), in the audit record's outcomes


def _invalid(user_id: int) -> PredictionError:
    return PredictionError(user_id=user_id, status=422, detail="user_id must be in [0, 2**63)")


async def _batch_answers(
    champion: Champion, vectors: dict[int, OnlineVector], now: datetime, log: PredictionLog
) -> dict[int, tuple[Status, Prediction | PredictionError]]:
    """Per user read, the rule's status and the entry /predict would have answered with."""
    answers: dict[int, tuple[Status, Prediction | PredictionError]] = {}
    scorable: list[OnlineVector] = []
    for user_id, vector in vectors.items():
        user_status = population_status(champion, vector)
        try:
            check_answerable(vector, user_status, now)
        except HTTPException as exc:
            answers[user_id] = user_status, error_entry(user_id, exc)
            continue
        if user_status is Status.SCORED:
            scorable.append(vector)
        else:
            answers[user_id] = user_status, _entry(champion, vector, user_status, None, now)
    for vector, result in zip(scorable, await score(champion, scorable), strict=True):
        answers[vector.user_id] = Status.SCORED, _entry(champion, vector, Status.SCORED, result, now)
        log.record(champion, vector, result, now)
    return answers


def _entry(
    champion: Champion, vector: OnlineVector, user_status: Status, scored: Scored | None, now: datetime
) -> Prediction:
    return Prediction.model_validate(prediction_body(champion, vector, user_status, scored, now))


async def health() -> Health:
    return Health()


async def ready(state: StateDep, response: Response) -> Readiness:
    """Whether this pod can serve: a champion loaded and the online store answering. Not how old the features
    are: stale features are every pod's state at once, and taking them all out of the Service would turn the
    defined answer (a 503 per stale user, saying why) into connection errors. Their age is in the body and in
    ``churn_feature_age_seconds``, which the freshness alert watches."""
    champion = state.holder.current
    reasons = [] if champion else [f"no model: {state.holder.problem}"]
    age = None
    if champion is not None:
        try:
            await champion.reader.ping()
            age = await _feature_age(state, champion)
        except FeatureStoreUnavailable as exc:
            reasons.append(str(exc))
    if reasons:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    model = ModelRef(name=champion.name, version=champion.version, alias=champion.alias) if champion else None
    reasons = [state.redact(reason) for reason in reasons]
    return Readiness(ready=not reasons, reasons=reasons, model=model, features_age_seconds=age)


async def _feature_age(state: ServingState, champion: Champion) -> float | None:
    """Seconds since the newest snapshot online; None when the store holds none of this project's."""
    newest = await champion.reader.newest_timestamp()
    if newest is None:
        return None
    age = (state.clock() - newest).total_seconds()
    state.metrics.freshness.set(age)
    return age


async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


class RequestRoute(APIRoute):
    """A route whose endpoint takes the request and returns the response itself. FastAPI documents it and wraps it
    like any route (exception handlers, exit stacks), but with no dependencies to run there is nothing for its
    request handler to do, and that handler still solves the empty dependency graph (parsing headers and cookies,
    building a sub-response) per request: ~14 % of /predict's instructions (callgrind). The API token is checked
    before routing (serving.gateway), so the authenticated API takes this path too."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


def add_routes(app: FastAPI, bearer: bool) -> None:
    """The routes, on the app itself. ``include_router`` would nest them: FastAPI 0.165 matches every request to an
    included router's route through extra layers (~6 % of /predict's instructions, callgrind). Predictions first:
    routes are matched in order, each route tried and missed costs ~6k instructions, and /predict is nearly all of
    the traffic. With ``bearer``, the predictions' operations declare the token serving.gateway requires."""
    add = app.add_api_route
    security = {"security": [{BEARER_SCHEME: []}]} if bearer else {}
    # Through the router: FastAPI.add_api_route does not pass a route class on.
    app.router.add_api_route(
        "/predict",
        predict,
        response_model=Prediction,
        responses=_ANSWERED | _ERRORS | _NOT_FOUND | VALIDATION_ERROR_RESPONSE,
        openapi_extra=USER_ID_OPENAPI | security,
        route_class_override=RequestRoute,
    )
    batch_responses = _BATCH_ANSWERED | _ERRORS | _BATCH_TOO_BIG | _LIMITS
    add("/predict/batch", predict_batch, methods=["POST"], responses=batch_responses, openapi_extra=security)
    add("/health", health)
    add("/ready", ready, responses=_NOT_READY)
    add("/metrics", metrics, response_class=Response, responses=_EXPOSITION)
    # FastAPI registers its documentation routes when the app is built, ahead of these: four misses before /predict
    # (~3 % of its instructions). The sort is stable and no two paths overlap, so nothing else changes.
    app.router.routes.sort(key=lambda route: not getattr(route, "path", "").startswith("/predict"))
