"""Scoring online vectors with a champion model.

A champion that compiles (``churn_common.compiled``) is scored on the event loop: one user with its 59
counterfactuals costs ~50 µs with logistic regression, less than handing it to a thread. Otherwise the sklearn
pipeline scores, and its cost is almost all per call (input validation, ColumnTransformer column selection), not
per row. So those requests do not call the model one by one: while one batch is in the model (on a worker
thread, since a call takes milliseconds and the event loop must keep answering), newly arriving requests queue up
and go together in the next call.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio.to_thread
import numpy as np

from churn_common.compiled import CompiledModel, compile_verified
from churn_common.feature_frame import ServiceSchema
from churn_common.model import ChurnModel
from churn_common.online import OnlineVector
from serving.schemas import Reason

TOP_REASONS = 3
# A batch beyond this many users goes to a worker thread even when compiled: boosted trees take ~0.5 ms per user.
INLINE_MAX_USERS = 4


@dataclass(frozen=True)
class Scored:
    probability: float
    band: str
    reasons: tuple[Reason, ...]


class Scorer(Protocol):
    async def score(self, vectors: Sequence[OnlineVector]) -> list[Scored]: ...


def _scored(model: ChurnModel, probabilities: np.ndarray, explanations: list[list[dict]]) -> list[Scored]:
    # Constructed without validation: ChurnModel.top_reasons builds exactly Reason's fields and types, and
    # validating three unions per reason cost more than the rest of the request's bookkeeping.
    return [
        Scored(float(p), model.risk_band(float(p)), tuple(Reason.model_construct(**r) for r in reasons))
        for p, reasons in zip(probabilities, explanations, strict=True)
    ]


class CompiledScorer:
    def __init__(self, compiled: CompiledModel) -> None:
        self._compiled = compiled

    async def score(self, vectors: Sequence[OnlineVector]) -> list[Scored]:
        if len(vectors) <= INLINE_MAX_USERS:
            return self._score(vectors)
        return await anyio.to_thread.run_sync(self._score, vectors)

    def _score(self, vectors: Sequence[OnlineVector]) -> list[Scored]:
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


class BatchScorer:
    """Queues vectors from concurrent requests and scores each queue in one call, one call at a time."""

    def __init__(self, score: VectorScorer) -> None:
        self._score = score
        self._queue: list[OnlineVector] = []
        self._next: asyncio.Future[list[Scored]] | None = None  # resolves with the queued batch's results
        self._busy = False

    async def score(self, vectors: Sequence[OnlineVector]) -> list[Scored]:
        if not vectors:
            return []
        start = len(self._queue)
        self._queue.extend(vectors)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        batch = self._next
        if not self._busy:
            self._launch()
        # Shielded: the batch is shared, and one caller going away must not cancel it for the others.
        results = await asyncio.shield(batch)
        return results[start : start + len(vectors)]

    def _launch(self) -> None:
        vectors, batch = self._queue, self._next
        self._queue, self._next, self._busy = [], None, True
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(None, self._score, vectors)
        running.add_done_callback(lambda done: self._finish(done, batch))

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


def scorer_for(model: ChurnModel, schema: ServiceSchema) -> Scorer:
    """The compiled scorer when the model compiles and verifies, else sklearn with batching across requests."""
    compiled = compile_verified(model)
    return CompiledScorer(compiled) if compiled else BatchScorer(VectorScorer(model, schema))
