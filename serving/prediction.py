"""From online vectors to predictions: the population rule, scoring, reasons and the response body."""

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fastapi import HTTPException, status
from pydantic_core import to_json

from churn_common.online import OnlineVector
from churn_common.population import Status
from serving.metrics import ServingMetrics
from serving.model_loader import Champion
from serving.schemas import PredictionError
from serving.scoring import Scored


async def read_vectors(
    champion: Champion, metrics: ServingMetrics, user_ids: Sequence[int], now: datetime, deadline: float | None = None
) -> list[OnlineVector]:
    """The users' vectors through the champion's reader by ``deadline`` (event-loop time; None: the reader's
    timeout), with the read's latency and the vectors observed."""
    started = time.perf_counter()
    vectors = await champion.reader.read(user_ids, now, deadline)
    metrics.online_read.observe(time.perf_counter() - started)
    metrics.observe_vectors(vectors, now)
    return vectors


def population_status(champion: Champion, vector: OnlineVector) -> Status:
    """The population rule on an online vector. The snapshot is fresh when no view is stale or missing: the views
    share one snapshot row, and the account view (no ttl) decides first, as unknown or closed."""
    account, activity = champion.rule.reads
    return champion.rule.status(vector.features[account], vector.usable, vector.features[activity])


def check_answerable(vector: OnlineVector, user_status: Status, now: datetime) -> None:
    """Raise the HTTP error of a user /predict answers without a body: unknown (404) or stale (503)."""
    if user_status is Status.UNKNOWN:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {vector.user_id} is unknown: no account online")
    if user_status is Status.STALE:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, _stale_detail(vector, now))


def _stale_detail(vector: OnlineVector, now: datetime) -> str:
    problems = [f"{', '.join(vector.stale_views)} outside their ttl"] if vector.stale_views else []
    problems += [f"no row in {', '.join(vector.missing_views)}"] if vector.missing_views else []
    newest = "" if vector.as_of is None else f"; newest feature time {vector.as_of.isoformat()}"
    return f"features of user {vector.user_id} are stale at {now.isoformat()}: {'; '.join(problems)}{newest}"


async def score(champion: Champion, vectors: Sequence[OnlineVector]) -> list[Scored]:
    """Scores with reasons. A champion's results are cached by the exact model inputs, which fully decide them."""
    cache = champion.scores
    if not cache.enabled:
        return await champion.scorer.score(vectors)
    keys = [champion.model_inputs(vector.features) for vector in vectors]
    cached = [cache.get(key) for key in keys]
    todo = [i for i, result in enumerate(cached) if result is None]
    fresh: dict[int, Scored] = {}
    if todo:
        computed = await champion.scorer.score([vectors[i] for i in todo])
        for i, scored in zip(todo, computed, strict=True):
            cache.put(keys[i], scored)
            fresh[i] = scored
    return [fresh[i] if result is None else result for i, result in enumerate(cached)]


def prediction_body(
    champion: Champion, vector: OnlineVector, user_status: Status, scored: Scored | None, now: datetime
) -> dict[str, Any]:
    """A Prediction's fields as plain data: ``scored`` for a scored user, None for a closed or inactive one. /predict
    serialises them with pydantic-core directly: building and validating the model first doubled the cost of the
    response (tests check every body against Prediction)."""
    if scored is None:
        detail = champion.unscored_detail[user_status]
        outcome = {"churn_probability": None, "risk_band": None, "reasons": (), "detail": detail}
    else:
        outcome = {"churn_probability": scored.probability, "risk_band": scored.band, "reasons": scored.reasons}
    body = {
        "user_id": vector.user_id,
        "status": user_status,
        **outcome,
        "model": champion.model_ref,
        "features_as_of": vector.as_of,
        "feature_service": champion.feature_service,
    }
    if champion.today is not None:
        body["today"] = champion.today.body(vector.context, now)
    return body


def prediction_json(
    champion: Champion, vector: OnlineVector, user_status: Status, scored: Scored | None, now: datetime
) -> bytes:
    return to_json(prediction_body(champion, vector, user_status, scored, now))


def error_entry(user_id: int, exc: HTTPException) -> PredictionError:
    return PredictionError(user_id=user_id, status=exc.status_code, detail=str(exc.detail))
