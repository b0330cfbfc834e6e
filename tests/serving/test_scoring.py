"""Scoring: one stacked model call gives the same scores and reasons as predict_proba + explain, and concurrent
requests share model calls without sharing failures or cancellations."""

import asyncio
import threading

import numpy as np
import pandas as pd
import pytest

from churn_common.errors import SchemaError
from churn_common.feature_frame import normalize, service_schema
from churn_common.model import ChurnModel, RiskThresholds
from churn_common.online import OnlineVector
from churn_common.store import feature_store
from products.elearning import FEATURE_SERVICE
from serving.scoring import BatchScorer, CompiledScore, Scored, VectorScorer, scorer_for
from tests.serving.conftest import app_client
from tests.serving.expected import expected_prediction
from tests.serving.world import FRESH_USERS, World

WEIGHTS = {"a": 1.0, "b": -0.7, "n": 0.4}


class ElementwiseLogit:
    """Row-wise arithmetic only, so a row's score cannot depend on the batch it is in: results must be equal."""

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        logit = sum(w * frame[name].to_numpy(dtype=float) for name, w in WEIGHTS.items())
        logit = np.nan_to_num(logit, nan=1.5) + 0.3 * (frame["plan"].to_numpy() == "free")
        p = 1.0 / (1.0 + np.exp(-logit))
        return np.column_stack([1 - p, p])


def random_rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    a[rng.random(n) < 0.2] = np.nan
    plans = rng.choice(["free", "annual", "monthly"], size=n).astype(object)
    return pd.DataFrame({"a": a, "b": rng.normal(size=n), "n": rng.integers(0, 9, size=n), "plan": plans})


def contributions_by_hand(model: ChurnModel, row: pd.DataFrame) -> dict[str, float]:
    """One model call per occluded feature on a single row: independent of the stacked batch."""
    base = model.estimator.predict_proba(row)[0, 1]
    out = {}
    for name, reference in model.reference_values.items():
        occluded = row.astype({name: object if isinstance(reference, str) else float})
        occluded[name] = reference
        out[name] = round(float(base - model.estimator.predict_proba(occluded)[0, 1]), 6)
    return out


def test_score_and_explain_equals_one_row_at_a_time_by_hand():
    reference = {"a": 0.1, "b": -0.2, "n": 3.5, "plan": "annual"}
    model = ChurnModel(ElementwiseLogit(), ["a", "b", "n", "plan"], RiskThresholds(0.6, 0.3), reference)
    rows = random_rows(200, seed=3)

    probabilities, reasons = model.score_and_explain(rows, top_k=3)

    assert probabilities.tolist() == model.predict_proba(rows).tolist()
    for i, row_reasons in enumerate(reasons):
        by_hand = contributions_by_hand(model, rows.iloc[[i]])
        positive = sorted((c, f) for f, c in by_hand.items() if c > 0)
        assert [r["feature"] for r in row_reasons] == [f for _, f in sorted(positive, key=lambda cf: -cf[0])[:3]]
        assert all(r["contribution"] == by_hand[r["feature"]] for r in row_reasons)
    assert reasons == model.explain(rows, top_k=3)
    assert any(r["feature"] == "n" for row in reasons for r in row)  # the integer column is occluded too


@pytest.mark.redis
def test_score_and_explain_on_the_champion_pipeline(world: World):
    schema = service_schema(feature_store(world.settings).get_feature_service(FEATURE_SERVICE))
    rows = normalize(world.snapshots.sample(60, random_state=4).reset_index(drop=True), schema)
    model = world.model

    probabilities, reasons = model.score_and_explain(rows)
    from_columns = model.score_and_explain({name: rows[name].to_numpy() for name in model.feature_names})

    assert probabilities == pytest.approx(model.predict_proba(rows), abs=1e-12)
    for got, want in zip(reasons, model.explain(rows), strict=True):
        assert [(r["feature"], r["value"]) for r in got] == [(r["feature"], r["value"]) for r in want]
        assert [r["contribution"] for r in got] == pytest.approx([r["contribution"] for r in want], abs=2e-6)
    assert from_columns[0].tolist() == probabilities.tolist() and from_columns[1] == reasons


@pytest.mark.redis
def test_the_champion_is_scored_compiled_with_the_sklearn_answers(world: World):
    """The serving world's champion compiles; its scores and reasons equal the sklearn scorer's on real vectors, and
    a model that does not compile is scored by sklearn."""
    schema = service_schema(feature_store(world.settings).get_feature_service(FEATURE_SERVICE))
    rows = normalize(world.snapshots.sample(30, random_state=7).reset_index(drop=True), schema)
    rows = rows.astype(object).where(rows.notna(), None)
    vectors = [
        OnlineVector(i, row, None, (), ()) for i, row in enumerate(rows[world.model.feature_names].to_dict("records"))
    ]

    compiled = scorer_for(world.model, schema)
    got = asyncio.run(compiled.score(vectors))

    assert isinstance(compiled.call, CompiledScore) and compiled.inline_max_users >= 1
    want = VectorScorer(world.model, schema)(vectors)
    assert [g.probability for g in got] == pytest.approx([w.probability for w in want], abs=1e-12)
    assert [(g.band, g.reasons) for g in got] == [(w.band, w.reasons) for w in want]
    assert len({g.band for g in got}) > 1
    opaque = ChurnModel(
        ElementwiseLogit(), ["a", "b", "n", "plan"], RiskThresholds(0.6, 0.3), {"a": 0, "b": 0, "n": 0, "plan": "x"}
    )
    fallback = scorer_for(opaque, schema)
    assert isinstance(fallback.call, VectorScorer) and fallback.inline_max_users == 0


def test_score_and_explain_names_missing_columns():
    model = ChurnModel(ElementwiseLogit(), ["a", "b"], RiskThresholds(0.6, 0.3), {"a": 0.0, "b": 0.0})
    with pytest.raises(SchemaError, match=r"misses features \['b'\]"):
        model.score_and_explain({"a": np.zeros(1)})


def vector(user_id: int) -> OnlineVector:
    return OnlineVector(user_id, {}, None, (), ())


class RecordingScorer:
    """Stands in for a model call: records each call's users and thread, blocks until released (unless built
    released), may fail."""

    def __init__(self, fail: bool = False, released: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.threads: list[int] = []
        self.release = threading.Event()
        if released:
            self.release.set()
        self.fail = fail

    def __call__(self, vectors):
        self.calls.append([v.user_id for v in vectors])
        self.threads.append(threading.get_ident())
        self.release.wait(timeout=10)
        if self.fail:
            raise RuntimeError("model exploded")
        return [Scored(v.user_id / 100, "low", ()) for v in vectors]


def test_requests_arriving_during_a_model_call_share_the_next_call():
    async def scenario():
        recorder = RecordingScorer()
        batcher = BatchScorer(recorder)
        first = asyncio.create_task(batcher.score([vector(1)]))
        await asyncio.sleep(0.05)  # the first call is now in the model
        waiting = [asyncio.create_task(batcher.score([vector(u), vector(u + 10)])) for u in (2, 3, 4)]
        await asyncio.sleep(0.05)
        recorder.release.set()
        results = await asyncio.gather(first, *waiting)
        return recorder.calls, results

    calls, results = asyncio.run(scenario())

    assert calls == [[1], [2, 12, 3, 13, 4, 14]]
    assert [[s.probability for s in r] for r in results] == [[0.01], [0.02, 0.12], [0.03, 0.13], [0.04, 0.14]]


def test_a_failed_call_fails_every_request_in_it_and_the_next_call_runs():
    async def scenario():
        recorder = RecordingScorer(fail=True)
        batcher = BatchScorer(recorder)
        blocked = [asyncio.create_task(batcher.score([vector(u)])) for u in (1, 2)]
        recorder.release.set()
        outcomes = await asyncio.gather(*blocked, return_exceptions=True)
        recorder.fail = False
        return outcomes, await batcher.score([vector(3)])

    outcomes, later = asyncio.run(scenario())

    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert [s.probability for s in later] == [0.03]


def test_a_cancelled_request_does_not_cancel_the_others_in_its_call():
    async def scenario():
        recorder = RecordingScorer()
        batcher = BatchScorer(recorder)
        gone, stays = (asyncio.create_task(batcher.score([vector(u)])) for u in (1, 2))
        await asyncio.sleep(0.05)
        gone.cancel()
        recorder.release.set()
        return await stays

    assert [s.probability for s in asyncio.run(scenario())] == [0.02]


def test_requests_of_one_loop_iteration_share_an_inline_call_and_big_calls_go_to_a_thread():
    async def scenario():
        recorder = RecordingScorer(released=True)
        batcher = BatchScorer(recorder, inline_max_users=4)
        together = await asyncio.gather(*(batcher.score([vector(u)]) for u in (1, 2, 3)))
        big = await asyncio.gather(
            batcher.score([vector(u) for u in range(10, 13)]), batcher.score([vector(20)]), batcher.score([vector(21)])
        )
        recorder.fail = True
        failed = await asyncio.gather(batcher.score([vector(30)]), batcher.score([vector(31)]), return_exceptions=True)
        recorder.fail = False
        after = await batcher.score([vector(40)])
        return list(zip(recorder.calls, recorder.threads, strict=True)), together, big, failed, after

    calls, together, big, failed, after = asyncio.run(scenario())

    loop_thread = threading.get_ident()
    assert calls[0] == ([1, 2, 3], loop_thread)  # one call, on the event loop
    assert calls[1][0] == [10, 11, 12, 20, 21] and calls[1][1] != loop_thread  # 5 users > 4: a worker thread
    assert [[s.probability for s in r] for r in together] == [[0.01], [0.02], [0.03]]
    assert [[s.probability for s in r] for r in big] == [[0.10, 0.11, 0.12], [0.20], [0.21]]
    assert calls[2] == ([30, 31], loop_thread) and all(isinstance(f, RuntimeError) for f in failed)
    assert [s.probability for s in after] == [0.40]


@pytest.mark.redis
def test_without_the_score_cache_every_answer_is_still_the_champions(world: World):
    schema = service_schema(feature_store(world.settings).get_feature_service(FEATURE_SERVICE))
    with app_client(world.settings, score_cache_size=0) as client:
        for user_id in (FRESH_USERS[0], FRESH_USERS[5], FRESH_USERS[0]):
            expected = expected_prediction(world.model, schema, world.snapshots, user_id)
            body = client.get("/predict", params={"user_id": user_id}).json()
            assert body["churn_probability"] == pytest.approx(expected["probability"], abs=1e-9)
            assert [r["feature"] for r in body["reasons"]] == [r["feature"] for r in expected["reasons"]]
