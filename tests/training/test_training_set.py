"""Training sets hold the population serving scores, and nothing else.

Two worlds. A hand-built one goes through the real build (validated events and users -> build_features ->
apply_repo -> the offline store): the labels' candidates with the population rule applied after the join must agree
with an independent pandas computation of "a customer at t (signup_at < t < closed_at), active in [t - 30 d, t)". A
world of
hand-written feature tables (tests/feature_repo/factories.py) adds what a full build never produces for one user
alone, a stale snapshot, and is materialised to the online store so the same users can be read as serving reads
them.
"""

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from churn_common.compiled import compile_model, probe_rows, verify
from churn_common.errors import SchemaError
from churn_common.feature_frame import ServiceSchema, normalize, service_schema
from churn_common.online import OnlineReader, OnlineVector
from churn_common.population import PopulationRule, Status
from churn_common.settings import Settings
from churn_common.store import apply_repo
from jobs.materialize import materialize
from products.elearning import FEATURE_SERVICE
from tests.conftest import TEST_REDIS_DB, unique_name
from tests.factories import make_events, make_users, utc, write_validated
from tests.feature_repo.factories import day_end, random_accounts, random_snapshots, write_features
from training.dataset import TrainingSet, get_training_frame, get_training_set, validate_entity_frame
from training.labels import build_labels
from training.train import TrainingResult
from transformations.features import build_features

RULE = PopulationRule(active_window_days=30)
DAY = timedelta(days=1)
# Independent of the catalogue code: the event types that count as the user doing something.
ACTIVITY_TYPES = {"login", "video_watch", "quiz_attempt", "course_enroll", "course_complete"}


def module_settings(tmp_path_factory: pytest.TempPathFactory, name: str) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp(name) / "data", feast_project=unique_name("t"), redis_db=TEST_REDIS_DB
    )


def every(
    user: int, first: pd.Timestamp, last: pd.Timestamp, step: timedelta, kind: str = "login", value: float | None = None
):
    times = pd.date_range(first, last, freq=step)
    return [(user, t, kind, value) for t in times]


# --------------------------------------------------------------------------------- a world through the build

CLOSED_AT_GRID_TIME = utc(2026, 2, 14)
CLOSED_JUST_AFTER = utc(2026, 2, 21, 0, 0, 1)
SIGNUP_AT_GRID_TIME = utc(2026, 2, 7)


def world_users() -> pd.DataFrame:
    users = make_users(11, signup=utc(2025, 12, 20), first_id=0)
    user = users["user_id"]
    users.loc[user == 2, "closed_at"] = CLOSED_AT_GRID_TIME
    users.loc[user == 3, "closed_at"] = CLOSED_JUST_AFTER
    users.loc[user == 4, "signup_at"] = SIGNUP_AT_GRID_TIME
    users.loc[user == 5, "signup_at"] = utc(2026, 2, 6, 23)
    users.loc[user == 10, "closed_at"] = utc(2026, 1, 20)
    return users


def world_events() -> pd.DataFrame:
    """Events away from midnight (they arrive a minute later, the same day) except where a boundary is the point."""
    rows = [
        *every(0, utc(2026, 1, 1, 10), utc(2026, 4, 12, 10), 2 * DAY),  # always active; its last event ends the data
        *every(1, utc(2026, 1, 1, 9), utc(2026, 1, 25, 9), 3 * DAY, "quiz_attempt", 70.0),  # stops: inactive later
        *every(2, utc(2026, 1, 1, 12), utc(2026, 2, 13, 12), DAY),  # closes exactly at a grid time
        *every(3, utc(2026, 1, 1, 12), utc(2026, 2, 20, 12), DAY),  # closes one second after a grid time
        *every(4, utc(2026, 2, 7, 11), utc(2026, 4, 1, 11), 2 * DAY),  # signs up exactly at a grid time
        (5, utc(2026, 2, 6, 23, 30), "login", None),  # signs up half an hour before a grid time, active at once
        *every(5, utc(2026, 2, 13, 9), utc(2026, 4, 1, 9), 7 * DAY, "video_watch", 12.0),
        *every(6, utc(2026, 1, 5, 8), utc(2026, 4, 5, 8), 30 * DAY, "payment_success", 19.0),  # renewals only
        (7, utc(2026, 1, 8), "login", None),  # exactly 30 days before 2026-02-07: in that window
        (8, utc(2026, 1, 7, 23, 59, 59), "login", None),  # one second earlier: not in it
        *every(9, utc(2026, 1, 2, 15), utc(2026, 4, 10, 15), 3 * DAY),
        *every(10, utc(2026, 1, 2, 15), utc(2026, 1, 18, 15), 3 * DAY),  # closed before the first grid time
    ]
    return make_events(rows)


def expected_statuses(users: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """Status per candidate (user, t), by plain pandas from the documented definitions. Candidates are the customers
    at t, so none is closed: the store and the users table know the same closures here."""
    window = horizon = timedelta(days=30)
    last_event = events["event_timestamp"].max()
    first = events["event_timestamp"].min().floor("D") + window
    grid = [t for t in pd.date_range(first, last_event, freq="7D") if t + horizon <= last_event]
    activity = events[events["event_type"].isin(ACTIVITY_TYPES)]
    statuses = {}
    for user in users.itertuples():
        times = activity.loc[activity["user_id"] == user.user_id, "event_timestamp"]
        for t in grid:
            if not (user.signup_at < t and (pd.isna(user.closed_at) or user.closed_at > t)):
                continue
            if ((times >= t - window) & (times < t)).any():
                statuses[(user.user_id, t)] = Status.SCORED
            else:
                statuses[(user.user_id, t)] = Status.INACTIVE
    return pd.Series(statuses).rename_axis(["user_id", "event_timestamp"])


@dataclass(frozen=True)
class BuiltWorld:
    users: pd.DataFrame
    events: pd.DataFrame
    labels: pd.DataFrame
    joined: pd.DataFrame
    schema: ServiceSchema
    training_set: TrainingSet
    closing_at_t: pd.DataFrame
    """The join of user 2 at the instant its account closes, which is no label candidate."""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltWorld:
    settings = module_settings(tmp_path_factory, "built")
    users, events = world_users(), world_events()
    write_validated(settings.paths, users, events)
    build_features(settings)
    store = apply_repo(settings)
    labels = build_labels(settings)
    schema = service_schema(store.get_feature_service(FEATURE_SERVICE))
    joined = get_training_frame(store, labels, FEATURE_SERVICE)
    closing = pd.DataFrame({"user_id": [2], "event_timestamp": [CLOSED_AT_GRID_TIME], "label": [0]})
    return BuiltWorld(
        users,
        events,
        labels,
        joined,
        schema,
        get_training_set(store, labels, FEATURE_SERVICE, RULE),
        get_training_frame(store, closing, FEATURE_SERVICE),
    )


def keys(frame: pd.DataFrame) -> list[tuple[int, pd.Timestamp]]:
    return sorted(zip(frame["user_id"].tolist(), frame["event_timestamp"].tolist(), strict=True))


def statuses_of(joined: pd.DataFrame) -> pd.Series:
    return pd.Series(RULE.statuses(joined), index=pd.MultiIndex.from_frame(joined[["user_id", "event_timestamp"]]))


def test_candidates_and_the_rule_agree_with_an_independent_computation(built: BuiltWorld) -> None:
    expected = expected_statuses(built.users, built.events)
    assert keys(built.labels) == sorted(expected.index)
    assert statuses_of(built.joined).to_dict() == expected.to_dict()


def test_boundaries_of_the_population(built: BuiltWorld) -> None:
    status = statuses_of(built.joined)
    assert status[(2, CLOSED_AT_GRID_TIME - 7 * DAY)] == Status.SCORED
    assert (2, CLOSED_AT_GRID_TIME) not in status.index  # closing exactly at t: closed at t, no candidate
    assert status[(3, utc(2026, 2, 21))] == Status.SCORED  # closing one second after t: still a customer at t
    assert (3, utc(2026, 2, 28)) not in status.index
    assert (4, SIGNUP_AT_GRID_TIME) not in status.index  # a signup at t is no candidate at t
    assert status[(4, SIGNUP_AT_GRID_TIME + 7 * DAY)] == Status.SCORED
    assert status[(5, utc(2026, 2, 7))] == Status.SCORED  # signed up and active half an hour before t
    assert status[(7, utc(2026, 2, 7))] == Status.SCORED and status[(7, utc(2026, 2, 14))] == Status.INACTIVE
    assert status[(8, utc(2026, 1, 31))] == Status.SCORED and status[(8, utc(2026, 2, 7))] == Status.INACTIVE
    assert set(status.xs(6, level="user_id")) == {Status.INACTIVE}  # renewals are not activity
    assert 10 not in status.index.get_level_values("user_id")  # closed before the first grid time


def test_training_set_holds_only_scored_rows_and_no_empty_vector(built: BuiltWorld) -> None:
    expected = expected_statuses(built.users, built.events)
    frame = built.training_set.frame
    assert keys(frame) == sorted(expected.index[expected == Status.SCORED])
    assert list(frame.columns) == ["user_id", "event_timestamp", "label", *built.schema.model_features]
    assert "account_status" not in frame.columns
    assert frame[list(built.schema.model_features)].notna().any(axis=1).all()
    # Partially missing vectors stay: users without quizzes have no mean quiz score, and are scored all the same.
    assert frame["quiz_score_mean_7d"].isna().any() and frame["quiz_score_mean_7d"].notna().any()
    counts = built.training_set.population.counts
    assert counts == {status: int((expected == status).sum()) for status in Status}
    assert counts[Status.CLOSED] == 0 and counts[Status.INACTIVE] > 0


def test_the_join_keeps_every_candidate_and_the_account_decides_closure(built: BuiltWorld) -> None:
    pd.testing.assert_frame_equal(built.joined[list(built.labels.columns)], built.labels)
    row = built.closing_at_t.iloc[0]
    # Closed at t, yet the day-before snapshot is within its ttl and shows activity: the account status, not a
    # missing snapshot, is what the population rule (serving's, at that instant) keeps the row out by.
    assert row["account_status"] == "closed" and row["active_days_30d"] > 0
    assert RULE.statuses(built.closing_at_t).tolist() == [Status.CLOSED]


# ------------------------------------------------------------------ a world of feature tables, served online

SERVED_DAYS = [date(2026, 3, 1) + timedelta(days=i) for i in range(10)]
AT = day_end(SERVED_DAYS[-1])
USERS = list(range(12))
ZERO, CLOSED, INACTIVE, STALE, UNKNOWN, PARTIAL = 0, 1, 2, 3, 4, 5
PARTIAL_COLUMNS = [f"{stem}_{w}d" for stem in ("quiz_score_mean", "payment_fail_rate") for w in (7, 14, 30, 90)]


@dataclass(frozen=True)
class ServedWorld:
    schema: ServiceSchema
    joined: pd.DataFrame
    training_set: TrainingSet
    online: list[OnlineVector]


def served_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    # On-time versions only (created == event_timestamp), as a build writes them for data that arrived in time.
    snapshots = random_snapshots(USERS, SERVED_DAYS, seed=5, created_delay=timedelta(0))
    at = snapshots["event_timestamp"] == AT
    snapshots.loc[at & (snapshots["user_id"] == INACTIVE), ["active_days_7d", "active_days_14d", "active_days_30d"]] = 0
    # No quiz and no charge in any window, as for a user who only watches videos.
    snapshots.loc[at & (snapshots["user_id"] == PARTIAL), PARTIAL_COLUMNS] = np.nan
    # The newest snapshot three days old: outside the two-day ttl.
    snapshots = snapshots[~((snapshots["user_id"] == STALE) & (snapshots["event_timestamp"] > AT - 3 * DAY))]
    accounts = random_accounts([u for u in USERS if u != UNKNOWN], seed=5, closed={CLOSED: AT - DAY})
    return snapshots, accounts


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedWorld:
    settings = module_settings(tmp_path_factory, "served")
    snapshots, accounts = served_tables()
    write_features(settings.paths, snapshots, accounts)
    store = apply_repo(settings)
    materialize(settings, end=AT.to_pydatetime())
    entities = pd.DataFrame({"user_id": USERS, "event_timestamp": AT, "label": [0, 1] * 6})
    entities["event_timestamp"] = entities["event_timestamp"].astype("datetime64[us, UTC]")
    service = store.get_feature_service(FEATURE_SERVICE)
    return ServedWorld(
        service_schema(service),
        get_training_frame(store, entities, FEATURE_SERVICE),
        get_training_set(store, entities, FEATURE_SERVICE, RULE),
        OnlineReader(store, service).read(USERS, now=AT.to_pydatetime()),
    )


def test_closed_inactive_stale_and_unknown_users_are_absent_from_the_training_set(served: ServedWorld) -> None:
    assert served.training_set.frame["user_id"].tolist() == [
        u for u in USERS if u not in (CLOSED, INACTIVE, STALE, UNKNOWN)
    ]
    assert served.training_set.population.counts == {
        Status.SCORED: 8,
        Status.CLOSED: 1,
        Status.INACTIVE: 1,
        Status.STALE: 1,
        Status.UNKNOWN: 1,
    }
    assert ZERO in served.training_set.frame["user_id"].tolist()  # user id 0 is an ordinary user


def test_the_rule_gives_every_user_the_same_status_offline_and_online(served: ServedWorld) -> None:
    online = normalize(pd.DataFrame([vector.features for vector in served.online]), served.schema)
    offline = RULE.statuses(served.joined)
    assert RULE.statuses(online).tolist() == offline.tolist()
    assert offline.tolist()[:6] == [
        Status.SCORED,
        Status.CLOSED,
        Status.INACTIVE,
        Status.STALE,
        Status.UNKNOWN,
        Status.SCORED,
    ]


def test_a_partially_missing_vector_is_kept_and_scored_alike_offline_and_online(
    served: ServedWorld, trained: TrainingResult
) -> None:
    model = trained.model
    assert model.feature_names == list(served.schema.model_features)
    frame = served.training_set.frame.set_index("user_id")
    assert frame.loc[PARTIAL, PARTIAL_COLUMNS].isna().all()
    assert frame.loc[PARTIAL, ["active_days_30d", "sessions_7d", "tenure_days", "plan"]].notna().all()
    offline = model.predict_proba(frame)

    scored_users = frame.index.tolist()
    vectors = [v for v in served.online if v.user_id in scored_users]
    assert [v.user_id for v in vectors] == scored_users
    partial = next(v for v in vectors if v.user_id == PARTIAL)
    assert all(partial.features[name] is None for name in PARTIAL_COLUMNS)

    compiled = compile_model(model)
    verify(compiled, probe_rows(model, compiled))
    compiled_scores, _ = compiled.score_and_explain([v.features for v in vectors])
    # The sklearn path serving falls back to: model columns with the dtypes `normalize` gives training frames.
    columns = {
        name: np.array(
            [v.features[name] for v in vectors], dtype=object if name in served.schema.string_features else np.float64
        )
        for name in model.feature_names
    }
    sklearn_scores, _ = model.score_and_explain(columns)
    np.testing.assert_allclose(compiled_scores, offline, rtol=0, atol=1e-9)
    np.testing.assert_allclose(sklearn_scores, offline, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------ entity frames


def test_user_id_zero_is_a_valid_entity_and_negative_ids_are_not() -> None:
    frame = pd.DataFrame({"user_id": [0, 1], "event_timestamp": [utc(2026, 3, 1)] * 2})
    assert validate_entity_frame(frame)["user_id"].tolist() == [0, 1]
    with pytest.raises(SchemaError, match="user_id"):
        validate_entity_frame(frame.assign(user_id=[-1, 1]))
