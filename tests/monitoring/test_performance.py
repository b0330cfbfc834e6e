"""Known answers for performance monitoring: CBPE by hand and on calibrated synthetic probabilities, calibration by
hand, one-class dates, maturity (horizon passed and validated data reaching its end), calibration drift making later
estimates untrusted, decay against the champion's test ROC-AUC, idempotent reports, and the command's exit codes.
A real champion in a real MLflow (SQLite), real validated files and a real prediction log."""

import json
import math
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import chi2
from sklearn.metrics import average_precision_score, roc_auc_score
from typer.testing import CliRunner

from churn_common.errors import DataError, ModelNotFound
from churn_common.labels import LabelSpec, matured_until
from churn_common.names import JOIN_KEY
from churn_common.prediction_log import PREDICTION_LOG_SCHEMA, log_file
from churn_common.settings import Settings
from jobs.cli import app
from monitoring.performance import (
    calibration,
    curve_metrics,
    estimated_metrics,
    matured_metrics,
    performance_report,
    performance_report_file,
    sampling_spread,
)
from products.elearning import FEATURE_SERVICE
from tests.factories import make_events, make_users, utc, write_validated
from tests.monitoring.conftest import register_champion
from training.evaluate import classification_metrics
from training.train import TrainingResult

D1, D2 = date(2026, 3, 2), date(2026, 3, 9)
HORIZON = 30  # the settings' default label horizon


def at(day: date, days: float = 0) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC").as_unit("us") + pd.Timedelta(days=days)


def write_log(settings: Settings, day: date, user_ids, probabilities, version: str = "1") -> None:
    """A batch prediction log of ``day`` scored at its midnight by ``version`` of model churn."""
    n = len(user_ids)
    columns = {
        "scored_at": [at(day)] * n,
        JOIN_KEY: np.asarray(user_ids, dtype="int64"),
        "features_as_of": [at(day)] * n,
        "churn_probability": np.asarray(probabilities, dtype=float),
        "risk_band": ["low"] * n,
        "reasons": ["[]"] * n,
        "model_name": ["churn"] * n,
        "model_version": [version] * n,
        "feature_service": [FEATURE_SERVICE] * n,
        "source": ["batch"] * n,
    }
    target = log_file(settings.prediction_log_root, day.isoformat(), "batch")
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=PREDICTION_LOG_SCHEMA), target)


def activity_for(day: date, labels: dict[int, int], reach_days: float = 35) -> list[tuple]:
    """Logins that give each user its inactivity label at ``day``'s midnight: a non-churner logs in 3 days after, a
    churner 2 days before; everyone logs in ``reach_days`` after, beyond the horizon (no label changes), so the
    validated events reach that far."""
    rows = []
    for user_id, label in labels.items():
        rows.append((user_id, at(day, -2 if label else 3), "login", None))
        rows.append((user_id, at(day, reach_days), "login", None))
    return rows


def write_world(settings: Settings, events: list[tuple], n_users: int, closed_at=None) -> None:
    users = make_users(n_users, signup=utc(2026, 1, 1), closed_at=closed_at)
    write_validated(settings.paths, users, make_events(events))


def calibrated_date(n: int, seed: int) -> tuple[np.ndarray, dict[int, int]]:
    """Probabilities and labels drawn from them, for users 1..n."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 5, n)
    labels = (rng.random(n) < p).astype(int)
    return p, {user_id: int(label) for user_id, label in zip(range(1, n + 1), labels, strict=True)}


def clocked(settings: Settings, day: date, days: float) -> Settings:
    return settings.model_copy(update={"now": at(day, days).to_pydatetime()})


# --- CBPE -------------------------------------------------------------------------------------------------------


def test_cbpe_by_hand() -> None:
    p = np.array([0.9, 0.6, 0.6, 0.2])
    estimate = estimated_metrics(p)
    # Expected positives 2.3, negatives 1.7. Thresholds 0.9, 0.6 (both rows), 0.2: E[TP] 0.9, 2.1, 2.3; E[FP] 0.1,
    # 0.9, 1.7. Trapezoids: (0.1 * 0.9 + 0.8 * (0.9 + 2.1) + 0.8 * (2.1 + 2.3)) / (2 * 1.7 * 2.3) = 6.01 / 7.82.
    assert estimate.values["roc_auc"] == pytest.approx(6.01 / 7.82, rel=1e-12)
    # Precision 0.9 / 1, 2.1 / 3, 2.3 / 4 at recall steps 0.9, 1.2, 0.2 (over 2.3).
    assert estimate.values["pr_auc"] == pytest.approx((0.9 * 0.9 + 1.2 * 0.7 + 0.2 * 0.575) / 2.3, rel=1e-12)
    # Top decile: ceil(0.4) = 1 row, 0.9, over the mean 0.575.
    assert estimate.values["lift_top_decile"] == pytest.approx(0.9 / 0.575)
    assert estimate.values["positive_rate"] == pytest.approx(0.575) and estimate.reasons == {}
    # The same AUC as expected concordant pairs (a tie counts a half; the ratio of expectations, as CBPE takes it).
    pairs = sum(pi * (1 - pj) * ((pi > pj) + 0.5 * (pi == pj)) for pi in p for pj in p)
    assert estimate.values["roc_auc"] == pytest.approx(pairs / (p.sum() * (1 - p).sum()), rel=1e-12)


def test_the_curves_on_drawn_labels_are_sklearns() -> None:
    """curve_metrics is what the tolerances are drawn with: on 0/1 counts it is sklearn's ROC-AUC and AP, ties too."""
    rng = np.random.default_rng(4)
    scores = np.round(rng.random(300), 1)  # many ties
    labels = (rng.random(300) < scores).astype(int)
    order = np.argsort(-scores, kind="stable")
    last = np.r_[np.flatnonzero(np.diff(scores[order]) != 0), len(scores) - 1]
    roc_auc, average_precision = curve_metrics(np.cumsum(labels[order])[last].astype(float), last + 1.0)
    assert roc_auc == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
    assert average_precision == pytest.approx(average_precision_score(labels, scores), rel=1e-12)


def test_cbpe_on_calibrated_probabilities_is_the_expected_realised_metric() -> None:
    """Labels drawn 60 times from calibrated probabilities (3,000 rows, ~29 % churners): the realised metrics average
    to the estimate (within 3 standard errors of the mean) and spread as the tolerances' simulation says (+-30 %:
    the sd of 60 draws is itself uncertain by ~9 %)."""
    rng = np.random.default_rng(3)
    p = rng.beta(2, 5, 3000)
    estimate = estimated_metrics(p).values
    spread = sampling_spread(p, np.random.default_rng(9))
    draws = [classification_metrics((rng.random(len(p)) < p).astype(int), p) for _ in range(60)]
    for name, key in (("roc_auc", "roc_auc"), ("pr_auc", "pr_auc"), ("lift_top_decile", "lift_top_decile")):
        realised = np.array([draw[key] for draw in draws])
        sd = realised.std(ddof=1)
        assert abs(realised.mean() - estimate[name]) <= 3 * sd / math.sqrt(len(realised)), name
        assert spread[name] == pytest.approx(sd, rel=0.3), name
    rates = np.array([draw["base_rate"] for draw in draws])
    assert spread["positive_rate"] == pytest.approx(math.sqrt((p * (1 - p)).sum()) / len(p), rel=0.1)
    assert abs(rates.mean() - estimate["positive_rate"]) <= 3 * rates.std(ddof=1) / math.sqrt(len(rates))


def test_cbpe_without_an_expected_class() -> None:
    none = estimated_metrics(np.zeros(5))
    assert none.values == {"positive_rate": 0.0, "roc_auc": None, "pr_auc": None, "lift_top_decile": None}
    assert "no expected churner" in none.reasons["roc_auc"] and "no expected churner" in none.reasons["lift_top_decile"]
    every = estimated_metrics(np.ones(5))
    assert every.values["roc_auc"] is None and "no expected non-churner" in every.reasons["pr_auc"]
    assert every.values["lift_top_decile"] == 1.0


# --- matured ----------------------------------------------------------------------------------------------------


def test_calibration_by_hand(settings: Settings) -> None:
    """Ten bins of two rows: probabilities 0.05, 0.15, ..., 0.95 twice, and labels per bin chosen by hand."""
    p = np.repeat(np.arange(0.05, 1.0, 0.1), 2)
    labels = np.array([0, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1])
    found = calibration(labels, p, settings)
    # |observed - predicted| per bin: 0.05, 0.15, 0.25, 0.15, 0.05, 0.05, 0.35, 0.25, 0.15, 0.05.
    assert found.ece == pytest.approx(1.5 / 10)
    assert [row["observed_rate"] for row in found.bins] == [0, 0, 0.5, 0.5, 0.5, 0.5, 1, 0.5, 1, 1]
    assert [row["rows"] for row in found.bins] == [2] * 10
    np.testing.assert_allclose([row["mean_predicted"] for row in found.bins], np.arange(0.05, 1.0, 0.1))
    # (observed - expected)^2 / (2 p (1 - p)) per bin.
    by_hand = [(0, 0.1, 0.095), (0, 0.3, 0.255), (1, 0.5, 0.375), (1, 0.7, 0.455), (1, 0.9, 0.495)]
    by_hand += [(1, 1.1, 0.495), (2, 1.3, 0.455), (1, 1.5, 0.375), (2, 1.7, 0.255), (2, 1.9, 0.095)]
    statistic = sum((o - e) ** 2 / v for o, e, v in by_hand)
    assert found.hosmer_lemeshow == pytest.approx(statistic) and statistic == pytest.approx(3.564871, abs=1e-6)
    assert found.p_value == pytest.approx(chi2.sf(statistic, 10))
    assert found.observed_rate == 11 / 20 and found.mean_predicted == pytest.approx(0.5)
    assert found.rate_z == pytest.approx((11 - 10) / math.sqrt(3.35))  # sum p(1 - p) = 2 * 1.675
    # Material (ECE 0.15 > 0.05) but 20 rows show it by chance (p 0.97): not drifted.
    assert not found.drifted


def test_a_large_miscalibrated_date_has_drifted(settings: Settings) -> None:
    p = np.full(2000, 0.2)
    labels = (np.arange(2000) % 5 < 2).astype(int)  # 40 % churn where 20 % was predicted
    found = calibration(labels, p, settings)
    assert found.ece == pytest.approx(0.2) and found.p_value < 1e-12 and found.drifted
    assert found.rate_z == pytest.approx(400 / math.sqrt(2000 * 0.16))
    assert not calibration(labels, p, settings.model_copy(update={"performance_ece_threshold": 0.25})).drifted
    assert not calibration(labels, p, settings.model_copy(update={"performance_calibration_alpha": 1e-300})).drifted


def test_one_class_matured_labels(settings: Settings) -> None:
    p = np.linspace(0.0, 0.3, 100)
    nobody = matured_metrics(np.zeros(100), p, 0, settings)
    values, reasons = nobody.metrics.values, nobody.metrics.reasons
    assert values["roc_auc"] is None and values["pr_auc"] is None and "every matured label is 0" in reasons["roc_auc"]
    assert values["lift_top_decile"] is None and "no churner" in reasons["lift_top_decile"]
    assert values["positive_rate"] == 0.0 and nobody.churners == 0 and nobody.labelled == 100
    assert nobody.calibration is not None and nobody.calibration.ece == pytest.approx(p.mean())
    everybody = matured_metrics(np.ones(100), p, 0, settings)
    values, reasons = everybody.metrics.values, everybody.metrics.reasons
    assert values["roc_auc"] is None and "every matured label is 1" in reasons["pr_auc"]
    assert values["lift_top_decile"] == 1.0
    empty = matured_metrics(np.zeros(0), p[:0], 3, settings)
    assert empty.calibration is None and empty.unlabelled == 3
    assert "no scored row is labelled" in empty.metrics.reasons["roc_auc"]


# --- the report -------------------------------------------------------------------------------------------------


def test_matured_only_after_the_horizon(world: Settings) -> None:
    p, labels = calibrated_date(400, seed=1)
    write_world(world, activity_for(D1, labels), 400)
    write_log(world, D1, list(labels), p)

    before = performance_report(clocked(world, D1, HORIZON - 1))
    (row,) = before.rows
    assert row.matured is None and row.calibration_drift is None and before.summary()["matured_dates"] == []
    written = json.loads(performance_report_file(world.paths, D1).read_text())
    (entry,) = written["rows"]
    assert entry["matured"] is False and entry["labels"] is None and entry["calibration"] is None
    assert {metric["matured"] for metric in entry["metrics"].values()} == {None}
    assert entry["metrics"]["roc_auc"]["estimated"] is not None and entry["estimate_trusted"] is True
    assert entry["matures_at"] == at(D1, HORIZON).isoformat()

    after = performance_report(clocked(world, D1, HORIZON + 1))
    (row,) = after.rows
    y = np.array(list(labels.values()))
    assert row.matured is not None and row.matured.labelled == 400 and row.matured.churners == int(y.sum())
    assert row.matured.metrics.values["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert row.matured.metrics.values["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert row.matured.metrics.values["positive_rate"] == pytest.approx(y.mean())
    assert row.label == "inactivity" and row.label_source == "run"  # the registry logs the label with the version
    entry = json.loads(performance_report_file(world.paths, D1).read_text())["rows"][0]
    assert entry["matured"] is True and entry["labels"]["labelled"] == 400 and entry["labels"]["unlabelled"] == 0
    # Calibrated by construction: every gap within its tolerance, and no calibration drift.
    for name, metric in entry["metrics"].items():
        assert metric["within_tolerance"] is True, (name, metric)
        assert metric["gap"] == pytest.approx(metric["matured"] - metric["estimated"], abs=2e-6)
    assert entry["calibration_drift"] is False and entry["estimate_trusted"] is True


def test_not_matured_while_the_validated_data_stops_short(world: Settings) -> None:
    """The clock is past the horizon, but the newest validated event is 20 days after D: an active user's logins
    between day 20 and 30 may not have arrived, so the labels are not final."""
    p, labels = calibrated_date(50, seed=2)
    write_world(world, activity_for(D1, labels, reach_days=20), 50)
    write_log(world, D1, list(labels), p)
    report = performance_report(clocked(world, D1, HORIZON + 10))
    assert report.rows[0].matured is None
    assert report.matured_until == at(D1, 20 - HORIZON).to_pydatetime()
    assert matured_until(LabelSpec.of(world), at(D1, 100).to_pydatetime()) == at(D1, 20 - HORIZON)


def test_nothing_matures_without_validated_events(world: Settings) -> None:
    assert matured_until(LabelSpec.of(world), at(D1, 100).to_pydatetime()) is None
    write_log(world, D1, [1, 2, 3], [0.1, 0.2, 0.3])
    report = performance_report(clocked(world, D1, 100))
    assert report.matured_until is None and report.rows[0].matured is None


def test_a_one_class_date_in_the_report(world: Settings) -> None:
    write_world(world, activity_for(D1, dict.fromkeys(range(1, 31), 0)), 30)
    write_log(world, D1, range(1, 31), np.linspace(0.05, 0.5, 30))
    entry = performance_report(clocked(world, D1, 40)).as_dict()["rows"][0]
    assert entry["matured"] is True and entry["labels"]["churners"] == 0
    assert entry["metrics"]["roc_auc"]["matured"] is None and entry["metrics"]["roc_auc"]["gap"] is None
    assert "every matured label is 0" in entry["reasons"]["matured.roc_auc"]
    assert "no churner" in entry["reasons"]["matured.lift_top_decile"]
    # Decay falls back on the estimate when the matured labels cannot give a ROC-AUC.
    assert entry["decay"]["source"] == "estimated"


def test_unlabelled_rows_are_counted(world: Settings) -> None:
    """Users 9 and 10 closed their accounts before D: no customers at D, so no label."""
    closed = [None] * 8 + [at(D1, -5), at(D1, -1)]
    write_world(world, activity_for(D1, {i: i % 2 for i in range(1, 9)}), 10, closed_at=closed)
    write_log(world, D1, range(1, 11), np.linspace(0.1, 0.6, 10))
    labels = performance_report(clocked(world, D1, 40)).as_dict()["rows"][0]["labels"]
    assert labels == {"labelled": 8, "churners": 4, "non_churners": 4, "unlabelled": 2}


def test_calibration_drift_makes_the_later_estimates_untrusted(world: Settings, trained: TrainingResult) -> None:
    """D1 matured: predicted 10 %, observed 50 %, and the ranking random. D2 has not matured: its estimate rests on
    calibrated probabilities, which D1 showed they no longer are."""
    n = 1000
    labels = {user_id: user_id % 2 for user_id in range(1, n + 1)}
    events = activity_for(D1, labels)
    write_world(world, events, n)
    rng = np.random.default_rng(5)
    write_log(world, D1, list(labels), rng.uniform(0.05, 0.15, n))
    write_log(world, D2, list(labels), rng.uniform(0.05, 0.15, n))
    report = performance_report(clocked(world, D1, 31))
    first, second = report.rows
    assert first.day == D1 and first.calibration_drift is True and not first.estimate_trusted
    assert second.day == D2 and second.matured is None and not second.estimate_trusted
    assert f"calibration drifted on {D1}" in second.trust_basis and "not to be trusted" in second.trust_basis
    # Nor can an untrusted estimate say whether the model decayed.
    assert second.decay.decayed is None and "not to be trusted" in second.decay.unknown
    summary = report.summary()
    assert summary["calibration_drift"] == [{"date": D1.isoformat(), "model_version": "1"}]
    assert summary["untrusted_estimates"] == [
        {"date": D1.isoformat(), "model_version": "1"},
        {"date": D2.isoformat(), "model_version": "1"},
    ]
    assert summary["models"]["1"]["estimate_trusted"] is False
    # Decay: a random ranking (matured ROC-AUC ~0.5) against the champion's test ROC-AUC, from its version tag.
    reference = trained.metrics["roc_auc"]
    assert first.decay.reference == pytest.approx(reference, abs=1e-6) and first.decay.source == "matured"
    assert first.decay.roc_auc < reference - 0.05 and first.decay.decayed is True
    assert summary["decay"][0] == {"date": D1.isoformat(), "model_version": "1"}
    lenient = performance_report(clocked(world, D1, 31).model_copy(update={"performance_decay_threshold": 1.0}))
    assert lenient.rows[0].decay.decayed is False and lenient.summary()["decay"] == []


def test_held_calibration_keeps_estimates_trusted(world: Settings) -> None:
    p, labels = calibrated_date(500, seed=6)
    write_world(world, activity_for(D1, labels), 500)
    write_log(world, D1, list(labels), p)
    write_log(world, D2, list(labels), p)
    first, second = performance_report(clocked(world, D1, 31)).rows
    assert first.calibration_drift is False and second.estimate_trusted
    assert second.trust_basis.startswith(f"calibration held on {D1}")


def test_the_report_is_idempotent_and_a_date_alone_is_the_same(world: Settings) -> None:
    p, labels = calibrated_date(300, seed=7)
    write_world(world, activity_for(D1, labels), 300)
    write_log(world, D1, list(labels), p)
    write_log(world, D2, list(labels), p[::-1])
    clock = clocked(world, D2, 1)
    first = performance_report(clock)
    files = {day: performance_report_file(world.paths, day).read_bytes() for day in (D1, D2)}
    second = performance_report(clock)
    assert first.as_dict() == second.as_dict()
    assert {day: performance_report_file(world.paths, day).read_bytes() for day in (D1, D2)} == files

    performance_report_file(world.paths, D1).unlink()
    alone = performance_report(clock, D2)
    assert [row.day for row in alone.rows] == [D2] and not performance_report_file(world.paths, D1).exists()
    assert performance_report_file(world.paths, D2).read_bytes() == files[D2]


def test_dates_after_the_clock_are_left_out(world: Settings) -> None:
    write_log(world, D1, [1, 2], [0.1, 0.2])
    write_log(world, D2, [1, 2], [0.1, 0.2])
    assert [row.day for row in performance_report(clocked(world, D1, 3)).rows] == [D1]


def test_the_label_the_version_was_trained_with(settings: Settings, trained: TrainingResult) -> None:
    """The run says closure: users 1-5 close in the horizon and nobody is active, so inactivity would call all ten
    churners; closure calls five."""
    register_champion(settings.data_dir, trained, label="closure")
    closed = [at(D1, 10)] * 5 + [None] * 5
    write_world(settings, [(1, at(D1, 40), "login", None)], 10, closed_at=closed)
    write_log(settings, D1, range(1, 11), np.linspace(0.1, 0.6, 10))
    (row,) = performance_report(clocked(settings, D1, 41)).rows
    assert row.label == "closure" and row.label_source == "run"
    assert row.matured is not None and row.matured.churners == 5 and row.matured.labelled == 10


def test_a_version_no_longer_registered(world: Settings) -> None:
    write_log(world, D1, [1, 2, 3], [0.1, 0.2, 0.3], version="77")
    (row,) = performance_report(clocked(world, D1, 1)).rows
    assert row.model_version == "77" and row.label_source.startswith("settings (version not in the registry")
    assert row.decay.reference is None and row.decay.decayed is None


def test_bad_probabilities_are_an_error(world: Settings) -> None:
    write_log(world, D1, [1, 2, 3], [0.1, 1.5, np.nan])
    with pytest.raises(DataError, match="2 churn probabilities missing or outside"):
        performance_report(clocked(world, D1, 1))
    assert not performance_report_file(world.paths, D1).exists()


def test_an_empty_log_is_reported_as_such(world: Settings) -> None:
    write_log(world, D1, [], [])
    report = performance_report(clocked(world, D1, 1))
    assert report.rows == [] and report.empty_dates == [D1] and report.summary()["dates"] == [D1.isoformat()]
    assert json.loads(performance_report_file(world.paths, D1).read_text())["rows"] == []


# --- the command ------------------------------------------------------------------------------------------------


def _cli(world: Settings, monkeypatch: pytest.MonkeyPatch, now: pd.Timestamp, *args: str):
    monkeypatch.setenv("CHURN_MLFLOW_TRACKING_URI", world.tracking_uri)
    monkeypatch.setenv("CHURN_NOW", now.isoformat())
    return CliRunner().invoke(app, ["monitor", "performance", *args])


def test_command_prints_the_summary_and_exits_0_on_findings(world: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 400
    labels = {user_id: user_id % 2 for user_id in range(1, n + 1)}
    write_world(world, activity_for(D1, labels), n)
    write_log(world, D1, list(labels), np.full(n, 0.1))  # 50 % churn where 10 % was predicted
    result = _cli(world, monkeypatch, at(D1, 31), "--date", D1.isoformat())
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dates"] == [D1.isoformat()] and summary["matured_dates"] == [D1.isoformat()]
    assert summary["calibration_drift"] == [{"date": D1.isoformat(), "model_version": "1"}]
    assert summary["rows"][0]["roc_auc"]["matured"] == 0.5 and summary["champion_version"] == "1"
    assert performance_report_file(world.paths, D1).exists()


def test_command_without_champion_exits_1(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["monitor", "performance"])
    assert result.exit_code == 1 and "ModelNotFound" in result.stderr and "champion" in result.stderr
    with pytest.raises(ModelNotFound):
        performance_report(settings)


def test_command_without_prediction_log_exits_1(world: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _cli(world, monkeypatch, at(D1))
    assert result.exit_code == 1 and "no batch prediction log" in result.stderr and "churn score" in result.stderr
    result = _cli(world, monkeypatch, at(D1), "--date", D2.isoformat())
    assert result.exit_code == 1 and f"no batch prediction log for {D2}" in result.stderr


def test_thresholds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURN_PERFORMANCE_ECE_THRESHOLD", "0.08")
    monkeypatch.setenv("CHURN_PERFORMANCE_DECAY_THRESHOLD", "0.02")
    settings = Settings()
    assert settings.performance_ece_threshold == 0.08 and settings.performance_decay_threshold == 0.02
    assert settings.performance_calibration_alpha == 0.01 and settings.performance_tolerance_z == 3.0
    monkeypatch.setenv("CHURN_PERFORMANCE_ECE_THRESHOLD", "0")
    with pytest.raises(ValueError, match="performance_ece_threshold"):
        Settings()
