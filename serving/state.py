"""What the app holds between requests, built in the lifespan and reached through the dependencies."""

import asyncio
from dataclasses import dataclass

from feast import FeatureStore

from churn_common.settings import Settings
from serving.metrics import ServingMetrics
from serving.model_loader import ChampionHolder, ChampionLoader
from serving.redis_pipe import RedisPipe


@dataclass
class ServingState:
    settings: Settings
    metrics: ServingMetrics
    store: FeatureStore
    redis: RedisPipe | None
    loader: ChampionLoader
    holder: ChampionHolder
    # Bounds in-flight scoring so overload queues here instead of stretching every request's latency.
    slots: asyncio.Semaphore
