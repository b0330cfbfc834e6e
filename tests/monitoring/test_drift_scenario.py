"""The generator's --drift scenario, end to end on small data, as known answer: from the drift date video watches
are 30 % shorter and ~30 % of new signups come through a new channel, tiktok_ads; nothing else changes.

A champion is trained on what had arrived before the drift date (validate -> build -> apply -> labels -> training
set -> train -> register -> promote), the rest of the period arrives, batch scoring scores the period end, and drift
monitoring flags the watch-minutes features and the channel, and nothing the drift does not touch.

Thresholds (from the settings, as a team would set them): PSI 0.05 by default, tenure 0.25.

* 0.05 sits above sampling noise at this size: with ~1,700 reference (fit) rows, ~2,000 scored rows and 10 bins,
  the PSI of two samples of one distribution is about chi2(9) / 900, whose 99.9 % quantile is 0.031. The platform
  default, 0.2, is the line of a major shift on large data; a 30 % drop in watch minutes measures 0.06-0.24 (seeds
  5-7; the sum over a short window is mostly count noise, which the drop does not change): mostly under 0.2.
* Tenure grows with the calendar, so against a reference frozen at training it drifts by construction (0.09-0.12
  here, 12 weeks after the fit rows, with or without the drift): its own threshold, 0.25.

The data is seeded (seed 5), so every run measures the same values; they are in the comments below. The same run
without ``drift_date`` measures at most 0.03 on every feature but tenure.
"""

import shutil
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from churn_common.population import PopulationRule
from churn_common.settings import Settings
from churn_common.store import apply_repo, feature_store
from monitoring.drift import drift_report
from monitoring.scoring import score_batch
from products import GeneratorConfig
from products.elearning import FEATURE_SERVICE
from products.elearning.generator import generate
from tests.monitoring.arrivals import arrive, midnight
from training import registry
from training.dataset import get_training_set
from training.labels import build_labels
from training.train import train_churn_model

pytestmark = pytest.mark.slow

USERS, START, BEFORE_DRIFT, AFTER_DRIFT = 3_000, date(2026, 1, 5), 150, 28
DRIFT_DATE = START + timedelta(days=BEFORE_DRIFT)
HORIZON_DAYS = 14  # a short horizon leaves room for fit, validation and test before the drift date
# The longest window, 90 days, is complete only from day 90 on: earlier observation times would give a reference whose
# *_90d features cover a part of their window (see the report of this change).
FIRST_OBSERVATION = START + timedelta(days=90)

DRIFTED = ["watch_minutes_7d", "watch_minutes_14d", "watch_minutes_30d", "watch_minutes_trend_7d"]
DRIFTED += ["acquisition_channel"]
# watch_minutes_90d is left out of both lists: at the scoring date under a third of its window is after the drift.
UNTOUCHED_STEMS = ("active_days_", "sessions_", "videos_watched_", "quiz_", "enrolls_", "completions_", "payment")
UNTOUCHED_STEMS += ("amount_paid_", "support_tickets_")
UNTOUCHED = ["days_since_last_activity", "tenure_days", "plan", "country"]


def _train_champion(settings: Settings) -> None:
    """run_training's steps, with the observation times cut to those whose every feature window holds data."""
    labels = build_labels(settings)
    labels = labels[labels["event_timestamp"] >= pd.Timestamp(FIRST_OBSERVATION, tz="UTC")]
    rule = PopulationRule(settings.active_window_days)
    training_set = get_training_set(feature_store(settings), labels, FEATURE_SERVICE, rule)
    result = train_churn_model(training_set.frame, HORIZON_DAYS, population=training_set.population)
    assert result.split.test["event_timestamp"].max() + timedelta(days=HORIZON_DAYS) <= midnight(DRIFT_DATE)
    registry.log_and_register(settings, result, FEATURE_SERVICE)
    assert registry.promote(settings)["promoted"]


def test_the_drift_scenario_is_flagged_where_it_changes_the_data(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(
        update={
            "label_horizon_days": HORIZON_DAYS,
            "drift_psi_threshold": 0.05,
            "drift_thresholds": {"tenure_days": 0.25},
        }
    )
    generate(settings.paths, GeneratorConfig(USERS, START, BEFORE_DRIFT + AFTER_DRIFT, seed=5, drift_date=DRIFT_DATE))
    accounts = tmp_path / "accounts_at_period_end.parquet"
    shutil.copy(settings.paths.raw_users, accounts)
    arrive(settings, accounts, START, DRIFT_DATE - timedelta(days=1))
    apply_repo(settings)
    _train_champion(settings)

    last_day = DRIFT_DATE + timedelta(days=AFTER_DRIFT - 1)
    arrive(settings, accounts, DRIFT_DATE, last_day)
    scoring = score_batch(settings, midnight(last_day + timedelta(days=1)))
    report = drift_report(settings)

    assert report.day == last_day + timedelta(days=1) and report.rows == scoring.scored > 1_000
    psi = {drift.name: drift.psi for drift in report.features}
    untouched = [name for name in psi if name.startswith(UNTOUCHED_STEMS) or name in UNTOUCHED]
    assert len(untouched) == len(psi) - len(DRIFTED) - 1, sorted(set(psi) - set(untouched))
    # Measured: 0.11-0.21 on the drifted ones; at most 0.03 on the untouched ones (tenure 0.09, under its 0.25).
    assert set(report.drifted) == set(DRIFTED), {name: round(psi[name], 3) for name in psi if psi[name] > 0.05}
    channel = next(drift for drift in report.features if drift.name == "acquisition_channel")
    assert set(channel.new_categories) == {"tiktok_ads"} and channel.new_categories["tiktok_ads"] > 20
    assert report.prediction.drift is not None and report.prediction.rows == scoring.scored
