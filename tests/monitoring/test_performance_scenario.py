"""A simulated period with a drift, end to end: CBPE estimates track the matured metrics while the champion is
calibrated, and the report says when calibration itself has drifted (and the model decayed).

generate (seed 5, drift_date mid-way) -> validate + build what arrived before day 150 -> apply -> train and promote a
champion with ``run_training`` at a clock of day 150 (test window days 128..135) -> the rest arrives -> batch
scoring at days 159 and 166 (before the drift, label windows closing by the drift date), 187 and 194 (after it) and
208 -> the report at day 216, when everything but day 208 has matured (horizon 14 days).

The generator's drift scenario alone (video watches 30 % shorter, a new acquisition channel) hardly moves the churn
process: measured without the addition below, predicted 16.0 % against 14.5 % observed at day 201 (ECE 0.032, under
0.05) and ROC-AUC 0.91-0.93, no decay. So the test adds a change of the churn process itself: from the drift date
every user quits abruptly (every later event removed from the raw drops, no decline before) with a hazard of 2 % a
day, as when a competitor launches. Those churners look like healthy users to the model: it under-predicts.

Tolerances (pre-drift dates, ~1,750 scored users, ~14 % churners):

* ROC-AUC: |matured - estimated| <= 0.03, three standard deviations of the AUC's label noise at this size (the
  report's simulation: 0.009-0.010). Measured: -0.016 (day 159), -0.0004 (day 166).
* churn rate: <= 0.025, three binomial standard deviations (sqrt(sum p(1 - p)) / n = 0.008). Measured: +0.002, +0.008.
* every metric within the report's own tolerance (3 sd of the metric over labels drawn from the probabilities).
  Measured PR-AUC gaps -0.041, +0.051 (tolerance 0.077, 0.081); lift -0.13, +0.21 (tolerance 0.71, 0.77).

After the drift the estimate stays where the probabilities put it (ROC-AUC ~0.91) while the matured ROC-AUC falls
well beyond its tolerance and the test ROC-AUC minus 0.05, and the churn rate runs far above the mean prediction:
calibration drift and decay on both matured post-drift dates, so the estimate of day 208 is not to be trusted.
Measured (test ROC-AUC 0.891): day 187 estimated 0.912, matured 0.764 (tolerance 0.026), churn 28.5 % against 16.0 %
predicted, ECE 0.125; day 194 estimated 0.903, matured 0.809, churn 39.6 % against 18.9 %, ECE 0.208.
"""

import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from churn_common.settings import DataPaths, Settings
from churn_common.store import apply_repo
from jobs.model_commands import run_training
from monitoring.performance import DateRow, performance_report
from monitoring.scoring import score_batch
from products import GeneratorConfig
from products.elearning import FEATURE_SERVICE
from products.elearning.generator import generate
from tests.monitoring.arrivals import arrive, midnight

pytestmark = pytest.mark.slow

USERS, START, BEFORE_DRIFT, AFTER_DRIFT = 3_000, date(2026, 1, 5), 180, 36
DRIFT_DATE = START + timedelta(days=BEFORE_DRIFT)
TRAINED_BY = START + timedelta(days=150)
HORIZON_DAYS = 14
QUIT_HAZARD_PER_DAY = 0.02
PRE_DRIFT, POST_DRIFT, NOT_MATURED = (159, 166), (187, 194), 208
AUC_TOLERANCE, RATE_TOLERANCE = 0.03, 0.025


def _day(offset: int) -> date:
    return START + timedelta(days=offset)


def _quit_abruptly(paths: DataPaths, seed: int) -> None:
    """From the drift date each user quits at an exponential time (``QUIT_HAZARD_PER_DAY``): every event from then
    on is removed from the raw drops."""
    days = np.random.default_rng(seed).exponential(1 / QUIT_HAZARD_PER_DAY, USERS + 1)
    quit_us = (pd.Timestamp(midnight(DRIFT_DATE)) + pd.to_timedelta(days, unit="D")).as_unit("us").asi8
    for drop in sorted(paths.raw_events.glob("date=*/*.parquet")):
        table = pq.read_table(drop)
        before = pa.array(quit_us[table["user_id"].to_numpy()])
        pq.write_table(table.filter(pc.less(pc.cast(table["event_timestamp"], pa.int64()), before)), drop)


def _by_day(rows: list[DateRow]) -> dict[int, DateRow]:
    return {(row.day - START).days: row for row in rows}


def test_estimates_track_matured_performance_until_calibration_drifts(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"label_horizon_days": HORIZON_DAYS})
    generate(settings.paths, GeneratorConfig(USERS, START, BEFORE_DRIFT + AFTER_DRIFT, seed=5, drift_date=DRIFT_DATE))
    _quit_abruptly(settings.paths, seed=7)
    accounts = tmp_path / "accounts_at_period_end.parquet"
    shutil.copy(settings.paths.raw_users, accounts)
    arrive(settings, accounts, START, TRAINED_BY - timedelta(days=1))
    apply_repo(settings)
    trained = run_training(settings.model_copy(update={"now": midnight(TRAINED_BY)}), FEATURE_SERVICE, promote=True)
    assert trained["promotion"]["promoted"]
    arrive(settings, accounts, TRAINED_BY, _day(BEFORE_DRIFT + AFTER_DRIFT - 1))
    for offset in (*PRE_DRIFT, *POST_DRIFT, NOT_MATURED):
        assert score_batch(settings, midnight(_day(offset))).scored > 1_000

    end = settings.model_copy(update={"now": midnight(_day(BEFORE_DRIFT + AFTER_DRIFT))})
    report = performance_report(end)
    rows = _by_day(report.rows)
    assert sorted(rows) == [*PRE_DRIFT, *POST_DRIFT, NOT_MATURED]
    test_roc_auc = trained["test_metrics"]["roc_auc"]["value"]

    for offset in PRE_DRIFT:
        row, entry = rows[offset], rows[offset].as_dict()
        assert row.matured is not None and row.calibration_drift is False and row.estimate_trusted, entry["calibration"]
        assert row.matured.unlabelled == 0 and row.matured.labelled == row.rows
        auc, rate = entry["metrics"]["roc_auc"], entry["metrics"]["positive_rate"]
        assert abs(auc["gap"]) <= AUC_TOLERANCE and abs(rate["gap"]) <= RATE_TOLERANCE, entry["metrics"]
        assert all(metric["within_tolerance"] for metric in entry["metrics"].values()), entry["metrics"]
        assert row.decay.decayed is False

    for offset in POST_DRIFT:
        row, entry = rows[offset], rows[offset].as_dict()
        calibration = row.matured.calibration
        assert row.calibration_drift is True and not row.estimate_trusted, entry["calibration"]
        assert calibration.observed_rate > calibration.mean_predicted + 0.05
        assert entry["metrics"]["roc_auc"]["within_tolerance"] is False, entry["metrics"]["roc_auc"]
        assert row.decay.source == "matured" and row.decay.reference == pytest.approx(test_roc_auc, abs=1e-4)
        assert row.decay.decayed is True, entry["decay"]

    late = rows[NOT_MATURED]
    assert late.matured is None and late.estimated.values["roc_auc"] is not None
    assert not late.estimate_trusted and f"calibration drifted on {_day(POST_DRIFT[-1])}" in late.trust_basis
    assert late.decay.decayed is None and late.decay.source == "estimated"  # an untrusted estimate judges nothing
    summary = report.summary()
    assert [flag["date"] for flag in summary["calibration_drift"]] == [_day(o).isoformat() for o in POST_DRIFT]
    assert [flag["date"] for flag in summary["decay"]] == [_day(o).isoformat() for o in POST_DRIFT]
    assert summary["models"][str(trained["registered_version"])]["estimate_trusted"] is False
