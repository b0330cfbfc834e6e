"""`churn retrain`'s decision without training: which triggers it sees, the cooldown, and what it records when
nothing calls for a retrain. (Training, promotion and refusal run in tests/e2e/test_monitoring_loop.py.)"""

import json
from datetime import UTC, datetime, timedelta

import pytest

from churn_common.champion import registry_client, version_by_alias
from churn_common.names import CHAMPION_ALIAS, REGISTERED_MODEL
from churn_common.settings import Settings
from jobs.retrain import RETRAINED_AT_TAG, _cooling_down, find_triggers, retrain, retrain_report_file
from monitoring.drift import drift_report
from tests.monitoring.conftest import after_training, write_scoring
from tests.monitoring.test_drift import training_rows
from training.train import TrainingResult


def _champion(settings: Settings):
    return version_by_alias(registry_client(settings.tracking_uri), CHAMPION_ALIAS)


def _aged(settings: Settings, days: float) -> Settings:
    """The clock ``days`` after the champion was registered."""
    created = datetime.fromtimestamp(_champion(settings).creation_timestamp / 1000, UTC)
    return settings.model_copy(update={"now": created + timedelta(days=days)})


def test_no_finding_and_a_young_champion_retrain_nothing_and_say_so(world: Settings) -> None:
    settings = _aged(world, 3)
    decision = retrain(settings)
    assert (decision.outcome, decision.triggers, decision.challenger_version) == ("not retrained", [], None)
    assert "no trigger" in decision.reason
    recorded = json.loads(retrain_report_file(settings.paths, decision.at).read_text())
    assert recorded["outcome"] == "not retrained" and recorded["champion_version"] == str(_champion(world).version)


def test_a_champion_past_its_age_is_due(world: Settings) -> None:
    young, old = _aged(world, 27.9), _aged(world, 28.1)
    assert find_triggers(young, _champion(young), force=False) == []
    [trigger] = find_triggers(old, _champion(old), force=False)
    assert trigger.kind == "schedule" and "28 days old" in trigger.detail


def test_drift_over_threshold_is_a_trigger_naming_the_features(world: Settings, trained: TrainingResult) -> None:
    day = after_training(trained)
    rows = training_rows(trained)
    rows["tenure_days"] = rows["tenure_days"] + rows["tenure_days"].max() + 1
    write_scoring(world, day, rows)
    settings = _aged(world, 1)
    [trigger] = find_triggers(settings, _champion(settings), force=False, drift=drift_report(settings, day))
    assert trigger.kind == "drift" and "tenure_days" in trigger.detail


@pytest.mark.parametrize(("days_since", "force", "waits"), [(3, False, True), (3, True, False), (8, False, False)])
def test_within_the_cooldown_only_a_forced_retrain_goes_ahead(
    world: Settings, days_since: int, force: bool, waits: bool
) -> None:
    settings = _aged(world, 40)  # past retrain_max_age_days: the schedule calls for a retrain
    last = settings.clock() - timedelta(days=days_since)
    client = registry_client(settings.tracking_uri)
    version = _champion(settings).version
    client.set_model_version_tag(REGISTERED_MODEL, version, RETRAINED_AT_TAG, last.isoformat())
    try:
        triggers = find_triggers(settings, _champion(settings), force=force)
        assert {t.kind for t in triggers} == ({"schedule", "manual"} if force else {"schedule"})
        if waits:
            decision = retrain(settings, force=force)
            assert decision.outcome == "waiting" and "retrain_cooldown_days=7" in decision.reason
        else:
            assert _cooling_down(settings, triggers) is None  # it would train: tests/e2e/test_monitoring_loop.py
    finally:
        client.delete_model_version_tag(REGISTERED_MODEL, version, RETRAINED_AT_TAG)
