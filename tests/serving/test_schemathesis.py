"""Property-based calls generated from /openapi.json against a real server: no 5xx, responses match the schema."""

from collections.abc import Iterator

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import REDIS_HOST, REDIS_PORT, TEST_REDIS_DB, unique_name
from tests.serving.world import World, delete_project_keys, make_world, running_server, server_env

pytestmark = [pytest.mark.redis, pytest.mark.e2e, pytest.mark.slow]
TOKEN = "fuzz-token"  # with a token configured, schemathesis also checks that bad or missing auth is refused


@pytest.fixture(scope="module")
def fresh_server(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A project without stale users (all are scored, closed, inactive or unknown), so a 503 can only mean a bug."""
    project = unique_name("srvs")
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=TEST_REDIS_DB)
    try:
        own = make_world(
            tmp_path_factory.mktemp("fuzz"),
            project,
            TEST_REDIS_DB,
            tracking_uri=world.settings.tracking_uri,
            with_stale=False,
        )
        with running_server(server_env(own.settings, CHURN_API_TOKEN=TOKEN)) as base:
            yield base
    finally:
        delete_project_keys(client, project)
        client.close()


def test_api_conforms_to_its_schema(fresh_server: str):
    # The schemathesis pytest plugin does not support pytest 9; its Python API drives Hypothesis directly.
    api_schema = schemathesis.openapi.from_url(f"{fresh_server}/openapi.json")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /predict", "POST /predict/batch", "GET /ready"}
    for operation in operations:
        # A pushed event must be of today by the service clock, of a catalogue type, with a value exactly when the
        # type carries one: rules no static schema states, so schema-valid pushes are mostly (rightly) a 422. Every
        # other check still holds for POST /events: no 5xx, answers as documented, auth refused when wrong.
        call = _caller([positive_data_acceptance] if operation.label == "POST /events" else [])
        call = settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))(call)
        call = given(case=operation.as_strategy())(call)
        call()


def _caller(excluded: list):
    def call(case) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=excluded)

    return call
