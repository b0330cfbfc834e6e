"""The FastAPI application factory. Resources are built in the lifespan, never at import time."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial

from fastapi import Depends, FastAPI
from feast import FeatureService, FeatureStore

from churn_common.settings import Settings
from churn_common.store import feature_store
from serving.auth import require_token
from serving.features import FeatureReader, make_reader, redis_client
from serving.metrics import MetricsMiddleware, ServingMetrics
from serving.model_loader import Champion, ChampionHolder, ChampionLoader, poll_champion, refresh_champion
from serving.routes import predict_router, router
from serving.state import ServingState

logger = logging.getLogger(__name__)


def _build_state(settings: Settings, metrics: ServingMetrics) -> ServingState:
    store = feature_store(settings)
    client = redis_client(store)
    timeout_s = settings.online_timeout_ms / 1000

    def reader_factory(store: FeatureStore, service: FeatureService) -> FeatureReader:
        return make_reader(store, service, client, timeout_s)

    loader = ChampionLoader(settings.tracking_uri, store, reader_factory)
    slots = asyncio.Semaphore(settings.max_concurrency)
    return ServingState(settings, metrics, store, client, loader, ChampionHolder(), slots)


def _lifespan(settings: Settings, metrics: ServingMetrics):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = _build_state(settings, metrics)
        app.state.serving = state
        if await refresh_champion(state.holder, state.loader) and state.holder.current is not None:
            _announce(metrics, state.holder.current)
        poller = asyncio.create_task(
            poll_champion(state.holder, state.loader, settings.model_poll_seconds, partial(_announce, metrics))
        )
        try:
            yield
        finally:
            poller.cancel()
            with suppress(asyncio.CancelledError):
                await poller
            if state.redis is not None:
                await state.redis.aclose()

    return lifespan


def _announce(metrics: ServingMetrics, champion: Champion) -> None:
    metrics.set_model(champion.name, champion.version, champion.alias)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServingMetrics()
    app = FastAPI(
        title="Churn prediction API",
        version="1",
        description="Churn probability, risk band and reasons per learner, from online features in Feast.",
        lifespan=_lifespan(settings, metrics),
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(router)
    # Only a configured token adds the auth dependency, so the OpenAPI document never advertises auth it lacks.
    guards = [Depends(require_token)] if settings.api_token is not None else []
    app.include_router(predict_router, dependencies=guards)
    return app
