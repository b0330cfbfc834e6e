"""`churn model list` and `churn model show` over a real MLflow: the versions with their aliases and label, and the
model card every trained version carries (data windows, population, label, metrics with intervals, limits)."""

import json

from typer.testing import CliRunner

from churn_common.settings import Settings
from jobs.cli import app
from products.elearning import FEATURE_SERVICE
from training import registry
from training.train import TrainingResult

runner = CliRunner()


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])


def test_list_and_show_read_back_the_versions_and_their_card(settings: Settings, trained: TrainingResult) -> None:
    first = registry.log_and_register(settings, trained, FEATURE_SERVICE)
    assert registry.promote(settings)["promoted"]
    second = registry.log_and_register(settings, trained, FEATURE_SERVICE)
    listed = _json(runner.invoke(app, ["model", "list", "--json"]))["versions"]
    assert [str(row["version"]) for row in listed] == [str(second.version), str(first.version)]
    assert (listed[0]["aliases"], listed[1]["aliases"]) == ("challenger", "champion"), listed
    assert all(row["label"] == "inactivity" and row["feature_service"] == FEATURE_SERVICE for row in listed)
    assert float(listed[1]["test_roc_auc"]) == round(trained.metrics["roc_auc"], 6)

    shown = runner.invoke(app, ["model", "show"])
    detail = _json(shown)
    assert str(detail["version"]) == str(first.version) and detail["params"]["label_horizon_days"] == "30"
    card = shown.stdout[shown.stdout.rindex("}") + 1 :]
    metrics, test = trained.metrics, trained.split.test
    assert f"# Model card: {trained.family} on `{FEATURE_SERVICE}`" in card
    assert f"{test['event_timestamp'].min():%Y-%m-%d} .. {test['event_timestamp'].max():%Y-%m-%d}" in card
    assert f"ROC-AUC {metrics['roc_auc']:.3f} (95 % CI {metrics['roc_auc_ci_low']:.3f} .. " in card
    assert "`inactivity`: no activity event" in card and "within" not in card.split("## Label")[0]
    train = trained.split.train["event_timestamp"]
    assert f"Training rows: {train.min():%Y-%m-%d} .. {train.max():%Y-%m-%d}" in card
    counts = ", ".join(f"{status.value} {count}" for status, count in trained.population.counts.items())
    assert f"Candidate rows by status: {counts};" in card
    assert "## Limits" in card and "| time |" in card
    assert trained.fingerprint["sha256"] in card
