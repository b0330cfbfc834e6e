"""The feature repo as Feast users meet it: definitions, profiles and the plain `feast` CLI."""

import os
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from feast import FeatureView
from pydantic import SecretStr

from churn_common.errors import ConfigurationError
from churn_common.names import FEATURE_SERVICE
from churn_common.settings import PROJECT_ROOT
from churn_common.store import load_definitions, repo_config
from tests.feature_repo.factories import STATUS_FLOAT, STATUS_INT, STATUS_STR, random_snapshots, write_snapshots
from transformations.catalog import DEFAULT_CATALOG

FEAST = Path(sys.executable).with_name("feast")


def test_every_view_is_documented_owned_and_expires(settings):
    views: list[FeatureView] = load_definitions(settings).feature_views
    assert {v.name for v in views} == {f"user_activity_{w}d" for w in DEFAULT_CATALOG.windows} | {"user_status_daily"}
    for view in views:
        assert view.ttl and view.ttl <= timedelta(days=7), view.name
        assert view.description and view.owner and view.tags.get("grain") == "user-day", view.name
        assert all(field.description for field in view.schema), view.name


def test_views_declare_exactly_the_columns_the_feature_build_writes(settings):
    contents = load_definitions(settings)
    declared = [field.name for view in sorted(contents.feature_views, key=lambda v: v.name) for field in view.schema]
    expected = [*DEFAULT_CATALOG.window_features(), *STATUS_INT, *STATUS_FLOAT, *STATUS_STR]
    assert sorted(declared) == sorted(expected)
    assert len(declared) == len(set(declared))


def test_the_model_service_reads_every_view(settings):
    (service,) = [s for s in load_definitions(settings).feature_services if s.name == FEATURE_SERVICE]
    views = {v.name for v in load_definitions(settings).feature_views}
    assert {p.name for p in service.feature_view_projections} == views


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


@pytest.mark.slow
def test_plain_feast_cli_works_from_the_feature_repo(tmp_path):
    """`feast plan/apply/materialize` from feature_repo/ exactly as documented, on a copy of the repo."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(PROJECT_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "data"
    write_snapshots(random_snapshots([1, 2], [date(2026, 3, 1)]), data / "features" / "user_daily_snapshots")
    env = {**os.environ, "CHURN_DATA_DIR": str(data)}

    def feast(*args: str) -> str:
        done = subprocess.run([str(FEAST), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    assert "churn_model_v1" in feast("plan")
    feast("apply")
    assert (data / "feast" / "registry.db").is_file()  # ../data relative to the repo, as documented
    feast("materialize", "2026-03-01T00:00:00", "2026-03-03T00:00:00")
    assert (data / "feast" / "online.db").is_file()
    assert "churn_model_v1" in feast("feature-services", "list")
