"""FastDuckDBOfflineStore against Feast's DuckDBOfflineStore (same output, exactly) and the oracle."""

import copy
from datetime import timedelta

import ibis
import pandas as pd
import pytest
from feast import FeatureStore, FeatureView, Field
from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
from feast.types import Float64, Int64

from churn_common.feast_plugins.offline_store import FastDuckDBOfflineStore, FastDuckDBOfflineStoreConfig, _plan
from churn_common.feature_frame import normalize, service_schema
from churn_common.settings import Settings
from churn_common.store import apply_repo, repo_config
from products.elearning import FEATURE_SERVICE
from tests.feature_repo.factories import day_end, random_accounts, random_snapshots, write_features
from tests.feature_repo.test_point_in_time import (
    DAYS,
    UPGRADE_AT,
    account_history,
    label_times,
    oracle,
    versioned_snapshots,
)
from training.dataset import get_training_frame

ROW = "row_id"
RESTATED = 6


@pytest.fixture
def history(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Versioned snapshots with gaps longer than the ttl, late starts, closings and NULL floats; an account history
    with late-known upgrades and a restated row (same valid_from, later created, another country)."""
    snapshots, accounts = versioned_snapshots(), account_history()
    restated = accounts[accounts["user_id"].eq(RESTATED)].head(1).copy()
    restated["country"], restated["created"] = "restated", day_end(DAYS[6])
    accounts = pd.concat([accounts, restated], ignore_index=True)
    write_features(settings.paths, snapshots, accounts)
    return snapshots, accounts


def _store(settings: Settings, offline_store) -> FeatureStore:
    config = repo_config(settings)
    # RepoConfig builds its offline store config lazily from offline_config and caches it; swap both.
    config.offline_config = offline_store
    config._offline_store = None
    return FeatureStore(repo_path=str(settings.feature_repo), config=config)


@pytest.fixture
def stores(settings: Settings, history) -> tuple[FeatureStore, FeatureStore]:
    """(fast, feast) over one registry."""
    apply_repo(settings)
    fast = _store(settings, FastDuckDBOfflineStoreConfig())
    assert isinstance(fast._get_provider().offline_store, FastDuckDBOfflineStore)
    return fast, _store(settings, DuckDBOfflineStoreConfig())


def _entities() -> pd.DataFrame:
    entities = label_times(range(1, 31))
    # Between day 4's on-time version and its later ones; after the upgrade, before it was known; before the
    # restatement was created; a user the store never saw.
    extra = pd.DataFrame(
        {
            "user_id": [1, 2, RESTATED, 31],
            "event_timestamp": [day_end(DAYS[4]) + pd.Timedelta(hours=13), UPGRADE_AT + pd.Timedelta(hours=2)]
            + [day_end(DAYS[6]) - pd.Timedelta(hours=2), day_end(DAYS[6])],
            "label": [0, 1, 0, 1],
        }
    )
    extra["event_timestamp"] = extra["event_timestamp"].astype("datetime64[us, UTC]")
    entities = pd.concat([entities, extra], ignore_index=True)
    return entities.assign(**{ROW: range(len(entities))})


def _served_by_fast_store(job) -> bool:
    return "__fast_entities" in ibis.to_sql(job.table)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(ROW).reset_index(drop=True)


def _both(stores, features, entities: pd.DataFrame | None = None, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both stores' answers for the same entity rows (default: ``_entities()``), sorted by row."""
    fast, feast = stores
    entities = _entities() if entities is None else entities
    fast_job = fast.get_historical_features(entity_df=entities.copy(), features=features, **kwargs)
    assert _served_by_fast_store(fast_job)
    expected = feast.get_historical_features(entity_df=entities.copy(), features=features, **kwargs)
    assert fast_job.to_arrow().schema == expected.to_arrow().schema
    return _sorted(fast_job.to_df()), _sorted(expected.to_df())


@pytest.mark.parametrize("filter_created", [True, False])
@pytest.mark.parametrize("full_feature_names", [False, True])
def test_same_output_as_feast(stores, filter_created, full_feature_names):
    service = stores[1].get_feature_service(FEATURE_SERVICE)
    got, expected = _both(
        stores, service, filter_by_created_timestamp=filter_created, full_feature_names=full_feature_names
    )
    pd.testing.assert_frame_equal(got, expected)
    assert list(got.columns) == list(expected.columns)
    sessions = got["user_activity_7d__sessions_7d" if full_feature_names else "sessions_7d"]
    assert 0.2 < sessions.notna().mean() < 0.95


@pytest.mark.parametrize("filter_created", [True, False])
def test_later_versions_and_changes_visible_only_without_created_filter(stores, history, filter_created):
    service = stores[1].get_feature_service(FEATURE_SERVICE)
    got, _ = _both(stores, service, filter_by_created_timestamp=filter_created)
    snapshots, _ = history
    day_4 = snapshots[snapshots["user_id"].eq(1) & snapshots["event_timestamp"].eq(day_end(DAYS[4]))]
    on_time, newest = day_4.sort_values("created")["sessions_7d"].iloc[[0, -1]]
    user_1, user_2, restated = (got[got[ROW] == row] for row in range(len(got) - 4, len(got) - 1))
    assert on_time != newest and user_1["sessions_7d"].item() == (on_time if filter_created else newest)
    assert user_2["plan"].item() == ("free" if filter_created else "paid")
    assert (restated["country"].item() == "restated") is not filter_created


@pytest.mark.parametrize("filter_created", [True, False])
def test_training_frame_matches_oracle(settings, stores, history, filter_created):
    fast = stores[0]
    entities = _entities().drop(columns=ROW)
    frame = get_training_frame(fast, entities, FEATURE_SERVICE, filter_by_created_timestamp=filter_created)
    schema = service_schema(fast.get_feature_service(FEATURE_SERVICE))
    expected = normalize(oracle(*history, entities, list(schema.features), filter_created), schema)
    pd.testing.assert_frame_equal(frame[entities.columns], entities)
    pd.testing.assert_frame_equal(frame[list(schema.features)].reset_index(drop=True), expected)


def _views_with_ttls(store: FeatureStore) -> list[FeatureView]:
    """Two views of the one snapshot source with different ttls, and one without a ttl."""
    user = store.get_entity("user")
    source = store.get_feature_view("user_status_daily").batch_source

    def view(name: str, ttl: timedelta, fields: list[Field]) -> FeatureView:
        return FeatureView(name=name, entities=[user], ttl=ttl, schema=fields, source=source)

    sessions, minutes = Field(name="sessions_7d", dtype=Int64), Field(name="watch_minutes_7d", dtype=Float64)
    return [
        view("short", timedelta(hours=13), [sessions]),
        view("long", timedelta(days=5), [sessions, minutes]),
        view("forever", timedelta(0), [Field(name="tenure_days", dtype=Int64), sessions]),
    ]


@pytest.mark.parametrize("filter_created", [True, False])
def test_per_view_ttls_on_one_source(stores, filter_created):
    views = _views_with_ttls(stores[1])
    stores[1].apply(views)
    refs = ["long:watch_minutes_7d", "short:sessions_7d", "forever:tenure_days", "long:sessions_7d"]
    got, expected = _both(stores, refs, filter_by_created_timestamp=filter_created, full_feature_names=True)
    pd.testing.assert_frame_equal(got, expected)
    assert got["short__sessions_7d"].notna().sum() < got["long__sessions_7d"].notna().sum()


NAIVE_REFS = ["user_account:plan", "user_status_daily:tenure_days"]


def test_naive_entity_timestamps_give_feasts_output(stores):
    fast, feast = stores
    entities = _entities().assign(event_timestamp=lambda e: e["event_timestamp"].dt.tz_localize(None))
    got = fast.get_historical_features(entity_df=entities.copy(), features=NAIVE_REFS).to_df()
    expected = feast.get_historical_features(entity_df=entities.copy(), features=NAIVE_REFS).to_df()
    pd.testing.assert_frame_equal(_sorted(got), _sorted(expected))


def test_field_mapping_falls_back_to_feast(stores):
    fast, feast = stores
    view = copy.deepcopy(feast.get_feature_view("user_status_daily"))
    view.batch_source.field_mapping = {"tenure_days": "tenure_days"}
    assert _plan([view], ["user_status_daily:tenure_days"], full_feature_names=False) is None
    view.batch_source.field_mapping = {}
    assert _plan([view], ["user_status_daily:tenure_days"], full_feature_names=False) is not None
    assert _plan([view], ["some_on_demand_view:tenure_days"], full_feature_names=False) is None


# --- filter_by_created_timestamp on late-created data ---------------------------------------------------------------


def _recomputed(frame: pd.DataFrame, users, day, created_after: timedelta, bump: int) -> pd.DataFrame:
    rows = frame[frame["user_id"].isin(users) & frame["event_timestamp"].eq(day_end(day))].copy()
    rows["sessions_7d"] += bump
    rows["created"] = rows["event_timestamp"] + created_after
    return rows


@pytest.fixture
def late_history(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Snapshots and account rows whose created times make the created-time filter change the answer.

    Users 1-6: days 4 and 10 recomputed three days later (after later days' snapshots were created). Users 3-8:
    day 7 recomputed 6 h later (same event time, a created-time tie for labels after both). User 9: a row created
    before its event time. User 10: an extra row without a created time. User 11: every snapshot created 30 h
    late. Users 7-12 start on day 3, users 9-12 miss days 8-13 (longer than the ttl). Accounts: user 4's change
    is known two days after it took effect, user 5's closing a day before.
    """
    frame = random_snapshots(range(1, 13), DAYS, seed=23)
    late = frame["user_id"].gt(6) & frame["event_timestamp"].lt(day_end(DAYS[3]))
    gap = frame["user_id"].gt(8) & frame["event_timestamp"].between(day_end(DAYS[8]), day_end(DAYS[13]))
    frame = frame[~late & ~gap].reset_index(drop=True)
    frame.loc[frame["user_id"].eq(11), "created"] = frame["event_timestamp"] + timedelta(hours=30)
    extra = [
        _recomputed(frame, range(1, 7), DAYS[4], timedelta(days=3), 1000),
        _recomputed(frame, range(1, 7), DAYS[10], timedelta(days=3), 2000),
        _recomputed(frame, range(3, 9), DAYS[7], timedelta(hours=6), 3000),
        _recomputed(frame, [9], DAYS[15], -timedelta(hours=5), 4000),
        _recomputed(frame, [10], DAYS[16], timedelta(0), 5000).assign(created=pd.NaT),
    ]
    extra = pd.concat(extra, ignore_index=True).astype({"created": "datetime64[us, UTC]"})
    # The recomputed day-15 row of user 9 is stored with an event time 12 h later than its created time.
    nine = extra["user_id"].eq(9)
    extra.loc[nine, "event_timestamp"] = extra.loc[nine, "event_timestamp"] + timedelta(hours=7)
    snapshots = pd.concat([frame, extra], ignore_index=True)
    accounts = random_accounts(range(1, 13), seed=24, closed={5: day_end(DAYS[12])})
    changed = accounts[accounts["user_id"].eq(4)].copy()
    changed["valid_from"], changed["country"] = day_end(DAYS[9]) + timedelta(hours=2), "moved"
    changed["created"] = changed["valid_from"] + timedelta(days=2)
    accounts = pd.concat([accounts, changed], ignore_index=True)
    accounts.loc[accounts["account_status"].eq("closed"), "created"] = day_end(DAYS[11])
    write_features(settings.paths, snapshots, accounts)
    return snapshots, accounts


@pytest.fixture
def late_stores(settings: Settings, late_history) -> tuple[FeatureStore, FeatureStore]:
    apply_repo(settings)
    return _store(settings, FastDuckDBOfflineStoreConfig()), _store(settings, DuckDBOfflineStoreConfig())


def _dense_labels() -> pd.DataFrame:
    """Every 5 hours from a day before the first snapshot to four days after the last, for users 1-13."""
    times = pd.date_range(day_end(DAYS[0]) - pd.Timedelta(days=1), day_end(DAYS[-1]) + pd.Timedelta(days=4), freq="5h")
    index = pd.MultiIndex.from_product([range(1, 14), times], names=["user_id", "event_timestamp"])
    entities = index.to_frame(index=False).astype({"user_id": "int64", "event_timestamp": "datetime64[us, UTC]"})
    entities = entities.sample(frac=1.0, random_state=5).reset_index(drop=True)
    return entities.assign(**{ROW: range(len(entities))})


def test_created_filter_on_late_data_equals_feast(late_stores):
    service = late_stores[1].get_feature_service(FEATURE_SERVICE)
    got, expected = _both(late_stores, service, _dense_labels(), filter_by_created_timestamp=True)
    pd.testing.assert_frame_equal(got, expected)
    unfiltered, _ = _both(late_stores, service, _dense_labels())
    changed = got["sessions_7d"].ne(unfiltered["sessions_7d"]) & unfiltered["sessions_7d"].notna()
    assert changed.sum() > 50  # the filter really decides many of these rows
    assert got["sessions_7d"].ge(1000).sum() > 10  # and late rows are picked once created
    moved, moved_unfiltered = got["country"].eq("moved").sum(), unfiltered["country"].eq("moved").sum()
    assert 5 < moved < moved_unfiltered  # the account change too, once known
    assert 0.2 < got["sessions_7d"].notna().mean() < 0.95


def test_created_filter_without_ttl_equals_feast(late_stores):
    """A source with a view without a ttl takes the availability-ordered ASOF join; mixed ttls on one source."""
    late_stores[1].apply(_views_with_ttls(late_stores[1]))
    for refs in (
        ["forever:tenure_days", "forever:sessions_7d"],
        ["long:watch_minutes_7d", "short:sessions_7d", "forever:tenure_days", "forever:sessions_7d"],
    ):
        got, expected = _both(
            late_stores, refs, _dense_labels(), filter_by_created_timestamp=True, full_feature_names=True
        )
        pd.testing.assert_frame_equal(got, expected)
    unfiltered, _ = _both(late_stores, refs, _dense_labels(), full_feature_names=True)
    assert got["forever__sessions_7d"].ne(unfiltered["forever__sessions_7d"]).sum() > 50


def test_created_filter_matches_oracle(settings, late_stores, late_history):
    fast = late_stores[0]
    entities = _dense_labels().drop(columns=ROW)
    frame = get_training_frame(fast, entities, FEATURE_SERVICE, filter_by_created_timestamp=True)
    schema = service_schema(fast.get_feature_service(FEATURE_SERVICE))
    expected = normalize(oracle(*late_history, entities, list(schema.features), True), schema)
    pd.testing.assert_frame_equal(frame[list(schema.features)].reset_index(drop=True), expected)


def _pulled(store: FeatureStore, view_name: str, start, end) -> pd.DataFrame:
    view = store.get_feature_view(view_name)
    source = view.batch_source
    job = store._get_provider().offline_store.pull_latest_from_table_or_query(
        config=store.config,
        data_source=source,
        join_key_columns=[entity.name for entity in view.entity_columns],
        feature_name_columns=[feature.name for feature in view.features],
        timestamp_field=source.timestamp_field,
        created_timestamp_column=source.created_timestamp_column,
        start_date=start,
        end_date=end,
    )
    return job.to_df().sort_values("user_id").reset_index(drop=True)


_WHOLE = (day_end(DAYS[0]) - timedelta(hours=1), day_end(DAYS[-1]))
_DAYS_2_TO_4 = (day_end(DAYS[2]) - timedelta(hours=1), day_end(DAYS[4]))
_DAY_5 = (day_end(DAYS[5]) - timedelta(hours=1), day_end(DAYS[5]))
_FROM_UPGRADES = (UPGRADE_AT - timedelta(hours=1), day_end(DAYS[-1]))


@pytest.mark.parametrize(
    ("view_name", "window"),
    [
        *(
            (view, window)
            for view in ("user_activity_7d", "user_status_daily")
            for window in (_WHOLE, _DAYS_2_TO_4, _DAY_5)
        ),
        ("user_account", _WHOLE),
        ("user_account", _FROM_UPGRADES),
    ],
)
def test_materialisation_reads_the_rows_feast_reads(stores, view_name: str, window) -> None:
    """Materialisation's read (each user's newest row in the window, a later version of the same event time
    winning) equals Feast's DuckDB store's, on windows that cut the history and on one day alone."""
    fast, feast = stores
    ours, theirs = _pulled(fast, view_name, *window), _pulled(feast, view_name, *window)
    assert len(ours) > 0
    pd.testing.assert_frame_equal(ours, theirs, check_dtype=False)
