"""Promoting a new champion while requests run: the server swaps without a restart and without a failed call."""

import threading
import time

import httpx
import mlflow
import pytest

from churn_common.feature_frame import service_schema
from churn_common.names import CHAMPION_ALIAS, REGISTERED_MODEL
from churn_common.store import feature_store
from products.elearning import FEATURE_SERVICE
from tests.serving.expected import expected_prediction
from tests.serving.world import FRESH_USERS, World, register_champion, running_server, server_env, train_model

pytestmark = [pytest.mark.redis, pytest.mark.e2e, pytest.mark.slow]
HAMMERED = FRESH_USERS[:8]  # few users: after warm-up most calls hit the score cache, as in steady state


class Hammer:
    """Client threads calling /predict in a loop, recording (status, served version)."""

    def __init__(self, base: str, threads: int = 4) -> None:
        self.base = base
        self.results: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, offset: int) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            i = offset
            while not self._stop.is_set():
                response = client.get("/predict", params={"user_id": HAMMERED[i % len(HAMMERED)]})
                body = response.json()
                version = body["model"]["version"] if response.status_code == 200 else body["detail"]
                self.results.append((response.status_code, version))
                i += 1

    def __enter__(self) -> "Hammer":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def wait_until(self, condition, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition(self.results):
            assert time.monotonic() < deadline, "condition not reached in time"
            time.sleep(0.05)


def test_new_champion_is_served_without_failed_requests(world: World):
    challenger = train_model(world, seed=2)
    schema = service_schema(feature_store(world.settings).get_feature_service(FEATURE_SERVICE))
    client = mlflow.MlflowClient(tracking_uri=world.settings.tracking_uri, registry_uri=world.settings.tracking_uri)
    original = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version
    try:
        with running_server(server_env(world.settings), via_cli=True) as base, Hammer(base) as hammer:
            hammer.wait_until(lambda results: len(results) >= 40)
            new_version = register_champion(world, challenger)
            hammer.wait_until(lambda results: any(version == new_version for _, version in results))
            swapped_at = len(hammer.results)
            hammer.wait_until(lambda results: len(results) >= swapped_at + 40)
            response = httpx.get(f"{base}/predict", params={"user_id": FRESH_USERS[5]})
    finally:
        # Other tests of the session expect the original champion.
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, original)

    failed = [result for result in hammer.results if result[0] != 200]
    assert not failed, failed[:5]
    assert hammer.results[0][1] == str(original) and new_version != str(original)
    assert [version for _, version in hammer.results[-20:]] == [new_version] * 20
    expected = expected_prediction(challenger, schema, world.snapshots, FRESH_USERS[5])
    assert response.json()["model"]["version"] == new_version
    assert response.json()["churn_probability"] == pytest.approx(expected["probability"], abs=1e-9)
