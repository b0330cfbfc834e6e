from collections.abc import Iterator

import pytest
import redis

from churn_common.settings import Settings

_INT64_BYTES = 8


def delete_project_keys(client: redis.Redis, project: str) -> int:
    """Feast's Redis keys end with the project name; ours are unique per test, so this touches nothing else."""
    keys = list(client.scan_iter(match=f"*{project}", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


def feast_hashes(client: redis.Redis, project: str) -> list[bytes]:
    """Feast's per-entity hashes of the project: its keys without the materialisation job's watermark string."""
    return list(client.scan_iter(match=f"*{project}", count=1000, _type="hash"))


def hashed_user_ids(client: redis.Redis, project: str) -> set[int]:
    """The user ids the project's hashes belong to: a key is the serialised entity key (ending in the int64 id,
    little-endian) followed by the project name."""
    suffix = len(project.encode())
    return {
        int.from_bytes(key[-suffix - _INT64_BYTES : -suffix], "little", signed=True)
        for key in feast_hashes(client, project)
    }


@pytest.fixture
def redis_settings(settings: Settings, redis_client: redis.Redis) -> Iterator[Settings]:
    """Settings on the redis profile, in the test Redis db, with the project's keys removed afterwards."""
    on_redis = settings.model_copy(update={"feast_profile": "redis"})
    yield on_redis
    delete_project_keys(redis_client, on_redis.feast_project)
