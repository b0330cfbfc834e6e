"""What the app holds between requests, built in the lifespan and reached through the dependencies."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from feast import FeatureStore

from churn_common.settings import Settings
from serving.lookups import Lookups
from serving.metrics import ServingMetrics
from serving.model_loader import Champion, ChampionHolder, ChampionLoader
from serving.prediction_log import PredictionLog
from serving.push import Pusher
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
    # The instant freshness is judged at: Settings.clock, so a frozen CHURN_NOW serves a simulated day.
    clock: Callable[[], datetime]
    prediction_log: PredictionLog
    # The loop serving the requests: deadlines are in its time (asking the running loop per request costs a getpid()
    # system call on Python 3.11).
    loop: asyncio.AbstractEventLoop
    online_timeout_s: float
    redact: Callable[[str], str]  # every message built from a URI or an error passes through it before it is shown
    pusher: Pusher | None = None  # the push path (POST /events); None without a today view in the registry
    _lookups: Lookups | None = None

    def lookups(self, champion: Champion) -> Lookups:
        """The gathered lookups of ``champion``, new ones after a swap (a batch in flight finishes with the old)."""
        if self._lookups is None or self._lookups.champion is not champion:
            self._lookups = Lookups(champion, self.metrics, self.clock)
        return self._lookups
