"""Fourteen simulated days of unattended operation on the redis profile (real Redis, real MLflow champion).

A period is generated, then `churn pipeline daily` runs day after day on a simulated clock (Settings.now), each day
after that day's accounts export has landed. On the way: a build that lands after a materialisation run, a missed
day, a day run twice, a plain `feast apply` between days, and a profile (embedded) materialised for the first time
half-way. After every day: the online store holds exactly what the offline store says was known (feature by
feature, every user, through the model's FeatureService), /ready is true, /predict answers every user the
population rule scores with the champion's offline probability and every other user with a clear non-5xx answer,
and the materialisation metrics are what was written."""

import os
import shutil
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from churn_common.feature_frame import normalize, service_schema
from churn_common.names import ACCOUNT_TABLE, CHAMPION_ALIAS, SNAPSHOT_TABLE
from churn_common.online import OnlineReader
from churn_common.population import PopulationRule, Status
from churn_common.settings import PROJECT_ROOT, Settings
from churn_common.store import apply_repo, feature_store
from jobs.materialize import materialize
from jobs.model_commands import run_training
from jobs.pipeline import run_daily
from products import GeneratorConfig, users_as_of
from products.elearning import FEATURE_SERVICE
from products.elearning.generator import generate
from tests.conftest import unique_name
from tests.feature_repo.conftest import delete_project_keys
from tests.serving.conftest import app_client
from training import registry
from transformations.features import read_builds

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.slow]

START, HISTORY, SIMULATED = date(2026, 3, 1), 150, 14
USERS = 300
FEAST = Path(sys.executable).with_name("feast")
LATE_BUILD, MISSED, RERUN, PLAIN_APPLY, FIRST_EMBEDDED = 3, 5, 7, 9, 11


def _morning(day: date, hour: int = 1) -> datetime:
    """The simulated clock: ``hour`` o'clock on the day after ``day`` (the CronJob's time)."""
    return datetime.combine(day + timedelta(days=1), time(hour), UTC)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client):
    """A copy of the feature repo with ../data beside it (plain `feast` commands then use this data, as from a
    clone), its project renamed to one of this test's own; the generated raw data; settings on the redis profile."""
    project = unique_name("sim")
    repo = tmp_path / "feature_repo"
    shutil.copytree(PROJECT_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("__pycache__"))
    for yaml in repo.glob("feature_store*.yaml"):
        yaml.write_text(yaml.read_text().replace("project: churn\n", f"project: {project}\n"))
    data = tmp_path / "data"
    monkeypatch.setenv("CHURN_DATA_DIR", str(data))
    settings = Settings(
        data_dir=data,
        feature_repo=repo,
        feast_project=project,
        feast_profile="redis",
        redis_db=int(os.environ.get("CHURN_TEST_REDIS_DB", "11")),
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    generate(settings.paths, GeneratorConfig(USERS, START, HISTORY + SIMULATED + 1, seed=17, late_share=0.05))
    shutil.copy(settings.paths.raw_users, tmp_path / "users_full.parquet")
    yield settings
    delete_project_keys(redis_client, project)


def _at(settings: Settings, clock: datetime, **changes) -> Settings:
    return settings.model_copy(update={"now": clock, **changes})


def _export_accounts(settings: Settings, day: date) -> None:
    """The accounts export as it is at the end of ``day``: what lands beside that day's drop."""
    full = pq.read_table(settings.paths.raw.parent.parent / "users_full.parquet")
    pq.write_table(users_as_of(full, _morning(day, 0)), settings.paths.raw_users)


def _features(settings: Settings) -> dict[str, bytes]:
    roots = [settings.paths.validated, settings.paths.snapshots, settings.paths.features / ACCOUNT_TABLE]
    return {str(p): p.read_bytes() for root in roots for p in sorted(root.rglob("*.parquet"))}


def _known_users(settings: Settings) -> list[int]:
    return sorted(pq.read_table(settings.paths.users)["user_id"].to_pylist())


def _online_equals_offline(settings: Settings) -> pd.DataFrame:
    """Every user's vector online (the ttl rule applied) equals the point-in-time vector offline at the clock."""
    store = feature_store(settings)
    service = store.get_feature_service(FEATURE_SERVICE)
    schema = service_schema(service)
    users, clock = _known_users(settings), settings.clock()
    entities = pd.DataFrame({"user_id": users, "event_timestamp": pd.Timestamp(clock).as_unit("us")})
    offline = store.get_historical_features(entities, features=service, filter_by_created_timestamp=True).to_df()
    offline = normalize(offline.set_index("user_id").reindex(users), schema)
    vectors = OnlineReader(store, service).read(users, clock)
    online = normalize(pd.DataFrame([v.features for v in vectors], index=users), schema)
    pd.testing.assert_frame_equal(online, offline, check_names=False, obj=f"online vs offline at {clock}")
    return offline


def _answers(settings: Settings, offline: pd.DataFrame) -> dict[str, int]:
    """/ready, and /predict/batch for every known user against the rule and the champion applied offline."""
    client = registry.connect(settings)
    model = registry.load_model(registry.version_by_alias(client, CHAMPION_ALIAS))
    statuses = PopulationRule(settings.active_window_days).statuses(offline)
    probabilities = model.predict_proba(offline)
    expected = dict(zip(offline.index, zip(statuses, probabilities, strict=True), strict=True))
    counts: dict[str, int] = {}
    with app_client(settings) as api:
        ready = api.get("/ready")
        assert ready.status_code == 200 and ready.json()["ready"], ready.text
        users = list(offline.index)
        for start in range(0, len(users), settings.batch_max_ids):
            body = api.post("/predict/batch", json={"user_ids": users[start : start + settings.batch_max_ids]})
            assert body.status_code == 200, body.text
            for entry in body.json()["results"]:
                status, probability = expected[entry["user_id"]]
                assert entry.get("status") == str(status), (entry, status)  # never a 5xx entry
                if status == Status.SCORED:
                    assert entry["churn_probability"] == pytest.approx(probability, abs=1e-9)
                else:
                    assert entry["churn_probability"] is None and entry["detail"]
                counts[str(status)] = counts.get(str(status), 0) + 1
        unknown = api.get("/predict", params={"user_id": max(users) + 1})
        assert unknown.status_code == 404 and "unknown" in unknown.json()["detail"]
    return counts


def _metrics_match(settings: Settings, report) -> None:
    prom = (settings.paths.metrics / "materialize.prom").read_text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(prom)
        for s in f.samples
    }
    project = ("project", settings.feast_project)
    assert samples[("churn_materialize_build", (project,))] == read_builds(settings.paths)[-1].seq
    newest = pd.read_parquet(settings.paths.snapshots, columns=["event_timestamp"]).event_timestamp.max()
    assert samples[("churn_materialize_newest_feature_timestamp_seconds", (project,))] == newest.timestamp()
    for run in report["sources"]:
        key = ("churn_materialize_rows_written", (project, ("source", run["source"])))
        assert samples[key] == run["received"] == run["expected"]


def _today_tables_count_the_validated_events(settings: Settings, report: dict) -> None:
    """Each today table the run rewrote counts every validated event of its day (the offline side of the push view),
    the run's own day among them."""
    assert report["day"] in {entry["day"] for entry in report["today"]}
    catalog = settings.event_catalog()
    counts = [f"{event_type.count_feature}_today" for event_type in catalog.event_types]
    for entry in report["today"]:
        table = pq.read_table(settings.paths.today / f"date={entry['day']}" / "part-0.parquet")
        events = pq.read_table(settings.paths.events / f"date={entry['day']}")
        known = sum(1 for name in events["event_type"].to_pylist() if name in catalog.names)
        assert sum(sum(table[column].to_pylist()) for column in counts) == known > 0, entry


def _day(settings: Settings, day: date) -> dict:
    _export_accounts(settings, day)
    report = run_daily(_at(settings, _morning(day)), day)
    _metrics_match(settings, report.materialization)
    _today_tables_count_the_validated_events(settings, report.as_dict())
    return report.as_dict()


def test_fourteen_days_unattended(world: Settings) -> None:
    settings = world
    first = START + timedelta(days=HISTORY - 1)
    apply_repo(settings)
    _export_accounts(settings, first)
    backfill = run_daily(_at(settings, _morning(first)), first)
    assert backfill.materialization["mode"] == "refill" and len(backfill.validated) == HISTORY
    summary = run_training(_at(settings, _morning(first)), FEATURE_SERVICE, promote=True)
    assert summary["promotion"]["decision"] == "promoted"
    seen: dict[str, int] = {}

    for offset in range(1, SIMULATED + 1):
        day = first + timedelta(days=offset)
        today = _at(settings, _morning(day, 6))
        if offset == MISSED:
            continue
        if offset == LATE_BUILD:
            # The materialisation runs before the day's build has landed: nothing new, yesterday's rows serve on.
            early = materialize(_at(settings, _morning(day)))
            assert early.mode == "noop" and early.users_written == 0
            _export_accounts(settings, day)
            report = run_daily(_at(settings, _morning(day, 4)), day)
            assert report.materialization["mode"] == "incremental" and report.materialization["users_written"] > 0
        elif offset == RERUN:
            report = _day(settings, day)
            written = _features(settings)
            again = _day(settings, day)
            assert _features(settings) == written  # byte-identical
            assert again["materialization"]["mode"] in {"noop", "incremental"}
        elif offset == PLAIN_APPLY:
            env = {
                **os.environ,
                "CHURN_DATA_DIR": str(settings.data_dir),
                "CHURN_REDIS_CONNECTION_STRING": settings.redis_connection_string,
            }
            for command in (["apply"], ["plan"]):
                done = subprocess.run(
                    [str(FEAST), "-f", "feature_store.redis.yaml", *command],
                    cwd=settings.feature_repo,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=240,
                )
                assert done.returncode == 0, done.stderr[-2000:]
                assert "Deleted" not in done.stdout
            assert "No changes to registry" in done.stdout and "No changes to infrastructure" in done.stdout
            report = _day(settings, day)
        else:
            report = _day(settings, day)
        if offset == MISSED + 1:
            assert report["validated"] == [(day - timedelta(days=1)).isoformat(), day.isoformat()]
        if offset == FIRST_EMBEDDED:
            embedded = _at(settings, _morning(day), feast_profile="embedded")
            apply_repo(embedded)
            first_fill = materialize(embedded)
            assert first_fill.mode == "refill" and first_fill.users_written > 0
            _online_equals_offline(_at(embedded, _morning(day, 6)))
        offline = _online_equals_offline(today)
        for status, count in _answers(today, offline).items():
            seen[status] = seen.get(status, 0) + count
        assert not list(settings.paths.features.rglob(".*"))  # no temp file left behind

    # Every kind of answer came up, and the scored population was the bulk of the open accounts.
    assert {"scored", "inactive", "closed"} <= set(seen) and seen["scored"] > seen["inactive"]
    builds = read_builds(settings.paths)
    assert [b.seq for b in builds] == list(range(1, len(builds) + 1))
    assert builds[-1].changed_since(SNAPSHOT_TABLE) is not None
