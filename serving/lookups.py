"""Single-user lookups for /predict, gathered: the users asked for by the requests that arrived together are read
in one Redis round trip, the population rule decides each user's status, the scored ones are scored in one model
call, and each request resumes once, with its vector, status and score.

At most two batches are in flight; requests arriving meanwhile gather for the next, which starts as one ends (group
commit). Under load batches grow by themselves instead of the loop keeping many small ones in flight: at 32
connections ~4-6 batches of 3-6 users each were in flight, and each batch's costs (a task, a Redis write and its
reply, ~25 numpy calls of the model) were paid that many more times: -8 % of the instructions per request at 16
users per batch against 4 (callgrind, in-process). Two rather than one: with one, the loop sat idle during each
Redis round trip (the server at 88-89 % of a core against 92-97 % with two, 1,760-1,990 req/s against 1,907-2,112
in interleaved runs). A lone request starts its batch in the next iteration, as before.

Reading and scoring as two shared steps cost every request two suspensions (the Redis reply, then the model call)
with a future and bookkeeping at each: ~7 % of the server's CPU per request. Here the batch's task takes both steps.

A request's deadline (its arrival plus the online timeout) goes with it: a batch is read by the earliest deadline
among its requests, so a request that waited behind a stalled batch fails when its own time is up, not a timeout
after its batch started.
"""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from itertools import compress

from churn_common.online import OnlineVector
from churn_common.population import Status
from serving.metrics import ServingMetrics
from serving.model_loader import Champion
from serving.prediction import population_status, read_vectors, score
from serving.scoring import Scored

MAX_BATCHES_IN_FLIGHT = 2


@dataclass(frozen=True)
class Lookup:
    vector: OnlineVector
    status: Status  # the population rule's verdict at ``now``
    scored: Scored | None  # None unless the status is SCORED
    now: datetime  # the instant the ttl rule was applied at


class Lookups:
    """One champion's gathered lookups. A failed read or model call fails every request of its batch with the
    error itself (FeatureStoreUnavailable for Redis); the next batch starts afresh."""

    def __init__(self, champion: Champion, metrics: ServingMetrics, clock: Callable[[], datetime]) -> None:
        self.champion = champion
        self._metrics = metrics
        self._clock = clock
        self._ids: list[int] = []
        self._waiters: list[asyncio.Future[Lookup]] = []
        self._deadline: float | None = None  # the earliest of the gathering requests' deadlines
        self._in_flight: set[asyncio.Task] = set()  # held here: the loop keeps only weak references to tasks

    async def __call__(self, user_id: int, deadline: float | None = None) -> Lookup:
        """``user_id``'s lookup, failed with FeatureStoreUnavailable if not read by ``deadline`` (event-loop time;
        None: the reader's timeout from the read's start)."""
        loop = asyncio.get_running_loop()
        if not self._waiters:
            self._deadline = deadline
            if len(self._in_flight) < MAX_BATCHES_IN_FLIGHT:
                loop.call_soon(self._launch)  # after every request resumed in this iteration has queued
        elif deadline is not None and (self._deadline is None or deadline < self._deadline):
            self._deadline = deadline
        waiter = loop.create_future()
        self._ids.append(user_id)
        self._waiters.append(waiter)
        return await waiter

    def _launch(self) -> None:
        if not self._ids:  # an ending batch started the next one with these ids before this scheduled launch ran
            return
        ids, waiters, deadline = self._ids, self._waiters, self._deadline
        self._ids, self._waiters = [], []
        batch = asyncio.get_running_loop().create_task(self._run(ids, waiters, deadline))
        self._in_flight.add(batch)
        batch.add_done_callback(partial(self._settle, waiters))

    async def _run(self, ids: Sequence[int], waiters: Sequence[asyncio.Future[Lookup]], deadline: float | None) -> None:
        now = self._clock()
        vectors = await read_vectors(self.champion, self._metrics, ids, now, deadline)
        statuses = [population_status(self.champion, vector) for vector in vectors]
        scored = [user_status is Status.SCORED for user_status in statuses]
        scores = iter(await score(self.champion, list(compress(vectors, scored))))
        for waiter, vector, user_status, ok in zip(waiters, vectors, statuses, scored, strict=True):
            result = next(scores) if ok else None
            if not waiter.done():  # its request went away meanwhile
                waiter.set_result(Lookup(vector, user_status, result, now))

    def _settle(self, waiters: Sequence[asyncio.Future[Lookup]], task: asyncio.Task) -> None:
        """Hands a failed batch's error to each of its requests still waiting, and starts the next batch."""
        self._in_flight.discard(task)
        cancelled = task.cancelled()  # the loop is shutting down
        error = None if cancelled else task.exception()
        for waiter in waiters:
            if waiter.done():
                continue
            if cancelled:
                waiter.cancel()
            elif error is not None:
                waiter.set_exception(error)
        if self._ids:
            self._launch()
