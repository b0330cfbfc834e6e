"""The FastAPI application factory. Resources are built in the lifespan, never at import time."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.telemetry import TelemetryConfig
from feast import FeatureService, FeatureStore
from threadpoolctl import threadpool_limits

from churn_common.population import PopulationRule
from churn_common.settings import Settings
from churn_common.store import feature_store
from serving.auth import load_tokens
from serving.console import add_console
from serving.docs import add_docs
from serving.events import add_event_routes
from serving.features import FeatureReader, make_reader, redis_pipe
from serving.gateway import Gateway
from serving.metrics import MetricsMiddleware, ServingMetrics
from serving.model_loader import (
    SCORE_CACHE_SIZE,
    Champion,
    ChampionHolder,
    ChampionLoader,
    poll_champion,
    refresh_champion,
)
from serving.prediction_log import PredictionLog, keep_flushing
from serving.push import make_pusher
from serving.query import openapi_with_validation_errors, validation_failed
from serving.redaction import Redactor, redactor_for
from serving.routes import add_routes
from serving.state import ServingState

logger = logging.getLogger(__name__)


def _build_state(settings: Settings, metrics: ServingMetrics, score_cache_size: int, redact: Redactor) -> ServingState:
    store = feature_store(settings)
    timeout_s = settings.online_timeout_ms / 1000
    pipe = redis_pipe(store, timeout_s)

    def reader_factory(store: FeatureStore, service: FeatureService) -> FeatureReader:
        return make_reader(store, service, pipe, timeout_s)

    rule = PopulationRule(settings.active_window_days)
    loader = ChampionLoader(
        settings.tracking_uri,
        store,
        reader_factory,
        rule,
        score_cache_size,
        redact=redact,
        signing_key=settings.model_signing_key,
    )
    slots = asyncio.Semaphore(settings.max_concurrency)
    log = PredictionLog(settings.prediction_log_root, settings.prediction_log_share, metrics)
    loop = asyncio.get_running_loop()
    holder = ChampionHolder()
    pusher = make_pusher(store, pipe, settings.event_catalog(), timeout_s)
    return ServingState(
        settings, metrics, store, pipe, loader, holder, slots, settings.clock, log, loop, timeout_s, redact, pusher
    )


def _lifespan(settings: Settings, metrics: ServingMetrics, score_cache_size: int, redact: Redactor):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Scoring batches are small matrices: BLAS/OpenMP worker threads only add hand-offs and contend with the
        # event loop for the cores, so the process runs them single-threaded while it serves.
        blas_limits = threadpool_limits(1)
        state = _build_state(settings, metrics, score_cache_size, redact)
        app.state.serving = state
        if await refresh_champion(state.holder, state.loader, metrics) and state.holder.current is not None:
            _announce(metrics, state.holder.current)
        _freeze_heap()
        poller = asyncio.create_task(
            poll_champion(state.holder, state.loader, metrics, settings.model_poll_seconds, partial(_swapped, metrics))
        )
        writer = asyncio.create_task(keep_flushing(state.prediction_log, settings.prediction_log_flush_seconds))
        try:
            yield
        finally:
            for task in (poller, writer):
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            if state.redis is not None:
                await state.redis.aclose()
            blas_limits.restore_original_limits()

    return lifespan


def _announce(metrics: ServingMetrics, champion: Champion) -> None:
    metrics.set_model(champion.name, champion.version, champion.alias)


def _swapped(metrics: ServingMetrics, champion: Champion) -> None:
    _announce(metrics, champion)
    _freeze_heap()


def _freeze_heap() -> None:
    """Move everything alive now (Feast, MLflow, sklearn, the model) out of the cyclic GC's reach. Otherwise each
    full collection walks those ~300k long-lived objects: a ~150 ms pause of the event loop every few thousand
    requests, which is the p99 and trips the Redis read timeout of requests waiting meanwhile."""
    gc.collect()
    gc.freeze()


def _telemetry(enabled: bool) -> TelemetryConfig:
    """Off, FastAPI still asks OpenTelemetry on every request whether a provider is configured (environment lookups
    included): ~5 % of /predict's instructions, for telemetry nobody reads when Prometheus is the metrics path."""
    return {"tracing": enabled, "metrics": enabled, "logs": enabled}


def create_app(settings: Settings | None = None, *, score_cache_size: int = SCORE_CACHE_SIZE) -> FastAPI:
    """``score_cache_size=0`` scores every request (the benchmark's cold path)."""
    settings = settings or Settings()
    metrics = ServingMetrics()
    tokens = load_tokens(settings)
    app = FastAPI(
        title="Churn prediction API",
        version="1",
        description="Churn probability, risk band and reasons per learner, from online features in Feast.",
        lifespan=_lifespan(settings, metrics, score_cache_size, redactor_for(settings)),
        telemetry=_telemetry(settings.otel_telemetry),
        exception_handlers={RequestValidationError: validation_failed},
        docs_url=None,
        redoc_url=None,
    )
    limits = {"max_body_bytes": settings.max_body_bytes, "body_timeout_s": settings.body_timeout_seconds}
    app.add_middleware(Gateway, tokens=tokens, **limits)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it counts the gateway's answers too
    # Only configured tokens make the OpenAPI document declare auth, so it never advertises auth it lacks.
    add_routes(app, bearer=tokens is not None)
    add_console(app, bearer=tokens is not None)
    add_event_routes(app, bearer=tokens is not None)
    add_docs(app)
    app.openapi = openapi_with_validation_errors(app, bearer=tokens is not None)
    return app
