"""The feature repo as Feast users meet it: definitions and profiles (the plain `feast` CLI: test_feast_cli.py)."""

from datetime import timedelta

import pyarrow as pa
import pytest
from feast import FeatureView, PushSource
from feast.types import Bool, Float64, Int64, String
from pydantic import SecretStr

from churn_common.errors import ConfigurationError
from churn_common.feature_frame import service_schema
from churn_common.names import (
    ACCOUNT_STATUS,
    ACCOUNT_TABLE,
    CREATED_TIMESTAMP_FIELD,
    JOIN_KEY,
    SNAPSHOT_TABLE,
    TIMESTAMP_FIELD,
    TODAY_PUSH_SOURCE,
    TODAY_TABLE,
    VALID_FROM_FIELD,
)
from churn_common.population import PopulationRule
from churn_common.store import load_definitions, repo_config
from products.elearning import CATALOG as ELEARNING
from products.elearning import FEATURE_SERVICE
from transformations.snapshot_schema import ACCOUNT_SCHEMA, snapshot_schema
from transformations.today import table_schema as today_table_schema
from transformations.today import today_fields

SNAPSHOT_VIEWS = {f"user_activity_{w}d" for w in ELEARNING.windows} | {"user_status_daily"}
# The build's key and time columns; every other column it writes is a feature.
SNAPSHOT_KEYS = {JOIN_KEY, TIMESTAMP_FIELD, CREATED_TIMESTAMP_FIELD}
ACCOUNT_KEYS = {JOIN_KEY, VALID_FROM_FIELD, CREATED_TIMESTAMP_FIELD}
FEAST_TYPES = {"int64": Int64, "float64": Float64, "string": String}


def _views(settings) -> dict[str, FeatureView]:
    return {view.name: view for view in load_definitions(settings).feature_views}


def test_every_view_is_documented_and_owned_and_snapshot_views_expire(settings):
    views = _views(settings)
    assert set(views) == SNAPSHOT_VIEWS | {ACCOUNT_TABLE, TODAY_TABLE}
    for view in views.values():
        assert view.description and view.owner and view.tags.get("team") == "retention", view.name
        assert all(field.description for field in view.schema), view.name
    for name in SNAPSHOT_VIEWS:
        assert views[name].ttl and views[name].ttl <= timedelta(days=7), name
        assert views[name].tags["grain"] == "user-day"
    # An account attribute holds until the account changes, however long ago that was.
    assert not views[ACCOUNT_TABLE].ttl and views[ACCOUNT_TABLE].tags["grain"] == "user-change"


def _declared(views) -> dict[str, str]:
    fields = [field for view in views for field in view.schema]
    assert len(fields) == len({field.name for field in fields}), "a feature name is declared twice"
    return {field.name: field.dtype for field in fields}


def test_views_declare_exactly_the_columns_the_feature_build_writes(settings):
    views = _views(settings)
    snapshot_columns = snapshot_schema(ELEARNING).columns
    expected = {name: FEAST_TYPES[str(c.dtype)] for name, c in snapshot_columns.items() if name not in SNAPSHOT_KEYS}
    assert _declared(views[name] for name in SNAPSHOT_VIEWS) == expected
    assert _declared([views[ACCOUNT_TABLE]]) == {
        field.name: FEAST_TYPES[str(field.type)] for field in ACCOUNT_SCHEMA if field.name not in ACCOUNT_KEYS
    }


def test_views_read_the_tables_the_build_writes_at_their_times(settings):
    views = _views(settings)
    paths = settings.paths
    for name in SNAPSHOT_VIEWS:
        source = views[name].batch_source
        assert (source.name, source.path) == (SNAPSHOT_TABLE, str(paths.snapshots / "*" / "*.parquet"))
        assert (source.timestamp_field, source.created_timestamp_column) == (TIMESTAMP_FIELD, CREATED_TIMESTAMP_FIELD)
    source = views[ACCOUNT_TABLE].batch_source
    assert (source.name, source.path) == (ACCOUNT_TABLE, str(paths.features / ACCOUNT_TABLE / "*.parquet"))
    assert (source.timestamp_field, source.created_timestamp_column) == (VALID_FROM_FIELD, CREATED_TIMESTAMP_FIELD)


def test_account_status_decides_the_population_and_is_no_model_input(settings):
    (status,) = [field for field in _views(settings)[ACCOUNT_TABLE].schema if field.name == ACCOUNT_STATUS]
    assert status.tags == {"role": "population"}
    (service,) = [s for s in load_definitions(settings).feature_services if s.name == FEATURE_SERVICE]
    schema = service_schema(service)
    assert schema.population_features == {ACCOUNT_STATUS}
    assert ACCOUNT_STATUS in schema.features and ACCOUNT_STATUS not in schema.model_features
    assert len(schema.model_features) == len(schema.features) - 1
    PopulationRule(settings.active_window_days).require(schema.features)


def test_the_model_service_reads_every_feature_of_every_view_but_today(settings):
    contents = load_definitions(settings)
    (service,) = [s for s in contents.feature_services if s.name == FEATURE_SERVICE]
    read = {(p.name, field.name) for p in service.feature_view_projections for field in p.features}
    built = [view for view in contents.feature_views if view.name != TODAY_TABLE]
    assert read == {(view.name, field.name) for view in built for field in view.schema}


def test_the_today_view_is_pushed_derived_from_the_catalogue_and_read_by_no_model(settings):
    contents = load_definitions(settings)
    (view,) = [view for view in contents.feature_views if view.name == TODAY_TABLE]
    assert isinstance(view.stream_source, PushSource) and view.stream_source.name == TODAY_PUSH_SOURCE
    # Fed by the push path, not loaded by materialisation (jobs/materialize.py and `feast materialize` load only
    # online views): Feast 0.67 pushes to and reads it online all the same (tests/serving/test_push.py).
    assert not view.online and view.ttl == timedelta(days=1) and view.tags["feed"] == "push"
    source = view.batch_source
    assert (source.name, source.path) == (TODAY_TABLE, str(settings.paths.today / "*" / "*.parquet"))
    assert (source.timestamp_field, source.created_timestamp_column) == (TIMESTAMP_FIELD, CREATED_TIMESTAMP_FIELD)
    types = {pa.int64(): Int64, pa.float64(): Float64, pa.bool_(): Bool}
    written = {f.name: types[f.type] for f in today_table_schema(ELEARNING) if f.name not in SNAPSHOT_KEYS}
    assert {field.name: field.dtype for field in view.schema} == written
    assert sorted(f.name for f in view.schema) == sorted(f.name for f in today_fields(ELEARNING))
    assert all(TODAY_TABLE not in {p.name for p in s.feature_view_projections} for s in contents.feature_services)


@pytest.mark.parametrize("profile", ["embedded", "redis", "production"])
def test_profiles_bound_materialisation_and_keep_serving(settings, profile):
    settings = settings.model_copy(update={"feast_profile": profile, "registry_url": "postgresql+psycopg://u@h/db"})
    config = repo_config(settings)
    assert config.project == settings.feast_project
    assert config.materialization_config.pull_latest_features
    assert 0 < config.materialization_config.online_write_batch_size <= 100_000
    assert config.registry.serve_features_while_materializing
    assert config.offline_store.type == "churn_common.feast_plugins.offline_store.FastDuckDBOfflineStore"


def test_production_profile_uses_sql_registry_with_thread_cache_and_redis_secret(settings):
    production = {
        "feast_profile": "production",
        "registry_url": "postgresql+psycopg://feast@db/feast",
        "redis_password": SecretStr("s3cret"),
    }
    settings = settings.model_copy(update=production)
    config = repo_config(settings)
    assert config.registry.registry_type == "sql" and config.registry.cache_mode == "thread"
    assert config.registry.path == "postgresql+psycopg://feast@db/feast"
    assert "password=s3cret" in config.online_store.connection_string


def test_production_profile_without_registry_url_names_the_missing_variable(settings, monkeypatch):
    monkeypatch.delenv("CHURN_REGISTRY_URL", raising=False)
    with pytest.raises(ConfigurationError, match="CHURN_REGISTRY_URL"):
        repo_config(settings.model_copy(update={"feast_profile": "production", "registry_url": ""}))
