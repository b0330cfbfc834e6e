"""`churn forget USER_ID`, proven by scanning every store and file the platform keeps, before and after.

A platform runs for real (redis profile and the embedded SQLite store both materialised, a champion in MLflow whose
run holds the test set, batch scoring, the API's prediction log, a quarantined row). The scan, written here and
not borrowed from the code under test, first finds the user everywhere; after `churn forget` it finds nothing, and
/predict gives the unknown-user answer. Then the next day's drop and accounts export arrive, still holding the
user (the source system does not know about the erasure): the daily pipeline drops those rows, and the scan and
/predict still find nothing.
"""

import csv
import json
import shutil
import sqlite3
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from typer.testing import CliRunner

from churn_common.settings import Settings
from churn_common.store import apply_repo
from jobs.cli import app
from jobs.materialize import materialize
from jobs.model_commands import run_training
from jobs.pipeline import run_daily
from monitoring.scoring import score_batch
from products import GeneratorConfig, users_as_of
from products.elearning import FEATURE_SERVICE
from products.elearning.generator import generate
from tests.conftest import TEST_REDIS_DB, unique_name
from tests.feature_repo.conftest import delete_project_keys
from tests.serving.conftest import app_client

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

START, HISTORY, USERS = date(2026, 1, 1), 150, 200
FIRST = START + timedelta(days=HISTORY - 1)


def _morning(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(2), UTC)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client):
    """The whole period generated aside (the source system); the data directory receives its drops day by day."""
    source = Settings(data_dir=tmp_path / "source")
    generate(source.paths, GeneratorConfig(USERS, START, HISTORY + 3, seed=29, late_share=0.0))
    data = tmp_path / "data"
    monkeypatch.setenv("CHURN_DATA_DIR", str(data))
    project = unique_name("forget")
    # `churn forget` runs as the CLI: its settings come from the environment.
    # 200 users leave a test window of a dozen churners: the gate's minimum is lowered so the first model serves.
    overrides = {"feast_project": project, "feast_profile": "redis", "redis_db": TEST_REDIS_DB}
    overrides["promotion_min_positives"] = 5
    for name, value in overrides.items():
        monkeypatch.setenv(f"CHURN_{name.upper()}", str(value))
    settings = Settings(data_dir=data, **overrides)
    yield settings, source
    delete_project_keys(redis_client, project)


def _deliver(settings: Settings, source: Settings, day: date) -> Path:
    """That day's drop and the accounts export as of the next morning, as the source system sends them."""
    name = f"date={day.isoformat()}"
    drop = settings.paths.raw_events / name
    shutil.copytree(source.paths.raw_events / name, drop)
    settings.paths.raw_users.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(users_as_of(pq.read_table(source.paths.raw_users), _morning(day)), settings.paths.raw_users)
    return drop


def _add_events(drop: Path, rows: list[dict]) -> None:
    """Extra raw rows for the user (one file more in the drop, the drop's own column types)."""
    template = pq.read_table(next(drop.glob("*.parquet")))
    frame = pd.DataFrame([{**template.slice(0, 1).to_pylist()[0], **row} for row in rows])
    pq.write_table(pa.Table.from_pandas(frame, schema=template.schema, preserve_index=False), drop / "extra.parquet")


def _at(settings: Settings, day: date) -> Settings:
    return settings.model_copy(update={"now": _morning(day)})


# --- the scan -------------------------------------------------------------------------------------------------


def _is_user(value: object, user: int) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return value == user
    text = str(value).strip()
    return text.isdigit() and int(text) == user


def _json_holds(node: object, user: int) -> bool:
    """A ``user_id``/``user_ids`` entry anywhere in a JSON document naming the user."""
    if isinstance(node, dict):
        return any(
            (key in {"user_id", "user_ids"} and _names(value, user)) or _json_holds(value, user)
            for key, value in node.items()
        )
    if isinstance(node, list):
        return any(_json_holds(item, user) for item in node)
    return False


def _names(value: object, user: int) -> bool:
    return any(_is_user(v, user) for v in value) if isinstance(value, list) else _is_user(value, user)


def _file_holds(path: Path, user: int) -> bool:
    if path.suffix == ".parquet":
        if "user_id" not in pq.read_schema(path).names:
            return False
        return any(_is_user(v, user) for v in pq.read_table(path, columns=["user_id"])["user_id"].to_pylist())
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            return any(_is_user(row.get("user_id"), user) for row in csv.DictReader(handle))
    if path.suffix == ".json":
        return _json_holds(json.loads(path.read_text()), user)
    if path.name == "ids.npy":  # a rolling-state checkpoint's user ids, which its per-user sums are indexed by
        return user in np.load(path)
    if path.suffix == ".jsonl":
        return any(_json_holds(json.loads(line), user) for line in path.read_text().splitlines() if line)
    return False


def _entity_key(user: int) -> bytes:
    key = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=user)])
    return serialize_entity_key(key, entity_key_serialization_version=3)


def _online_places(settings: Settings, user: int) -> set[str]:
    places = set()
    client = redis.Redis(host=settings.redis_host, port=settings.redis_port, db=settings.redis_db)
    if client.exists(_entity_key(user) + settings.feast_project.encode()):
        places.add("online:redis")
    client.close()
    for database in settings.paths.root.rglob("*.db"):
        if database.read_bytes()[:16] != b"SQLite format 3\x00":
            continue  # Feast's file registry: protobuf, no user rows
        with sqlite3.connect(database) as con:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                columns = {row[1] for row in con.execute(f'PRAGMA table_info("{table}")')}
                hit = (
                    "entity_key" in columns
                    and con.execute(
                        f'SELECT 1 FROM "{table}" WHERE entity_key = ? LIMIT 1', [_entity_key(user)]
                    ).fetchone()
                )
                if hit:
                    places.add(f"online:sqlite:{table}")
    return places


def traces(settings: Settings, user: int) -> set[str]:
    """Every place under the data directory (MLflow's artifacts included) and in the online stores holding the
    user, as paths relative to the data directory."""
    root = settings.paths.root
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and _file_holds(p, user)}
    return files | _online_places(settings, user)


def _kinds(places: set[str]) -> set[str]:
    prefixes = {
        "raw/events/": "raw events",
        "raw/users.parquet": "raw users",
        "validated/events/": "validated events",
        "validated/users.parquet": "validated users",
        "validated/user_history/": "account history",
        "features/user_daily_snapshots/": "snapshots",
        "features/user_account/": "account features",
        "features/rolling_state/": "rolling state",
        "quarantine/events/": "quarantine",
        "predictions/": "prediction log",
        "scoring/": "scored features",
        "reports/high_risk/": "high-risk list",
        "online:redis": "redis",
        "online:sqlite": "sqlite",
    }
    kinds = {kind for place in places for prefix, kind in prefixes.items() if place.startswith(prefix)}
    kinds |= {"mlflow test set" for place in places if place.startswith("mlflow/") and "test_set" in place}
    return kinds


def _api_answer(settings: Settings, user: int) -> tuple[int, dict]:
    with app_client(settings.model_copy(update={"prediction_log_share": 1.0})) as api:
        response = api.get("/predict", params={"user_id": user})
    return response.status_code, response.json()


# --- the test ---------------------------------------------------------------------------------------------------


def _run_platform(settings: Settings, source: Settings) -> Settings:
    for offset in range(HISTORY):
        _deliver(settings, source, START + timedelta(days=offset))
    today = _at(settings, FIRST)
    apply_repo(today)
    run_daily(today, FIRST)
    promotion = run_training(today, FEATURE_SERVICE, promote=True)["promotion"]
    assert promotion["decision"] == "promoted", promotion
    embedded = today.model_copy(update={"feast_profile": "embedded"})
    apply_repo(embedded)
    materialize(embedded)
    score_batch(today)
    return today


def _chosen_user(settings: Settings) -> int:
    """A user of the champion's test set on the high-risk list: held in as many places as a user can be."""
    test_sets = list((settings.paths.root / "mlflow").rglob("test_set.parquet"))
    assert test_sets, "the champion's run keeps its test set"
    tested = set(pq.read_table(test_sets[0], columns=["user_id"])["user_id"].to_pylist())
    listed = next(settings.paths.reports.glob("high_risk/*.csv"))
    with listed.open(newline="") as handle:
        risky = [int(row["user_id"]) for row in csv.DictReader(handle)]
    return next(user for user in risky if user in tested)


def test_forgotten_user_leaves_no_trace_and_stays_gone(world) -> None:
    settings, source = world
    today = _run_platform(settings, source)
    user = _chosen_user(today)
    status, body = _api_answer(today, user)
    assert status == 200 and body["status"] == "scored", body
    second = FIRST + timedelta(days=1)
    _add_events(_deliver(settings, source, second), [{"user_id": user, "event_type": "no_such_event"}])
    day_two = _at(settings, second)
    assert run_daily(day_two, second).validation["events"]["by_reason"]["unknown_event_type"] >= 1

    before = traces(day_two, user)
    expected = {
        "raw events",
        "raw users",
        "validated events",
        "validated users",
        "account history",
        "snapshots",
        "account features",
        "rolling state",
        "quarantine",
        "prediction log",
        "scored features",
        "high-risk list",
        "redis",
        "sqlite",
        "mlflow test set",
    }
    assert _kinds(before) == expected, sorted(before)

    done = CliRunner().invoke(app, ["forget", str(user), "--requested-by", "agent-7", "--reason", "ticket 4411"])
    assert done.exit_code == 0, done.output
    assert traces(day_two, user) == set()
    status, body = _api_answer(day_two, user)
    assert status == 404 and "unknown" in body["detail"], body

    audit = [json.loads(line) for line in (settings.paths.root / "privacy" / "audit.jsonl").read_text().splitlines()]
    assert len(audit) == 1 and audit[0]["requested_by"] == "agent-7" and audit[0]["reason"] == "ticket 4411"
    test_sets = {place for place in before if place.startswith("mlflow/") and "test_set" in place}
    assert audit[0]["rows"] >= len(before) and audit[0]["online_entries"] >= 2
    assert audit[0]["mlflow_artifacts"] == len(test_sets) >= 1
    assert str(user) not in {str(value) for value in audit[0].values()}

    # The next morning the source system sends the user again: a new event and their row in the accounts export.
    third = second + timedelta(days=1)
    _add_events(_deliver(settings, source, third), [{"user_id": user, "event_type": "login"}])
    day_three = _at(settings, third)
    validation = run_daily(day_three, third).validation
    assert validation["users"]["rows_forgotten"] == 1 and validation["events"]["rows_forgotten"] >= 1
    score_batch(day_three)
    assert traces(day_three, user) == set()  # the gate dropped the user's rows from the landing zone too
    status, body = _api_answer(day_three, user)
    assert status == 404, body

    again = CliRunner().invoke(app, ["forget", str(user), "--requested-by", "agent-7", "--reason", "ticket 4411"])
    assert again.exit_code == 0, again.output
    assert traces(day_three, user) == set()
    trail = (settings.paths.root / "privacy" / "audit.jsonl").read_text().splitlines()
    assert len(trail) == 2 and json.loads(trail[1])["rows"] == 0
