"""`churn materialize` as the CronJob runs it: seeds, continues, reports, exports metrics, fails loudly."""

import json
import os
import subprocess
import sys
from datetime import date, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from churn_common.store import apply_repo
from jobs.cli import app
from tests.feature_repo.factories import day_end, random_snapshots, write_snapshots

DAYS = [date(2026, 4, 1) + timedelta(days=i) for i in range(5)]


def _samples(prom_file) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(prom_file.read_text()) for s in f.samples}


def _run(settings, *args: str):
    env = {"CHURN_FEAST_PROJECT": settings.feast_project, "CHURN_DATA_DIR": str(settings.paths.root)}
    return CliRunner().invoke(app, ["materialize", *args], env=env)


def test_first_run_seeds_then_runs_incrementally_and_exports_metrics(settings):
    write_snapshots(random_snapshots(range(1, 26), DAYS[:3], seed=2), settings.paths.snapshots)
    apply_repo(settings)

    first = _run(settings, "--end", day_end(DAYS[2]).strftime("%Y-%m-%dT%H:%M:%S"))
    assert first.exit_code == 0, first.output
    report = json.loads(first.output[first.output.index("{") :])
    assert report["seeded"] and report["rows_written"] == 25
    metrics = _samples(settings.paths.metrics / "materialize.prom")
    assert metrics["churn_materialize_rows_written"] == 25
    assert metrics["churn_materialize_newest_feature_timestamp_seconds"] == day_end(DAYS[2]).timestamp()
    assert metrics["churn_materialize_last_success_timestamp_seconds"] > 0

    write_snapshots(random_snapshots(range(1, 11), DAYS[3:], seed=3), settings.paths.snapshots)
    second = _run(settings, "--end", day_end(DAYS[4]).strftime("%Y-%m-%dT%H:%M:%S"))
    assert second.exit_code == 0, second.output
    report = json.loads(second.output[second.output.index("{") :])
    assert not report["seeded"] and report["start"] == day_end(DAYS[2]).isoformat()
    # Feast's window is inclusive at both ends: the 15 users whose newest row sits exactly at the previous end
    # are written again, beside the 10 with new rows.
    assert _samples(settings.paths.metrics / "materialize.prom")["churn_materialize_rows_written"] == 25
    assert report["newest_feature_timestamp"] == day_end(DAYS[4]).isoformat()


def test_promtool_accepts_the_exported_metrics(settings):
    write_snapshots(random_snapshots(range(1, 4), DAYS[:1], seed=4), settings.paths.snapshots)
    apply_repo(settings)
    assert _run(settings, "--end", day_end(DAYS[0]).strftime("%Y-%m-%dT%H:%M:%S")).exit_code == 0
    check = subprocess.run(
        ["promtool", "check", "metrics"],
        input=(settings.paths.metrics / "materialize.prom").read_text(),
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow
def test_without_snapshots_the_job_exits_non_zero_with_a_clear_message(settings):
    apply_repo(settings)
    env = {"CHURN_FEAST_PROJECT": settings.feast_project, "CHURN_DATA_DIR": str(settings.paths.root)}
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "materialize"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 1
    assert "no feature snapshots" in done.stderr and "Traceback" not in done.stderr
