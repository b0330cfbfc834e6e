"""What a newcomer reads from `churn features apply`: no false warnings, and a plain word when the features have not
been built yet."""

import importlib
import logging
from datetime import date, timedelta

import pytest
from feast.infra.offline_stores.file_source import FileSource
from feast.repo_config import RepoConfig

from churn_common.settings import PROJECT_ROOT, Settings
from churn_common.store import apply_repo, feature_store
from tests.feature_repo.factories import random_accounts, random_snapshots, write_features
from transformations.today import build_today_table

USERS = range(1, 21)
DAYS = [date(2026, 3, 1) + timedelta(days=offset) for offset in range(3)]


def _feast_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.startswith("feast.infra.offline_stores")]


def test_apply_over_built_features_warns_about_nothing(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    write_features(settings.paths, random_snapshots(USERS, DAYS), random_accounts(USERS, seed=0, valid_from=DAYS[0]))
    build_today_table(settings, DAYS[-1])  # no validated events that day: an empty table, which the source reads
    with caplog.at_level(logging.INFO):
        apply_repo(settings)
        # The second apply is the one that validated the sources again ("No changes"), a warning per view.
        apply_repo(settings)
    assert not _feast_warnings(caplog)
    assert not [record for record in caplog.records if "no files yet" in record.getMessage()]


def test_apply_before_the_first_build_says_so_plainly(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        apply_repo(settings)
    assert not _feast_warnings(caplog)
    said = [
        record
        for record in caplog.records
        if record.name == "churn_common.store" and "no files yet" in record.getMessage()
    ]
    # The snapshots and the account history, which the build writes; and the pushed view's offline table.
    assert len(said) == 3, [record.getMessage() for record in said]
    assert all(record.levelno == logging.INFO for record in said)
    build, today = (
        [r for r in said if "churn features build" in r.getMessage()],
        [r for r in said if "today" in r.args[0]],
    )
    assert len(build) == 2 and "churn features today" in today[0].getMessage()


def test_plain_feast_commands_do_not_warn_about_glob_paths(
    settings: Settings, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`feast plan`/`feast apply` validate every source through FileSource.validate: with our glob paths Feast warns
    that the path does not exist, built or not. The feature repo's definitions silence exactly that warning."""
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "feature_repo"))  # as `feast` imports the repo's modules
    data_sources = importlib.import_module("data_sources")

    write_features(settings.paths, random_snapshots(USERS, DAYS), random_accounts(USERS, seed=0, valid_from=DAYS[0]))
    config = RepoConfig(project="p", provider="local", registry="unused.db", online_store={"type": "sqlite"})
    glob_source = data_sources.user_daily_snapshots
    single_file = FileSource(name="one", path=str(settings.paths.root / "absent.parquet"), timestamp_field="t")
    with caplog.at_level(logging.WARNING):
        glob_source.validate(config)
        single_file.validate(config)
    messages = _feast_warnings(caplog)
    assert len(messages) == 1 and "absent.parquet" in messages[0]  # a real missing file still warns


def test_no_false_warning_about_serving_while_materializing(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        feature_store(settings)
    assert not [r for r in caplog.records if "serve_features_while_materializing" in r.getMessage()]
