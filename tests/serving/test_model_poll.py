"""The champion poller outlives a version that fails to load with an error nobody planned for: the old champion
keeps serving, the failure is logged and counted, and the next good promotion is still picked up."""

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx
import mlflow
import pytest
from prometheus_client.parser import text_string_to_metric_families

from churn_common.feature_frame import service_schema
from churn_common.model import ChurnModel
from churn_common.names import CHAMPION_ALIAS, REGISTERED_MODEL
from churn_common.population import PopulationRule
from churn_common.store import feature_store
from products.elearning import FEATURE_SERVICE
from serving.features import make_reader, redis_pipe
from serving.metrics import ServingMetrics
from serving.model_loader import Champion, ChampionHolder, ChampionLoader, poll_champion
from tests.serving.conftest import app_client
from tests.serving.expected import expected_prediction
from tests.serving.world import FRESH_USERS, World, register_champion, train_model

pytestmark = [pytest.mark.redis, pytest.mark.slow]
USER = FRESH_USERS[3]
BROKEN = "the model's code changed since it was logged"
FAILURES = "churn_model_load_failures_total"
ATTEMPT = "churn_model_last_load_attempt_timestamp_seconds"
SUCCESS = "churn_model_last_load_success_timestamp_seconds"


class BreaksOnLoad(ChurnModel):
    """Logs like any ChurnModel and raises when unpickled, as a model whose code changed incompatibly since it was
    logged does: the error is a RuntimeError, none of ours."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        raise RuntimeError(BROKEN)


def breaks_on_load(model: ChurnModel) -> BreaksOnLoad:
    return BreaksOnLoad(model.estimator, model.feature_names, model.risk_thresholds, model.reference_values)


@contextmanager
def champion_restored(world: World) -> Iterator[str]:
    """Yields the champion's version; gives the alias back to it afterwards (other tests of the session expect it)."""
    uri = world.settings.tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    original = str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version)
    try:
        yield original
    finally:
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, original)


def samples(api: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = api.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def failures(api: httpx.Client, reason: str) -> float:
    return samples(api).get((FAILURES, (("reason", reason),)), 0.0)


def wait_for(condition: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    """The condition's first truthy value; polls at 0.3 s, so a minute is many polls even on a busy machine."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
    return value


def served_version(api: httpx.Client) -> str:
    return api.get("/predict", params={"user_id": USER}).json()["model"]["version"]


def load_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "serving.model_loader" and record.levelno == logging.WARNING
    ]


def test_a_champion_that_fails_to_load_leaves_the_old_one_serving_and_the_poller_alive(
    world: World, caplog: pytest.LogCaptureFixture
):
    assert world.model is not None
    schema = service_schema(feature_store(world.settings).get_feature_service(FEATURE_SERVICE))
    caplog.set_level(logging.WARNING, logger="serving.model_loader")
    with champion_restored(world) as original, app_client(world.settings) as api:
        assert served_version(api) == original
        broken = register_champion(world, breaks_on_load(world.model))
        # Two failures: the broken version is retried at every poll, not given up on.
        wait_for(lambda: failures(api, "RuntimeError") >= 2)
        during = samples(api)
        wait_for(lambda: failures(api, "RuntimeError") > during[(FAILURES, (("reason", "RuntimeError"),))])
        after_more = samples(api)
        predict, ready = api.get("/predict", params={"user_id": USER}), api.get("/ready")
        challenger = train_model(world, seed=3)
        good = register_champion(world, challenger)
        wait_for(lambda: served_version(api) == good)
        picked_up = samples(api)
        swapped = api.get("/predict", params={"user_id": USER})

    assert predict.status_code == 200 and predict.json()["model"]["version"] == original
    expected = expected_prediction(world.model, schema, world.snapshots, USER)
    assert predict.json()["churn_probability"] == pytest.approx(expected["probability"], abs=1e-9)
    assert ready.status_code == 200, ready.json()
    assert any(f"version {broken}" in m and f"RuntimeError: {BROKEN}" in m for m in load_warnings(caplog))
    # A failed poll is an attempt and no success; the poll that loads the good version is both.
    assert after_more[(SUCCESS, ())] == during[(SUCCESS, ())]
    assert after_more[(ATTEMPT, ())] != during[(ATTEMPT, ())]
    assert picked_up[(SUCCESS, ())] != during[(SUCCESS, ())]
    assert picked_up[("churn_model_info", (("alias", "champion"), ("name", REGISTERED_MODEL), ("version", good)))] == 1
    expected = expected_prediction(challenger, schema, world.snapshots, USER)
    assert swapped.json()["churn_probability"] == pytest.approx(expected["probability"], abs=1e-9)


def test_an_app_started_on_a_champion_that_fails_to_load_says_why_and_serves_the_next_one(
    world: World, caplog: pytest.LogCaptureFixture
):
    assert world.model is not None
    caplog.set_level(logging.WARNING, logger="serving.model_loader")
    with champion_restored(world) as original:
        broken = register_champion(world, breaks_on_load(world.model))
        with app_client(world.settings) as api:
            ready = api.get("/ready")
            predict = api.get("/predict", params={"user_id": USER})
            counted = failures(api, "RuntimeError")
            mlflow.MlflowClient(world.settings.tracking_uri, world.settings.tracking_uri).set_registered_model_alias(
                REGISTERED_MODEL, CHAMPION_ALIAS, original
            )
            wait_for(lambda: api.get("/ready").status_code == 200)
            recovered = served_version(api)

    assert ready.status_code == 503
    assert ready.json()["reasons"] == [f"no model: loading champion version {broken} failed: RuntimeError: {BROKEN}"]
    assert predict.status_code == 503 and BROKEN in predict.json()["detail"]
    assert counted >= 1
    assert recovered == original
    assert any(f"version {broken}" in message for message in load_warnings(caplog))


def test_the_poll_loop_survives_a_failing_swap_callback_and_ends_when_cancelled(world: World):
    swaps: list[str] = []

    def on_swap(champion: Champion) -> None:
        swaps.append(champion.version)
        raise RuntimeError("announcing the new champion failed")

    async def scenario(original: str) -> tuple[list[str], bool]:
        pipe = redis_pipe(feature_store(world.settings), timeout_s=5.0)
        store, rule = feature_store(world.settings), PopulationRule(world.settings.active_window_days)
        loader = ChampionLoader(
            world.settings.tracking_uri, store, lambda s, fs: make_reader(s, fs, pipe, 5.0), rule, 0
        )
        poller = asyncio.create_task(poll_champion(ChampionHolder(), loader, ServingMetrics(), 0.01, on_swap))
        try:
            async with asyncio.timeout(120):
                while not swaps:
                    await asyncio.sleep(0.01)
                newer = register_champion(world, train_model(world, seed=4))
                while len(swaps) < 2 and not poller.done():
                    await asyncio.sleep(0.01)
            poller.cancel()
            with suppress(asyncio.CancelledError):
                await poller
            return [original, newer], poller.cancelled()
        finally:
            poller.cancel()
            await pipe.aclose()

    with champion_restored(world) as original:
        expected, cancelled = asyncio.run(scenario(original))

    assert swaps == expected
    assert cancelled
