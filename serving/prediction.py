"""From online vectors to predictions: the checks a vector must pass, scoring, reasons and the response body."""

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from fastapi import HTTPException, status
from pydantic_core import to_json

from churn_common.online import OnlineVector
from serving.metrics import ServingMetrics
from serving.model_loader import Champion
from serving.schemas import PredictionError
from serving.scoring import Scored


async def read_vectors(
    champion: Champion, metrics: ServingMetrics, user_ids: Sequence[int], now: datetime
) -> list[OnlineVector]:
    """The users' vectors through the champion's reader, with the read's latency and the vectors observed."""
    started = time.perf_counter()
    vectors = await champion.reader.read(user_ids, now)
    metrics.online_read.observe(time.perf_counter() - started)
    metrics.observe_vectors(vectors, now)
    return vectors


def scorable(vector: OnlineVector, view_count: int) -> bool:
    """Known, with at least one view fresh: what check_vector lets through."""
    return vector.as_of is not None and len(vector.stale_views) + len(vector.missing_views) < view_count


def check_vector(vector: OnlineVector, view_count: int, now: datetime) -> None:
    """Raise the HTTP error a vector that is not ``scorable`` deserves: unknown user (404) or nothing fresh enough to
    score (503)."""
    if scorable(vector, view_count):
        return
    if vector.as_of is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {vector.user_id} has no features online")
    age = now - vector.as_of
    raise HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        f"features of user {vector.user_id} are stale: newest snapshot is {age.total_seconds():.0f}s old "
        f"({vector.as_of.isoformat()}), older than the feature views' ttl",
    )


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


def prediction_body(champion: Champion, vector: OnlineVector, scored: Scored) -> dict[str, Any]:
    """A Prediction's fields as plain data. /predict serialises them with pydantic-core directly: building and
    validating the model first doubled the cost of the response (tests check every body against Prediction)."""
    return {
        "user_id": vector.user_id,
        "churn_probability": scored.probability,
        "risk_band": scored.band,
        "reasons": scored.reasons,
        "model": champion.model_ref,
        "features_as_of": vector.as_of,
        "feature_service": champion.feature_service,
    }


def prediction_json(champion: Champion, vector: OnlineVector, scored: Scored) -> bytes:
    return to_json(prediction_body(champion, vector, scored))


def error_entry(user_id: int, exc: HTTPException) -> PredictionError:
    return PredictionError(user_id=user_id, status=exc.status_code, detail=str(exc.detail))
