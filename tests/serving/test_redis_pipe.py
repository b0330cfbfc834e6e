"""The shared pipelined Redis connection: replies reach the command that asked, against the real Redis and
throwaway redis-servers for the handshake and the slow-server cases."""

import asyncio
from pathlib import Path

import hiredis
import pytest
import redis

from churn_common.errors import ConfigurationError, FeatureStoreUnavailable
from serving.redis_pipe import RedisAddress, RedisPipe
from tests.conftest import REDIS_HOST, REDIS_PORT, TEST_REDIS_DB, unique_name
from tests.serving.conftest import redis_server
from tests.serving.world import free_port

pytestmark = pytest.mark.redis


def command(*args) -> bytes:
    return hiredis.pack_command(args)


@pytest.fixture
def own_keys(redis_client: redis.Redis):
    """A prefix of keys of this test in the test db; deleted afterwards."""
    prefix = unique_name("pipe")
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        redis_client.delete(*keys)


def test_concurrent_commands_get_their_own_replies(redis_client: redis.Redis, own_keys: str):
    for i in range(300):
        redis_client.hset(f"{own_keys}:{i}", mapping={"a": f"a{i}", "b": i * 7})

    async def run() -> list:
        pipe = RedisPipe(RedisAddress(REDIS_HOST, REDIS_PORT, db=TEST_REDIS_DB), timeout_s=5.0)
        try:
            # Some calls carry several commands (a batch request), interleaved with single ones.
            singles = [pipe.execute(command("HMGET", f"{own_keys}:{i}", "a", "b")) for i in range(300)]
            batch = pipe.execute(b"".join(command("HGET", f"{own_keys}:{i}", "b") for i in range(0, 300, 3)), 100)
            return await asyncio.gather(*singles, batch)
        finally:
            await pipe.aclose()

    *singles, batch = asyncio.run(run())
    assert singles == [[[f"a{i}".encode(), str(i * 7).encode()]] for i in range(300)]
    assert batch == [str(i * 7).encode() for i in range(0, 300, 3)]


def test_an_error_reply_fails_only_its_command(redis_client: redis.Redis, own_keys: str):
    redis_client.set(f"{own_keys}:string", "not a hash")
    redis_client.hset(f"{own_keys}:hash", "a", "1")

    async def run() -> tuple:
        pipe = RedisPipe(RedisAddress(REDIS_HOST, REDIS_PORT, db=TEST_REDIS_DB), timeout_s=5.0)
        try:
            wrong = pipe.execute(command("HGET", f"{own_keys}:string", "a"))
            right = pipe.execute(command("HGET", f"{own_keys}:hash", "a"))
            results = await asyncio.gather(wrong, right, return_exceptions=True)
            return (*results, await pipe.execute(command("HGET", f"{own_keys}:hash", "a")))
        finally:
            await pipe.aclose()

    wrong, right, after = asyncio.run(run())
    assert isinstance(wrong, FeatureStoreUnavailable) and "WRONGTYPE" in str(wrong)
    assert right == [b"1"] and after == [b"1"]


def test_password_and_db_are_sent_before_the_first_command(tmp_path: Path):
    port = free_port()
    with redis_server(port, tmp_path, password="s3cret"):
        redis.Redis(port=port, password="s3cret", db=3).set("where", "db3")

        async def read(password: str) -> list:
            pipe = RedisPipe(RedisAddress.from_options("127.0.0.1", port, {"password": password, "db": 3}), 5.0)
            try:
                return await pipe.execute(command("GET", "where"))
            finally:
                await pipe.aclose()

        assert asyncio.run(read("s3cret")) == [b"db3"]
        with pytest.raises(FeatureStoreUnavailable, match="WRONGPASS"):
            asyncio.run(read("wrong"))


def test_a_timeout_replaces_the_connection_and_later_commands_get_their_replies(tmp_path: Path):
    """A command outliving the timeout drops its connection (it may be half-open or stuck); the commands after it
    run on a new one and get their own replies, not the late "OK"."""
    port = free_port()
    with redis_server(port, tmp_path, options=("--enable-debug-command", "yes")):
        redis.Redis(port=port).set("k", "v")

        async def run() -> tuple:
            pipe = RedisPipe(RedisAddress("127.0.0.1", port), timeout_s=0.2)
            try:
                [before] = await pipe.execute(command("CLIENT", "ID"))
                with pytest.raises(FeatureStoreUnavailable, match="did not answer in time"):
                    await pipe.execute(command("DEBUG", "SLEEP", "0.5"))
                await asyncio.sleep(0.5)  # the server is single-threaded: it answers no one until the sleep ends
                [after] = await pipe.execute(command("CLIENT", "ID"))
                replies = await asyncio.gather(*(pipe.execute(command("GET", "k")) for _ in range(3)))
                return before, after, replies
            finally:
                await pipe.aclose()

        before, after, replies = asyncio.run(run())
        assert after != before
        assert replies == [[b"v"]] * 3


def test_a_stopped_server_fails_commands_and_a_restarted_one_serves_again(tmp_path: Path):
    port = free_port()

    async def ping(pipe: RedisPipe) -> list:
        return await pipe.execute(command("PING"))

    async def run() -> tuple:
        pipe = RedisPipe(RedisAddress("127.0.0.1", port), timeout_s=5.0)
        with redis_server(port, tmp_path):
            before = await ping(pipe)
        with pytest.raises(FeatureStoreUnavailable):
            await ping(pipe)
        with redis_server(port, tmp_path):
            after = await ping(pipe)
        await pipe.aclose()
        return before, after

    assert asyncio.run(run()) == ([b"PONG"], [b"PONG"])


def test_unsupported_connection_options_are_a_configuration_error():
    with pytest.raises(ConfigurationError, match="ssl_ca_certs"):
        RedisAddress.from_options("localhost", 6379, {"ssl": True, "ssl_ca_certs": "/etc/ca.pem"})
    assert RedisAddress.from_options("localhost", "6380", {"ssl": True, "db": 2}) == RedisAddress(
        "localhost", 6380, db=2, tls=True
    )
