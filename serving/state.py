"""What the app holds between requests, built in the lifespan and reached through the dependencies."""

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis
from feast import FeatureStore

from churn_common.settings import Settings
from serving.metrics import ServingMetrics
from serving.model_loader import ChampionHolder, ChampionLoader


@dataclass
class ServingState:
    settings: Settings
    metrics: ServingMetrics
    store: FeatureStore
    redis: aioredis.Redis | None
    loader: ChampionLoader
    holder: ChampionHolder
    # Bounds in-flight scoring so overload queues here instead of stretching every request's latency.
    slots: asyncio.Semaphore
