"""The push path on the real world (Redis db 11, the repo's Feast definitions, a real uvicorn): today's events pushed
with POST /events show in the next /predict; bad events are refused whole; concurrent pushes for one user add up;
the Redis script writes what Feast's own push writes; and the online row after pushing equals the offline row the
nightly build writes from the same events, read with get_historical_features (the parity of the today view).

Time is the settings clock (CHURN_NOW): noon of the world's day, so "today" is the day its snapshots are fresh on."""

import json
import math
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from feast.data_source import PushMode
from feast.infra.online_stores.helpers import _mmh3
from pydantic import SecretStr

from churn_common.errors import DataError
from churn_common.files import write_table_atomically
from churn_common.names import ACCOUNT_TABLE, TODAY_PUSH_SOURCE, TODAY_TABLE
from churn_common.settings import Settings
from churn_common.store import apply_repo, feature_store
from jobs.push_commands import push_table, read_events
from products.elearning import CATALOG
from serving.features import user_key_prefix
from serving.push import FeastTodayWriter
from serving.schemas import PushResponse
from tests.conftest import REDIS_HOST, REDIS_PORT, TEST_REDIS_DB
from tests.serving.conftest import app_client
from tests.serving.world import CLOSED_USERS, FRESH_USERS, UNKNOWN_USER, World
from transformations.today import build_today_table, today_fields, today_partition, today_rows, with_values

pytestmark = pytest.mark.redis
FIELDS = [field.name for field in today_fields(CATALOG)]
VALUED = [t.name for t in CATALOG.event_types if t.has_value]
PLAIN = [t.name for t in CATALOG.event_types if not t.has_value]
USERS = list(FRESH_USERS[:8])  # the users these tests push for; their today fields are removed afterwards


def noon(world: World) -> datetime:
    return datetime.combine(world.built_at.date(), datetime.min.time(), UTC) + timedelta(hours=12)


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=TEST_REDIS_DB)
    yield connection
    connection.close()


def key(world: World, user_id: int) -> bytes:
    return user_key_prefix() + user_id.to_bytes(8, "little", signed=True) + world.settings.feast_project.encode()


def today_fields_of(client: redis.Redis, world: World, user_id: int) -> dict[bytes, bytes]:
    names = [_mmh3(f"{TODAY_TABLE}:{name}") for name in FIELDS] + [f"_ts:{TODAY_TABLE}".encode()]
    stored = zip(names, client.hmget(key(world, user_id), names), strict=True)
    return {name: value for name, value in stored if value is not None}


def forget_today(client: redis.Redis, world: World, users) -> None:
    """Remove what these tests wrote (the today view's fields of their users), nothing else of the hashes."""
    for user in users:
        fields = list(today_fields_of(client, world, user))
        if fields:
            client.hdel(key(world, user), *fields)


@pytest.fixture
def clean(client: redis.Redis, world: World) -> Iterator[None]:
    forget_today(client, world, [*USERS, UNKNOWN_USER])
    yield
    forget_today(client, world, [*USERS, UNKNOWN_USER])


@pytest.fixture(scope="module")
def at_noon(world: World) -> Settings:
    return world.settings.model_copy(update={"now": noon(world)})


@pytest.fixture(scope="module")
def api(at_noon: Settings) -> Iterator[httpx.Client]:
    with app_client(at_noon) as http:
        yield http


def event(world: World, user_id: int, event_type: str, minutes: float, value: float | None = None) -> dict:
    moment = noon(world) - timedelta(minutes=minutes)
    body = {"user_id": user_id, "event_type": event_type, "event_timestamp": moment.isoformat()}
    return body | ({"value": value} if value is not None else {})


def test_pushed_events_show_in_the_next_prediction(world: World, api: httpx.Client, clean):
    user, (first_type, second_type), valued = USERS[0], PLAIN[:2], VALUED[0]
    before = api.get("/predict", params={"user_id": user}).json()["today"]
    assert before["as_of"] is None and set(before["events"].values()) == {0}
    events = [
        event(world, user, first_type, 30),
        event(world, user, first_type, 20),
        event(world, user, valued, 40, 12.25),
    ]
    pushed = api.post("/events", json={"events": events})
    assert pushed.status_code == 200, pushed.text
    PushResponse.model_validate(pushed.json())
    body = api.get("/predict", params={"user_id": user}).json()
    today = body["today"]
    assert today == pushed.json()["users"][0]["today"]
    assert today["events"] == {t: 2 if t == first_type else (1 if t == valued else 0) for t in CATALOG.names}
    assert today["values"][valued] == 12.25 and today["active"] is True
    assert datetime.fromisoformat(today["as_of"]) == noon(world) - timedelta(minutes=20)
    assert today["day"] == noon(world).date().isoformat()
    assert body["status"] == "scored" and second_type in today["events"]


def test_an_earlier_event_pushed_later_still_counts_and_keeps_the_newest_time(world: World, api: httpx.Client, clean):
    # Feast's own Redis push drops a row whose event time is not after the stored one: this one must not.
    user, kind = USERS[1], PLAIN[0]
    assert api.post("/events", json={"events": [event(world, user, kind, 5)]}).status_code == 200
    later = api.post("/events", json={"events": [event(world, user, kind, 90)]}).json()["users"][0]["today"]
    assert later["events"][kind] == 2
    assert datetime.fromisoformat(later["as_of"]) == noon(world) - timedelta(minutes=5)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"event_type": "no_such_type"}, "unknown_event_type"),
        ({"event_type": VALUED[0]}, "invalid_value"),  # a valued type without a value
        ({"value": 3.0}, "invalid_value"),  # a plain type with one
        ({"event_type": VALUED[0], "value": 1e12}, "invalid_value"),  # outside the catalogue's range
        ({"event_timestamp": "2999-01-01T00:00:00+00:00"}, "future_timestamp"),
        ({"minutes": 13 * 60}, "not_today"),
    ],
)
def test_a_bad_event_refuses_the_whole_request_and_writes_nothing(
    world: World, api: httpx.Client, client: redis.Redis, clean, change: dict, words: str
):
    good = event(world, USERS[2], PLAIN[0], 10)
    minutes = change.pop("minutes", None)
    bad = event(world, USERS[3], PLAIN[0], minutes or 10) | change
    response = api.post("/events", json={"events": [good, bad]})
    assert response.status_code == 422 and words in response.text and "event 1" in response.text, response.text
    assert today_fields_of(client, world, USERS[2]) == {} and today_fields_of(client, world, USERS[3]) == {}


def test_nan_too_many_events_an_unknown_user_or_a_closed_account_are_refused(
    world: World, api: httpx.Client, client: redis.Redis, clean
):
    nan = '{"events": [{"user_id": 1, "event_type": "%s", "event_timestamp": "%s", "value": NaN}]}'
    text = nan % (VALUED[0], noon(world).isoformat())
    assert api.post("/events", content=text, headers={"content-type": "application/json"}).status_code == 422
    many = [event(world, USERS[2], PLAIN[0], 1)] * (world.settings.push_max_events + 1)
    assert "at most" in api.post("/events", json={"events": many}).text
    unknown = api.post(
        "/events", json={"events": [event(world, USERS[2], PLAIN[0], 1), event(world, UNKNOWN_USER, PLAIN[0], 1)]}
    )
    assert unknown.status_code == 422 and "unknown_user" in unknown.text
    assert not client.exists(key(world, UNKNOWN_USER)) and today_fields_of(client, world, USERS[2]) == {}
    # The world's closed users closed yesterday: today's events come after the closure.
    closed = api.post("/events", json={"events": [event(world, CLOSED_USERS[0], PLAIN[0], 1)]})
    assert closed.status_code == 422 and "after_closure" in closed.text
    assert today_fields_of(client, world, CLOSED_USERS[0]) == {}


def test_concurrent_pushes_for_one_user_all_count(world: World, api: httpx.Client, clean):
    user, kind, valued, pushes = USERS[4], PLAIN[0], VALUED[0], 60
    bodies = [{"events": [event(world, user, kind, i % 50), event(world, user, valued, 1, 0.5)]} for i in range(pushes)]
    base = api.base_url

    def push(body: dict) -> int:
        return httpx.post(f"{base}/events", json=body, timeout=30).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(push, bodies))
    assert set(statuses) == {200}, Counter(statuses)
    today = api.get("/predict", params={"user_id": user}).json()["today"]
    assert today["events"][kind] == pushes and today["events"][valued] == pushes
    assert today["values"][valued] == pushes * 0.5


def test_the_push_path_needs_the_token(world: World, at_noon: Settings, clean):
    secured = at_noon.model_copy(update={"api_token": SecretStr("tok-push-1")})
    body = {"events": [event(world, USERS[5], PLAIN[0], 1)]}
    with app_client(secured) as http:
        assert http.post("/events", json=body).status_code == 401
        assert http.post("/events", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.post("/events", json=body, headers={"Authorization": "Bearer tok-push-1"}).status_code == 200


def _events(world: World, users: list[int]) -> pd.DataFrame:
    return _events_at(noon(world), users)


def _events_at(now: datetime, users: list[int]) -> pd.DataFrame:
    """Events of the day before ``now`` for ``users``, values with many decimals (sums that depend on their order in
    floating point)."""
    rows = []
    for i, user in enumerate(users):
        for j in range(12):
            event_type = CATALOG.event_types[(i + j) % len(CATALOG.event_types)]
            value = round(min(event_type.value_max, 9.0) * ((j * 7919 + i) % 997) / 997 + 0.1234567, 6)
            stamp = now - timedelta(minutes=(j * 37 + i) % 600, microseconds=j * 11)
            rows.append((user, stamp, event_type.name, value if event_type.has_value else None))
    return pd.DataFrame(rows, columns=["user_id", "event_timestamp", "event_type", "value"])


def _json_events(frame: pd.DataFrame) -> list[dict]:
    """The events as POST /events takes them: no value where the type carries none."""
    events = []
    for row in frame.to_dict("records"):
        body = {"user_id": row["user_id"], "event_type": row["event_type"]}
        body["event_timestamp"] = row["event_timestamp"].isoformat()
        if row["value"] is not None and not math.isnan(row["value"]):
            body["value"] = row["value"]
        events.append(body)
    return events


def _validated(frame: pd.DataFrame, now: datetime) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    stamps = pa.array(frame["event_timestamp"].dt.as_unit("us"), pa.timestamp("us", tz="UTC"))
    table = table.set_column(1, "event_timestamp", stamps)
    return table.append_column("ingested_at", pa.array([now] * len(frame), pa.timestamp("us", tz="UTC")))


def _offline_and_online(settings: Settings, frame: pd.DataFrame, now: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The day's events through the gate's validated table and the nightly build's writer, read back offline with
    get_historical_features at ``now``; and what the online store holds, read with Feast's own online read."""
    store = feature_store(settings)
    day_dir = settings.paths.events / f"date={now.date()}"
    write_table_atomically(_validated(frame, now), day_dir / "batch=push-parity.parquet")
    try:
        build_today_table(settings, now.date())
        users = sorted(frame["user_id"].unique().tolist())
        entities = pd.DataFrame({"user_id": users, "event_timestamp": now})
        refs = [f"{TODAY_TABLE}:{name}" for name in FIELDS]
        offline = store.get_historical_features(entity_df=entities, features=refs).to_df().set_index("user_id")
        online = store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in users]).to_df()
        return offline.loc[users, FIELDS], online.set_index("user_id").loc[users, FIELDS]
    finally:
        (day_dir / "batch=push-parity.parquet").unlink()
        today_partition(settings, now.date()).unlink(missing_ok=True)


def assert_same_rows(offline: pd.DataFrame, online: pd.DataFrame, frame: pd.DataFrame, now: datetime) -> None:
    expected = with_values(today_rows(_validated(frame, now), CATALOG), CATALOG).to_pandas().set_index("user_id")
    for name in FIELDS:  # equal to the last bit: the sums are exact in micro-units whatever the order
        assert offline[name].tolist() == online[name].tolist() == expected.loc[offline.index, name].tolist(), name
    assert offline.notna().all().all()


def test_online_after_pushing_equals_offline_after_the_nightly_build(world: World, api: httpx.Client, clean):
    now = noon(world)
    frame = _events(world, USERS[:5])
    # Several requests, each mixing users and out of time order.
    for _, chunk in frame.groupby(frame.index % 5):
        assert api.post("/events", json={"events": _json_events(chunk)}).status_code == 200
    offline, online = _offline_and_online(world.settings, frame, now)
    assert_same_rows(offline, online, frame, now)


def test_the_embedded_profile_pushes_through_feast_with_the_same_parity(settings: Settings):
    """No Redis: Feast's SQLite store, written by ``store.push`` (FeastTodayWriter), read back by Feast."""
    store = apply_repo(settings)
    now = datetime(2026, 5, 4, 15, 30, tzinfo=UTC)
    users = [1, 2, 3]
    accounts = pd.DataFrame(
        {"user_id": users, "valid_from": now - timedelta(days=90), "created": now - timedelta(days=90)}
    )
    for name in CATALOG.account_attributes:
        accounts[name] = "x"
    store.write_to_online_store(ACCOUNT_TABLE, accounts.assign(account_status="open"))
    frame = _events_at(now, users)
    writer = FeastTodayWriter(store, store.get_feature_view(TODAY_TABLE), CATALOG, 5.0)
    for _, chunk in frame.groupby(frame.index % 4):
        writer.add_now(today_rows(_validated(chunk, now), CATALOG), now.date())
    offline, online = _offline_and_online(settings, frame, now)
    assert_same_rows(offline, online, frame, now)


def test_the_redis_script_writes_what_feast_push_writes(world: World, api: httpx.Client, client: redis.Redis, clean):
    now, store = noon(world), feature_store(world.settings)
    scripted, pushed = USERS[6], USERS[7]
    columns = ["user_id", "event_timestamp", "event_type", "value"]
    rows = [(scripted, now - timedelta(minutes=7), t.name, 1.5 if t.has_value else None) for t in CATALOG.event_types]
    frame = pd.DataFrame(rows, columns=columns)
    assert api.post("/events", json={"events": _json_events(frame)}).status_code == 200
    row = with_values(today_rows(_validated(frame, now), CATALOG), CATALOG).to_pandas().assign(user_id=pushed)
    store.push(TODAY_PUSH_SOURCE, row, to=PushMode.ONLINE)
    written = today_fields_of(client, world, scripted)
    assert len(written) == len(FIELDS) + 1 and written == today_fields_of(client, world, pushed)


def test_churn_push_takes_json_lines_and_adds_beside_the_api(
    world: World, api: httpx.Client, at_noon: Settings, tmp_path, clean
):
    user, kind, valued = USERS[3], PLAIN[0], VALUED[0]
    assert api.post("/events", json={"events": [event(world, user, kind, 3)]}).status_code == 200
    lines = [
        event(world, user, kind, 2),
        event(world, user, valued, 1, 2.5),
        event(world, user, kind, 0) | {"value": None},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    parquet = tmp_path / "events.parquet"
    pq.write_table(read_events(path), parquet)
    assert read_events(parquet).equals(read_events(path))
    [row] = push_table(at_noon, CATALOG, read_events(path), at_noon.clock())
    today = api.get("/predict", params={"user_id": user}).json()["today"]
    assert today["events"][kind] == 3 and today["values"][valued] == 2.5
    assert datetime.fromisoformat(today["as_of"]) == row.as_of == noon(world)
    with pytest.raises(DataError, match="not_today"):
        push_table(at_noon, CATALOG, read_events(path), at_noon.clock() + timedelta(days=1))
