from collections.abc import Iterator

import pytest
import redis

from churn_common.settings import Settings


def delete_project_keys(client: redis.Redis, project: str) -> int:
    """Feast's Redis keys end with the project name; ours are unique per test, so this touches nothing else."""
    keys = list(client.scan_iter(match=f"*{project}", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


@pytest.fixture
def redis_settings(settings: Settings, redis_client: redis.Redis) -> Iterator[Settings]:
    """Settings on the redis profile, in the test Redis db, with the project's keys removed afterwards."""
    on_redis = settings.model_copy(update={"feast_profile": "redis"})
    yield on_redis
    delete_project_keys(redis_client, on_redis.feast_project)
