"""Scoring online vectors with a champion model, in calls shared by concurrent requests.

A model call costs mostly per call, hardly per row: ~25 numpy dispatches for a champion compiled to numpy
(``churn_common.compiled``; ~40 µs for one user with its 58 counterfactuals on a quiet core, 2-3x that inside a
busy server whose caches the request path keeps evicting), or sklearn's input validation and column selection
(6-9 ms) for one that does not compile. So requests do not call the model one by one: those reaching the scorer
in the same event-loop iteration (the Redis replies of a pipelined batch resolve together), or while the previous
call runs in a worker thread, go together in the next call.

A call expected to end within the interpreter's GIL switch interval (5 ms) runs on the event loop: in a thread it
would hold the GIL about as long, the loop getting it back only where numpy lets go, and the hand-off itself (a
futex wake and a GIL exchange per call) cost ~12 % of the request path on two cores. Bigger calls (large batches,
sklearn's pipeline) run in a worker thread so the loop keeps answering between switch intervals.
"""

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from churn_common.compiled import CompiledModel, compile_verified, probe_rows
from churn_common.feature_frame import ServiceSchema
from churn_common.model import ChurnModel
from churn_common.online import OnlineVector

logger = logging.getLogger(__name__)

TOP_REASONS = 3
# A model call expected to take longer than this runs in a worker thread rather than holding up the event loop.
INLINE_BUDGET_S = sys.getswitchinterval()


@dataclass(frozen=True)
class Scored:
    probability: float
    band: str
    # Plain dicts with exactly schemas.Reason's fields, as ChurnModel.top_reasons builds them: they go into the
    # response as they are (a Reason model per reason cost ~10 µs: half of a model call's time). Shared, never mutated.
    reasons: tuple[dict[str, Any], ...]


def _scored(model: ChurnModel, probabilities: np.ndarray, explanations: list[list[dict]]) -> list[Scored]:
    return [
        Scored(float(p), model.risk_band(float(p)), tuple(reasons))
        for p, reasons in zip(probabilities, explanations, strict=True)
    ]


class CompiledScore:
    """Blocking: online vectors -> one pass of the compiled model with reasons."""

    def __init__(self, compiled: CompiledModel) -> None:
        self._compiled = compiled

    def __call__(self, vectors: Sequence[OnlineVector]) -> list[Scored]:
        rows = [vector.features for vector in vectors]
        return _scored(self._compiled.model, *self._compiled.score_and_explain(rows, top_k=TOP_REASONS))


class VectorScorer:
    """Blocking: online vectors -> model columns -> one ``score_and_explain`` call."""

    def __init__(self, model: ChurnModel, schema: ServiceSchema) -> None:
        self._model = model
        # The dtypes `normalize` gives training frames: strings as object with None, numbers as float64 with NaN.
        self._dtypes = [
            (name, object if name in schema.string_features else np.float64) for name in model.feature_names
        ]

    def __call__(self, vectors: Sequence[OnlineVector]) -> list[Scored]:
        columns = {name: np.array([v.features[name] for v in vectors], dtype=dtype) for name, dtype in self._dtypes}
        return _scored(self._model, *self._model.score_and_explain(columns, top_k=TOP_REASONS))


ModelCall = Callable[[Sequence[OnlineVector]], list[Scored]]


class BatchScorer:
    """Queues vectors from concurrent requests and scores each queue in one ``call``, one call at a time; calls of at
    most ``inline_max_users`` users run on the event loop, bigger ones in a worker thread."""

    def __init__(self, call: ModelCall, inline_max_users: int = 0) -> None:
        self.call = call
        self.inline_max_users = inline_max_users
        self._queue: list[OnlineVector] = []
        self._next: asyncio.Future[list[Scored]] | None = None  # resolves with the queued batch's results
        self._busy = False

    async def score(self, vectors: Sequence[OnlineVector]) -> list[Scored]:
        if not vectors:
            return []
        start = len(self._queue)
        self._queue.extend(vectors)
        if self._next is None:
            loop = asyncio.get_running_loop()
            self._next = loop.create_future()
            if not self._busy:
                loop.call_soon(self._launch)  # after the other requests resumed in this iteration have queued
        batch = self._next
        # Shielded: the batch is shared, and one caller going away must not cancel it for the others.
        results = await asyncio.shield(batch)
        return results[start : start + len(vectors)]

    def _launch(self) -> None:
        vectors, batch = self._queue, self._next
        self._queue, self._next = [], None
        if len(vectors) <= self.inline_max_users:
            self._run_inline(vectors, batch)
            return
        self._busy = True
        running = asyncio.get_running_loop().run_in_executor(None, self.call, vectors)
        running.add_done_callback(lambda done: self._finish(done, batch))

    def _run_inline(self, vectors: list[OnlineVector], batch: asyncio.Future[list[Scored]]) -> None:
        try:
            results = self.call(vectors)
        # Whatever the model raises goes to the requests waiting for it, as run_in_executor would hand it over.
        except Exception as exc:  # noqa: BLE001
            batch.set_exception(exc)
        else:
            batch.set_result(results)

    def _finish(self, done: asyncio.Future[list[Scored]], batch: asyncio.Future[list[Scored]]) -> None:
        if done.cancelled():
            batch.cancel()
        elif (error := done.exception()) is not None:
            batch.set_exception(error)
        else:
            batch.set_result(done.result())
        self._busy = False
        if self._queue:
            self._launch()


def _inline_max_users(call: CompiledScore, probe: Sequence[OnlineVector]) -> int:
    """How many users one call scores within INLINE_BUDGET_S, from a timed call on probe vectors (after a warm-up
    call): linear champions come out at a hundred or more, boosted trees at fewer."""
    call(probe)
    started = time.perf_counter()
    call(probe)
    per_user = (time.perf_counter() - started) / len(probe)
    return max(1, int(INLINE_BUDGET_S / per_user))


def scorer_for(model: ChurnModel, schema: ServiceSchema) -> BatchScorer:
    """The compiled model when it compiles and verifies (run inline while calls are cheap), else sklearn's pipeline
    in worker threads."""
    compiled = compile_verified(model)
    if compiled is None:
        return BatchScorer(VectorScorer(model, schema))
    call = CompiledScore(compiled)
    probe = [OnlineVector(0, row, None, (), ()) for row in probe_rows(model, compiled, n_rows=16)]
    inline = _inline_max_users(call, probe)
    logger.info("compiled scoring: up to %d users per call on the event loop", inline)
    return BatchScorer(call, inline)
