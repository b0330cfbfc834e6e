"""The commands exit non-zero with a clear message, and leave nothing registered, when they cannot succeed."""

from datetime import timedelta

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from churn_common.settings import Settings
from churn_common.store import apply_repo
from jobs.cli import app
from tests.factories import make_events, make_users, utc
from tests.training.test_labels import write_inputs
from tests.training.test_registry import closed_port
from training import registry
from training.split import minimum_history_days

runner = CliRunner()


def test_train_on_labels_without_churners_fails_and_registers_nothing(settings: Settings) -> None:
    # Three users log in every day for 90 days: nobody churns, so no model can be trained.
    days = [utc(2026, 1, 1) + timedelta(days=d) for d in range(200)]
    events = make_events([(user, day, "login", None) for user in (1, 2, 3) for day in days])
    write_inputs(settings, events, make_users(3, signup=utc(2025, 12, 1)))
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 1
    assert "TrainingError" in result.output and "both churners and non-churners" in result.output
    uri = settings.tracking_uri
    assert MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models() == []


def test_train_with_the_closure_label_fails_when_no_account_closes(settings: Settings) -> None:
    # Nobody closes an account, and one user stops logging in: churners by inactivity, none by closure.
    days = [utc(2026, 1, 1) + timedelta(days=d) for d in range(200)]
    events = make_events(
        [(user, day, "login", None) for user in (1, 2) for day in days] + [(3, days[0], "login", None)]
    )
    write_inputs(settings, events, make_users(3, signup=utc(2025, 12, 1)))
    result = runner.invoke(app, ["train", "--label", "closure"])
    assert result.exit_code == 1
    assert "the closure labels needs both churners and non-churners, has labels [0]" in result.output


def test_train_refuses_an_unknown_label(settings: Settings) -> None:
    result = runner.invoke(app, ["train", "--label", "tenure"])
    assert result.exit_code == 2
    assert "Invalid value for '--label'" in result.output and "'tenure'" in result.output


def test_train_with_an_unreachable_tracking_server_fails_before_training(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURN_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 1
    assert "TrackingServerUnavailable" in result.output and "unreachable" in result.output


def test_promote_without_a_challenger_fails(settings: Settings) -> None:
    result = runner.invoke(app, ["model", "promote"])
    assert result.exit_code == 1
    assert "ModelNotFound" in result.output and "'challenger'" in result.output


def test_rollback_without_a_previous_champion_fails(settings: Settings) -> None:
    result = runner.invoke(app, ["model", "rollback"])
    assert result.exit_code == 1
    assert "ModelNotFound" in result.output


def test_train_before_the_feature_build_says_to_build(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # Validated data with churners and non-churners, the repo applied, but no `churn features build` yet.
    days = [utc(2026, 1, 1) + timedelta(days=d) for d in range(200)]
    events = make_events(
        [(user, day, "login", None) for user in (1, 2) for day in days] + [(3, days[0], "login", None)]
    )
    write_inputs(settings, events, make_users(3, signup=utc(2025, 12, 1)))
    apply_repo(settings)
    monkeypatch.setenv("CHURN_FEAST_PROJECT", settings.feast_project)
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 1, result.output
    assert "DataError" in result.output and "run `churn features build` first" in result.output
    assert "Traceback" not in result.output


def test_train_on_too_short_a_history_names_the_minimum_and_starts_no_run(settings: Settings) -> None:
    # 120 days of daily logins, half the users stopping after day 60: both classes, but observation times only
    # from day 30 to day 90, nine weekly times where a purged split needs twelve.
    days = [utc(2026, 1, 1, 9) + timedelta(days=d) for d in range(120)]
    rows = [(user, day, "login", None) for user in range(1, 7) for i, day in enumerate(days) if user <= 3 or i < 60]
    write_inputs(settings, make_events(rows), make_users(6, signup=utc(2025, 12, 1)))
    result = runner.invoke(app, ["train"])
    assert result.exit_code == 1
    assert "TrainingError" in result.output and "too short for a sound time split" in result.output
    assert "9 observation times" in result.output and "at least 138 days of events" in result.output
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    assert client.get_experiment_by_name(registry.EXPERIMENT) is None
    assert client.search_registered_models() == []


def test_demo_with_too_short_a_history_stops_before_generating_anything(settings: Settings) -> None:
    result = runner.invoke(app, ["demo", "--days", "90", "--no-serve"])
    assert result.exit_code == 2
    assert "90 days are too short to train" in result.output and "at least 138 days" in result.output
    assert not settings.paths.raw.exists()


def test_demo_help_states_the_minimum_history_of_the_split() -> None:
    result = runner.invoke(app, ["demo", "--help"], terminal_width=200)
    assert f"{minimum_history_days(30, 7, 30)} by default" in result.output
