"""``POST /events``: today's events pushed into the user's ``user_activity_today`` row online, so that the next
``/predict`` shows them (serving.push writes; transformations.today computes). Behind the same bearer tokens and
audit as ``/predict``. A request is checked whole before anything is written: one bad event and nothing is."""

import logging
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from fastapi import FastAPI, HTTPException, Request, status

from churn_common.errors import FeatureStoreUnavailable
from serving.deps import SettingsDep, StateDep
from serving.gateway import AUDIT_FACTS, EVENTS_PATH
from serving.push import LaterDay, Pusher, PushRefused
from serving.query import BEARER_SCHEME
from serving.schemas import ErrorBody, PushedUser, PushEvent, PushRequest, PushResponse, Today
from serving.state import ServingState
from transformations.today import TS_US_UTC, push_problems, today_rows

logger = logging.getLogger(__name__)

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "API token required and missing or wrong"},
    409: {"model": ErrorBody, "description": "The online store holds a later day's row for a user of the request"},
    422: {
        "description": "Invalid body, more events than the limit, an event the gate's rules refuse (unknown type, "
        "value missing, out of range or not allowed, in the future, not of today), an unknown user or one whose "
        "account closed before the event: nothing of the request was written"
    },
    503: {
        "model": ErrorBody,
        "description": "No today view registered, or the online store did not answer within the push timeout (the "
        "push may then have been applied: retrying it may count its events twice)",
    },
}
_PUSHED = "pushed"  # the audit record's outcome per user


def event_columns(events: list[PushEvent]) -> pa.Table:
    """Pushed events as the validation gate's columns (`churn push` reads JSON lines through this too)."""
    stamps = [_utc(event.event_timestamp) for event in events]
    return pa.table(
        {
            "user_id": pa.array([event.user_id for event in events], pa.int64()),
            "event_timestamp": pa.array(stamps, TS_US_UTC),
            "event_type": pa.array([event.event_type for event in events], pa.string()),
            "value": pa.array([event.value for event in events], pa.float64()),
        }
    )


def events_table(events: list[PushEvent], now: datetime) -> pa.Table:
    """The request's events as the validation gate would have them, ingested now."""
    return event_columns(events).append_column("ingested_at", pa.array([now] * len(events), TS_US_UTC))


def _utc(moment: datetime) -> datetime:
    # Naive times are UTC, as the gate reads naive strings.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _pusher(state: ServingState) -> Pusher:
    if state.pusher is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "no user_activity_today view registered: run `churn features apply`"
        )
    return state.pusher


async def push_events(request: Request, body: PushRequest, state: StateDep, settings: SettingsDep) -> PushResponse:
    """Add today's events to each user's today row online; the rows written come back."""
    # From the body's end, with its own bound: a push that timed out may still have been applied, and a client
    # retrying it counts its events twice, so it gets more time than a read.
    deadline = state.loop.time() + settings.push_timeout_ms / 1000
    users = sorted({event.user_id for event in body.events})
    request.scope[AUDIT_FACTS] = (users, None, None)
    if len(body.events) > settings.push_max_events:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{len(body.events)} events sent; at most {settings.push_max_events} per request",
        )
    pusher = _pusher(state)
    now = state.clock()
    events = events_table(body.events, now)
    problems = push_problems(events, pusher.catalog, now)
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "; ".join(problems[:20]))
    rows = await _write(state, pusher, today_rows(events, pusher.catalog), now, deadline)
    request.scope[AUDIT_FACTS] = (users, None, [_PUSHED] * len(users))
    pushed = [PushedUser(user_id=user, today=Today(**pusher.presenter.body(row, now))) for user, row in rows]
    return PushResponse(accepted=len(body.events), users=pushed)


async def _write(state: ServingState, pusher: Pusher, rows: pa.Table, now: datetime, deadline: float) -> list:
    try:
        written = await pusher.writer.add(rows, now.date(), deadline)
    except LaterDay as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except PushRefused as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    except FeatureStoreUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, state.redact(str(exc))) from exc
    logger.debug("pushed %d rows", len(written))
    return list(zip(rows["user_id"].to_pylist(), written, strict=True))


def add_event_routes(app: FastAPI, bearer: bool) -> None:
    security = {"security": [{BEARER_SCHEME: []}]} if bearer else {}
    app.add_api_route(
        EVENTS_PATH, push_events, methods=["POST"], responses=_RESPONSES, openapi_extra=security, tags=["push"]
    )
