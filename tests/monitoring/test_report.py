"""The daily report's page drawn from the monitoring reports alone: what it says when a part is missing, that it
escapes what it quotes, and that its bucket charts are drawn to scale. (The page of a real period, opened in
Chromium: tests/e2e/test_monitoring_loop.py.)"""

import re
from datetime import UTC, date, datetime

import pytest
from typer.testing import CliRunner

from churn_common.errors import DataError
from churn_common.settings import Settings
from jobs.cli import app
from jobs.retrain import RetrainDecision, Trigger, _write_report
from monitoring.report import CHART_HEIGHT, bucket_chart, daily_report_file, render_daily_report, write_daily_report

DAY = date(2026, 3, 1)


def test_a_day_without_any_report_is_an_error_that_says_what_to_run(settings: Settings) -> None:
    with pytest.raises(DataError, match="churn pipeline daily"):
        render_daily_report(settings.paths, DAY)
    result = CliRunner().invoke(app, ["monitor", "report", "--date", DAY.isoformat()])
    assert result.exit_code == 1 and "no monitoring report" in result.output
    assert not daily_report_file(settings.paths, DAY).exists()


def test_missing_parts_are_said_and_quoted_text_is_escaped(settings: Settings) -> None:
    decision = RetrainDecision(
        datetime(2026, 3, 1, 1, tzinfo=UTC), "3", [Trigger("drift", "<script>alert(1)</script> over threshold")]
    )
    decision.outcome, decision.reason = "waiting", "within the cooldown"
    _write_report(settings, decision)
    page = write_daily_report(settings, DAY).read_text()
    assert 'data-outcome="waiting"' in page and "within the cooldown" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "No drift report for this day" in page and "No performance row for this day" in page
    assert "<img" not in page


def test_bucket_bars_are_to_scale() -> None:
    buckets = [
        {"bucket": "[-inf, 1)", "reference": 0.5, "snapshot": 0.25},
        {"bucket": "[1, inf)", "reference": 0.5, "snapshot": 0.0},
        {"bucket": "missing", "reference": 0.0, "snapshot": 0.75},
    ]
    chart = bucket_chart(buckets)
    assert chart.labels == ["[-inf, 1)", "[1, inf)", "missing"]
    assert [bar.height for bar in chart.day] == [CHART_HEIGHT / 3, 0.0, CHART_HEIGHT]
    assert [bar.height for bar in chart.reference] == [CHART_HEIGHT * 2 / 3, CHART_HEIGHT * 2 / 3, 0.0]
    assert len({bar.x for bar in chart.reference + chart.day}) == 6 and chart.width > max(b.x for b in chart.day)
    assert re.fullmatch(r"\d+(\.\d+)?", str(chart.width))
