"""Gathered /predict lookups against the real world (Redis, MLflow champion): the requests of one event-loop
iteration share one Redis read and one model call and each gets its own answer; those arriving while batches are
in flight share the next; a failure reaches every request of its batch; a request that goes away does not disturb the
others."""

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from churn_common.errors import FeatureStoreUnavailable
from churn_common.feature_frame import service_schema
from churn_common.online import OnlineVector
from churn_common.population import PopulationRule, Status
from churn_common.store import feature_store
from products.elearning import FEATURE_SERVICE
from serving.features import FeatureReader, make_reader, redis_pipe
from serving.lookups import MAX_BATCHES_IN_FLIGHT, Lookup, Lookups
from serving.metrics import ServingMetrics
from serving.model_loader import Champion, ChampionLoader
from serving.redis_pipe import RedisAddress, RedisPipe
from serving.scoring import BatchScorer, Scored
from tests.serving.expected import expected_prediction
from tests.serving.world import (
    CLOSED_USERS,
    FRESH_USERS,
    INACTIVE_USERS,
    STALE_USERS,
    UNKNOWN_USER,
    World,
    free_port,
)

pytestmark = pytest.mark.redis
USERS = [
    FRESH_USERS[0],
    STALE_USERS[0],
    CLOSED_USERS[0],
    FRESH_USERS[1],
    UNKNOWN_USER,
    INACTIVE_USERS[0],
    FRESH_USERS[2],
]
STATUSES = [
    Status.SCORED,
    Status.STALE,
    Status.CLOSED,
    Status.SCORED,
    Status.UNKNOWN,
    Status.INACTIVE,
    Status.SCORED,
]


def wall_clock() -> datetime:
    return datetime.now(UTC)


def lookups_of(champion: Champion, clock: Callable[[], datetime] = wall_clock) -> Lookups:
    return Lookups(champion, ServingMetrics(), clock)


class RecordingReader:
    """The real reader, recording the users of each read."""

    def __init__(self, reader: FeatureReader) -> None:
        self.reader = reader
        self.reads: list[list[int]] = []

    async def read(self, user_ids: Sequence[int], now: datetime, deadline: float | None = None) -> list[OnlineVector]:
        self.reads.append(list(user_ids))
        return await self.reader.read(user_ids, now, deadline)

    async def newest_timestamp(self) -> datetime | None:
        return await self.reader.newest_timestamp()

    async def ping(self) -> None:
        await self.reader.ping()


def load_champion(world: World, pipe: RedisPipe, wrap: Callable[[FeatureReader], FeatureReader]) -> Champion:
    store = feature_store(world.settings)
    rule = PopulationRule(world.settings.active_window_days)
    loader = ChampionLoader(
        world.settings.tracking_uri, store, lambda s, service: wrap(make_reader(s, service, pipe, 5.0)), rule, 0
    )
    return loader.load(loader.champion_version())


def with_model_call(champion: Champion, call: Callable[[Sequence[OnlineVector]], list[Scored]]) -> Champion:
    return dataclasses.replace(champion, scorer=BatchScorer(call, inline_max_users=100))


def test_one_iterations_requests_share_one_read_and_one_model_call(world: World):
    calls: list[list[int]] = []

    async def scenario() -> tuple[Champion, list[Lookup]]:
        pipe = redis_pipe(feature_store(world.settings), timeout_s=5.0)
        champion = load_champion(world, pipe, RecordingReader)
        model_call = champion.scorer.call

        def recording(vectors: Sequence[OnlineVector]) -> list[Scored]:
            calls.append([v.user_id for v in vectors])
            return model_call(vectors)

        champion = with_model_call(champion, recording)
        lookups = lookups_of(champion)
        try:
            return champion, await asyncio.gather(*(lookups(user_id) for user_id in USERS))
        finally:
            await pipe.aclose()

    champion, found = asyncio.run(scenario())

    assert champion.reader.reads == [USERS]
    # Only the users the population rule scores reach the model.
    assert calls == [[FRESH_USERS[0], FRESH_USERS[1], FRESH_USERS[2]]]
    assert [lookup.vector.user_id for lookup in found] == USERS
    assert [lookup.status for lookup in found] == STATUSES
    assert len({lookup.now for lookup in found}) == 1
    schema = service_schema(feature_store(world.settings).get_feature_service(FEATURE_SERVICE))
    for lookup in found:
        if lookup.vector.user_id in FRESH_USERS:
            expected = expected_prediction(world.model, schema, world.snapshots, lookup.vector.user_id)
            assert lookup.scored.probability == pytest.approx(expected["probability"], abs=1e-9)
            assert [r["feature"] for r in lookup.scored.reasons] == [r["feature"] for r in expected["reasons"]]
        else:
            assert lookup.scored is None
    assert found[1].vector.stale_views and found[4].vector.as_of is None


def test_requests_arriving_while_batches_are_in_flight_go_together_in_the_next(world: World):
    gate = asyncio.Event()

    class GatedReader(RecordingReader):
        async def read(
            self, user_ids: Sequence[int], now: datetime, deadline: float | None = None
        ) -> list[OnlineVector]:
            self.reads.append(list(user_ids))
            await gate.wait()
            return await self.reader.read(user_ids, now, deadline)

    async def scenario() -> tuple[list[list[int]], list[list[int]], list[Lookup]]:
        pipe = redis_pipe(feature_store(world.settings), timeout_s=5.0)
        champion = load_champion(world, pipe, GatedReader)
        lookups = lookups_of(champion)
        try:
            async with asyncio.timeout(10):
                requests = []
                for user_id in FRESH_USERS[:MAX_BATCHES_IN_FLIGHT]:  # one batch each, all waiting on their reads
                    requests.append(asyncio.create_task(lookups(user_id)))
                    while len(champion.reader.reads) < len(requests):
                        await asyncio.sleep(0)
                late = FRESH_USERS[MAX_BATCHES_IN_FLIGHT : MAX_BATCHES_IN_FLIGHT + 2]
                requests += [asyncio.create_task(lookups(user_id)) for user_id in late]
                for _ in range(5):
                    await asyncio.sleep(0)
                reads_while_in_flight = [list(read) for read in champion.reader.reads]
                gate.set()
                found = await asyncio.gather(*requests)
            return reads_while_in_flight, champion.reader.reads, found
        finally:
            await pipe.aclose()

    while_in_flight, reads, found = asyncio.run(scenario())

    first = [[user_id] for user_id in FRESH_USERS[:MAX_BATCHES_IN_FLIGHT]]
    assert while_in_flight == first
    assert reads == [*first, list(FRESH_USERS[MAX_BATCHES_IN_FLIGHT : MAX_BATCHES_IN_FLIGHT + 2])]
    assert [lookup.vector.user_id for lookup in found] == list(FRESH_USERS[: MAX_BATCHES_IN_FLIGHT + 2])
    assert all(lookup.scored is not None for lookup in found)


def test_a_request_arriving_as_a_batch_ends_starts_one_batch_not_two(world: World):
    """A request made as soon as its batch answered still finds that batch counted in flight and schedules a launch,
    while the batch's end starts the next batch with the request's id: the scheduled launch must find nothing."""

    async def scenario() -> tuple[list[list[int]], Lookup, Lookup]:
        pipe = redis_pipe(feature_store(world.settings), timeout_s=5.0)
        champion = load_champion(world, pipe, RecordingReader)
        lookups = lookups_of(champion)
        try:
            async with asyncio.timeout(10):
                first = await lookups(UNKNOWN_USER)  # resumes before its batch's end is handled
                second = await lookups(FRESH_USERS[0])
                for _ in range(5):
                    await asyncio.sleep(0)
            return champion.reader.reads, first, second
        finally:
            await pipe.aclose()

    reads, first, second = asyncio.run(scenario())

    assert reads == [[UNKNOWN_USER], [FRESH_USERS[0]]]
    assert first.scored is None and second.scored is not None


def test_an_unreachable_store_fails_every_request_of_the_batch(world: World):
    async def scenario() -> list[BaseException | Lookup]:
        # Nothing listens on a fresh free port: the read fails as a stopped Redis would.
        pipe = RedisPipe(RedisAddress("127.0.0.1", free_port()), timeout_s=1.0)
        lookups = lookups_of(load_champion(world, pipe, lambda reader: reader))
        async with asyncio.timeout(10):  # a failure that reached no request would leave them waiting
            return await asyncio.gather(*(lookups(user_id) for user_id in USERS[:3]), return_exceptions=True)

    outcomes = asyncio.run(scenario())

    assert len(outcomes) == 3 and all(isinstance(outcome, FeatureStoreUnavailable) for outcome in outcomes)


def test_a_failed_model_call_fails_its_batch_and_the_next_batch_is_scored(world: World):
    failing = True

    async def scenario() -> tuple[list[BaseException | Lookup], Lookup]:
        pipe = redis_pipe(feature_store(world.settings), timeout_s=5.0)
        champion = load_champion(world, pipe, lambda reader: reader)
        model_call = champion.scorer.call

        def sometimes_failing(vectors: Sequence[OnlineVector]) -> list[Scored]:
            if failing:
                raise RuntimeError("model exploded")
            return model_call(vectors)

        lookups = lookups_of(with_model_call(champion, sometimes_failing))
        try:
            async with asyncio.timeout(10):  # a failure that reached no request would leave them waiting
                failed = await asyncio.gather(*(lookups(u) for u in FRESH_USERS[:2]), return_exceptions=True)
            nonlocal failing
            failing = False
            return failed, await lookups(FRESH_USERS[0])
        finally:
            await pipe.aclose()

    failed, later = asyncio.run(scenario())

    assert all(isinstance(outcome, RuntimeError) for outcome in failed)
    assert later.scored is not None and later.vector.user_id == FRESH_USERS[0]


def test_a_request_that_goes_away_does_not_disturb_its_batch(world: World):
    async def scenario() -> tuple[asyncio.Task, Lookup]:
        pipe = redis_pipe(feature_store(world.settings), timeout_s=5.0)
        lookups = lookups_of(load_champion(world, pipe, lambda reader: reader))
        try:
            gone = asyncio.create_task(lookups(FRESH_USERS[0]))
            stays = asyncio.create_task(lookups(FRESH_USERS[1]))
            await asyncio.sleep(0)  # both queued in this iteration; the batch starts in the next
            gone.cancel()
            return gone, await stays
        finally:
            await pipe.aclose()

    gone, stays = asyncio.run(scenario())

    assert gone.cancelled()
    assert stays.vector.user_id == FRESH_USERS[1] and stays.scored is not None


def test_the_clock_given_decides_freshness(world: World):
    """The lookups judge freshness at their clock's instant: five days on, nothing open is fresh any more."""
    frozen = world.built_at + timedelta(days=5)

    async def scenario() -> list[Lookup]:
        pipe = redis_pipe(feature_store(world.settings), timeout_s=5.0)
        lookups = lookups_of(load_champion(world, pipe, lambda reader: reader), lambda: frozen)
        try:
            return await asyncio.gather(*(lookups(user_id) for user_id in USERS))
        finally:
            await pipe.aclose()

    found = asyncio.run(scenario())

    assert {lookup.now for lookup in found} == {frozen}
    expected = [Status.STALE if s in (Status.SCORED, Status.INACTIVE) else s for s in STATUSES]
    assert [lookup.status for lookup in found] == expected
    assert all(lookup.scored is None for lookup in found)
