"""Performance monitoring (``churn monitor performance``): how well the models rank and how calibrated they are, per
scoring date D of the batch prediction log (``source=batch``) and per model version that scored on D: estimated at
once from the model's own probabilities, and measured once the labels of D have matured, side by side.

**Estimated** (confidence-based performance estimation, as NannyML's CBPE): each calibrated probability p_i is taken
as P(label_i = 1). At every distinct score, descending, the expected true positives are the sum of p over the rows
at or above it and the expected false positives the sum of 1 - p; the expected ROC curve (TPR = E[TP] / E[P],
FPR = E[FP] / E[N]) gives the expected ROC-AUC (trapezoids, ties as one threshold, as sklearn's roc_auc_score),
the expected precision E[TP] / rows at each threshold the expected average precision (PR-AUC, steps as sklearn's
average_precision_score), the mean p of the top decile over the mean p the expected top-decile lift, and the mean
p the expected churn rate. Nothing else is needed, so the estimate exists from the day D was scored.

**Matured**: the labels of D are final once the label horizon after D has passed and the validated events reach
that far (churn_common.labels.matured_until: the censoring training applies). The log's rows (user_id, scored_at)
are then labelled by churn_common.labels.label_entities with the label the version was trained with (its run's
``label`` param, else the settings'), over ``Settings.label_horizon_days``: rows whose user was no customer at that
instant get no label and are counted as unlabelled. On the labelled rows: ROC-AUC, PR-AUC and top-decile lift (the
functions training evaluates its test set with, training.evaluate), the churn rate, and calibration: the observed
rate against the mean probability, the reliability table over 10 equal-frequency bins and its expected calibration
error (ECE, the row-weighted mean |observed - predicted| of the bins). A metric a date's labels cannot give (AUCs
when every label is one class, lift without a churner) is None with the reason.

**Tolerance**: how far a matured metric may fall from its estimate by chance alone when the model is calibrated.
Labels are drawn from the date's probabilities ``SIMULATIONS`` times (seeded per date and version, so a report is
reproducible) and each metric is computed on every draw exactly as on matured labels; the tolerance is
``performance_tolerance_z`` standard deviations of those draws (3: a calibrated model's gap exceeds it about 0.3 % of
the time). Each side-by-side metric says whether its gap is within it.

**Calibration drift**, on a matured date: the ECE exceeds ``performance_ece_threshold`` (material) AND chance
cannot explain the bins' deviations (significant): the Hosmer-Lemeshow statistic sum_b (O_b - E_b)^2 / V_b over the
same bins (O observed churners, E = sum p and V = sum p(1 - p), the exact variance of O under calibration) exceeds
its chi-squared quantile (one degree of freedom per bin: the probabilities were not fitted on these rows) at
``1 - performance_calibration_alpha``. Both, because the ECE of a calibrated model is never 0 (its noise is about
0.8 * sqrt(rate * (1 - rate) * bins / rows): 0.02 at 2,000 rows and a 20 % rate, 0.05 at 300), and on large dates
the test alone would flag deviations too small to matter. Estimates assume calibration: a version whose latest
matured date (at or before D) shows calibration drift has its estimates on D marked as not to be trusted.

**Decay**: the date's ROC-AUC, matured when the labels give one, else estimated, below the scoring version's test
ROC-AUC (its ``test_roc_auc`` tag) by more than ``performance_decay_threshold``. An estimate not to be trusted judges
nothing: decay is then unknown, with the reason.

Each reported date's rows go to ``reports/performance/date=D.json`` (replaced whole), as of the settings clock.
"""

import json
import logging
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from scipy.stats import chi2

from churn_common.champion import registry_client, version_by_alias
from churn_common.errors import DataError, ModelRegistryError
from churn_common.files import write_text_atomically
from churn_common.labels import LabelSpec, label_entities, matured_until
from churn_common.names import CHAMPION_ALIAS, JOIN_KEY, TIMESTAMP_FIELD
from churn_common.prediction_log import log_file
from churn_common.settings import DataPaths, Settings
from training.evaluate import classification_metrics, top_fraction_mask

logger = logging.getLogger(__name__)

BINS = 10
SIMULATIONS = 200
_SIMULATION_CHUNK = 25  # draws at a time: memory stays at chunk x rows
METRICS = ("roc_auc", "pr_auc", "lift_top_decile", "positive_rate")
TEST_ROC_AUC_TAG = "test_roc_auc"
LABEL_PARAM = "label"
PROBABILITY = "churn_probability"
_LOG_COLUMNS = ["scored_at", JOIN_KEY, PROBABILITY, "model_name", "model_version"]
_NOT_FOUND_CODES = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}


@dataclass(frozen=True)
class Metrics:
    """Metric values by name; a value that cannot be computed is None and its reason is in ``reasons``."""

    values: dict[str, float | None]
    reasons: dict[str, str]


# --- the curves, on expected or on drawn counts ------------------------------------------------------------------


def _thresholds(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows in descending score order, and per distinct score the position of its last row in that order."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    return order, np.r_[np.flatnonzero(ranked[1:] != ranked[:-1]), len(scores) - 1]


def curve_metrics(tp: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision from the cumulative true positives ``tp`` (expected or drawn; thresholds on the
    last axis, descending) and the rows at or above each threshold. NaN where a class has no weight."""
    fp = rows - tp
    zeros = np.zeros_like(tp[..., :1])
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.concatenate([zeros, tp / tp[..., -1:]], axis=-1)
        fpr = np.concatenate([zeros, fp / fp[..., -1:]], axis=-1)
        roc_auc = np.trapezoid(tpr, fpr, axis=-1)
        average_precision = np.sum(np.diff(tpr, axis=-1) * (tp / rows), axis=-1)
    return roc_auc, average_precision


def estimated_metrics(probabilities: np.ndarray) -> Metrics:
    """CBPE: the metrics expected when each probability is its row's chance of churning (see the module)."""
    p = np.asarray(probabilities, dtype=float)
    if len(p) == 0:
        return Metrics(dict.fromkeys(METRICS), dict.fromkeys(METRICS, "no scored rows"))
    values: dict[str, float | None] = {"positive_rate": float(p.mean())}
    reasons: dict[str, str] = {}
    if p.sum() == 0 or p.sum() == len(p):
        reason = f"every probability is {int(p[0])}: no expected {'churner' if p[0] == 0 else 'non-churner'}"
        values |= {"roc_auc": None, "pr_auc": None}
        reasons |= {"roc_auc": reason, "pr_auc": reason}
    else:
        order, last = _thresholds(p)
        roc_auc, average_precision = curve_metrics(np.cumsum(p[order])[last], last + 1.0)
        values |= {"roc_auc": float(roc_auc), "pr_auc": float(average_precision)}
    if p.sum() == 0:
        values["lift_top_decile"], reasons["lift_top_decile"] = None, "every probability is 0: no expected churner"
    else:
        values["lift_top_decile"] = float(p[top_fraction_mask(p)].mean() / p.mean())
    return Metrics(values, reasons)


def sampling_spread(probabilities: np.ndarray, rng: np.random.Generator) -> dict[str, float | None]:
    """Standard deviation of each metric over ``SIMULATIONS`` label sets drawn from the probabilities: how much a
    calibrated model's matured metrics vary by chance around the estimate. None when no draw can give the metric."""
    p = np.asarray(probabilities, dtype=float)
    order, last = _thresholds(p)
    top = top_fraction_mask(p)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    for _ in range(SIMULATIONS // _SIMULATION_CHUNK):
        labels = rng.random((_SIMULATION_CHUNK, len(p))) < p
        roc_auc, average_precision = curve_metrics(np.cumsum(labels[:, order], axis=1)[:, last], last + 1.0)
        rate = labels.mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            lift = labels[:, top].mean(axis=1) / rate
        for name, values in zip(METRICS, (roc_auc, average_precision, lift, rate), strict=True):
            draws[name].append(values)
    return {name: _std(np.concatenate(values)) for name, values in draws.items()}


def _std(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.std(ddof=1)) if len(finite) > 1 else None


# --- matured labels ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """The matured labels against the probabilities, overall and per equal-frequency bin."""

    observed_rate: float
    mean_predicted: float
    rate_z: float | None
    """(observed churners - expected) / their standard deviation under calibration; None when that is 0."""
    ece: float
    hosmer_lemeshow: float
    p_value: float
    bins: list[dict[str, float]]
    drifted: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "observed_rate": _round(self.observed_rate),
            "mean_predicted": _round(self.mean_predicted),
            "rate_z": _round(self.rate_z),
            "ece": _round(self.ece),
            "hosmer_lemeshow": _round(self.hosmer_lemeshow),
            "p_value": _round(self.p_value),
            "drifted": self.drifted,
            "bins": [{key: _round(value) for key, value in row.items()} for row in self.bins],
        }


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray) -> list[dict[str, float]]:
    """``BINS`` equal-frequency bins of the probabilities (fewer when there are fewer rows): per bin the rows, the
    probability range, the mean probability, the observed churn rate, and the expected churners and their variance."""
    order = np.argsort(probabilities, kind="stable")
    rows = []
    for members in np.array_split(order, min(BINS, len(order))):
        p, y = probabilities[members], labels[members]
        rows.append(
            {
                "rows": float(len(members)),
                "low": float(p.min()),
                "high": float(p.max()),
                "mean_predicted": float(p.mean()),
                "observed_rate": float(y.mean()),
                "expected": float(p.sum()),
                "variance": float((p * (1 - p)).sum()),
            }
        )
    return rows


def hosmer_lemeshow(labels: np.ndarray, bins: list[dict[str, float]]) -> tuple[float, float]:
    """The statistic over the bins and its p-value (chi-squared, one degree of freedom per bin). A bin whose
    probabilities are all 0 or 1 has no variance: it adds nothing if it came true, else makes the deviation certain."""
    statistic = 0.0
    for row in bins:
        deviation = row["observed_rate"] * row["rows"] - row["expected"]
        if row["variance"] > 0:
            statistic += deviation**2 / row["variance"]
        elif abs(deviation) > 1e-9:
            statistic = math.inf
    return statistic, float(chi2.sf(statistic, df=len(bins)))


def calibration(labels: np.ndarray, probabilities: np.ndarray, settings: Settings) -> Calibration:
    """Calibration of one date's matured labels, and whether it has drifted by the settings' thresholds."""
    bins = reliability_bins(labels, probabilities)
    ece = sum(row["rows"] * abs(row["observed_rate"] - row["mean_predicted"]) for row in bins) / len(labels)
    statistic, p_value = hosmer_lemeshow(labels, bins)
    variance = float((probabilities * (1 - probabilities)).sum())
    deviation = float(labels.sum() - probabilities.sum())
    return Calibration(
        observed_rate=float(labels.mean()),
        mean_predicted=float(probabilities.mean()),
        rate_z=deviation / math.sqrt(variance) if variance > 0 else None,
        ece=float(ece),
        hosmer_lemeshow=statistic,
        p_value=p_value,
        bins=[{key: row[key] for key in ("rows", "low", "high", "mean_predicted", "observed_rate")} for row in bins],
        drifted=ece > settings.performance_ece_threshold and p_value < settings.performance_calibration_alpha,
    )


@dataclass(frozen=True)
class Matured:
    """What a date's matured labels say: the metrics, label counts and calibration (None without labelled rows)."""

    metrics: Metrics
    extra: dict[str, float]
    """Brier score and top-decile recall, as training reports them."""
    labelled: int
    churners: int
    unlabelled: int
    calibration: Calibration | None


def matured_metrics(labels: np.ndarray, probabilities: np.ndarray, unlabelled: int, settings: Settings) -> Matured:
    """The metrics of the labelled rows, with training's own metric functions (training.evaluate)."""
    labels = np.asarray(labels, dtype=int)
    if len(labels) == 0:
        reason = "no scored row is labelled: none was a customer at its scoring time"
        return Matured(Metrics(dict.fromkeys(METRICS), dict.fromkeys(METRICS, reason)), {}, 0, 0, unlabelled, None)
    computed = classification_metrics(labels, probabilities)
    values = {name: computed.get(name) for name in ("roc_auc", "pr_auc")}
    values |= {"lift_top_decile": _finite(computed["lift_top_decile"]), "positive_rate": computed["base_rate"]}
    reasons = {}
    if values["roc_auc"] is None:
        reason = f"every matured label is {labels[0]}: the AUCs need churners and non-churners"
        reasons |= {"roc_auc": reason, "pr_auc": reason}
    if values["lift_top_decile"] is None:
        reasons["lift_top_decile"] = "no churner among the matured labels: lift is relative to their rate"
    extra = {"brier": computed["brier"], "recall_top_decile": computed["recall_top_decile"]}
    return Matured(
        metrics=Metrics(values, reasons),
        extra={name: value for name, value in extra.items() if math.isfinite(value)},
        labelled=len(labels),
        churners=int(labels.sum()),
        unlabelled=unlabelled,
        calibration=calibration(labels, np.asarray(probabilities, dtype=float), settings),
    )


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


# --- one row per date and model version -------------------------------------------------------------------------


@dataclass(frozen=True)
class Decay:
    """The date's ROC-AUC against the scoring version's test ROC-AUC, or why decay cannot be judged."""

    reference: float | None
    roc_auc: float | None
    source: str | None
    """``matured`` or ``estimated``: where ``roc_auc`` comes from."""
    threshold: float
    unknown: str | None = None

    @property
    def decayed(self) -> bool | None:
        if self.unknown is not None or self.reference is None or self.roc_auc is None:
            return None
        return self.roc_auc < self.reference - self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "test_roc_auc": self.reference,
            "roc_auc": _round(self.roc_auc),
            "source": self.source,
            "threshold": self.threshold,
            "decayed": self.decayed,
            **({"unknown": self.unknown} if self.unknown else {}),
        }


def decay(
    reference: float | None, estimated: Metrics, matured: Matured | None, trusted: bool, threshold: float
) -> Decay:
    """The matured ROC-AUC when the labels give one, else the estimate unless it is not to be trusted."""
    matured_auc = matured.metrics.values["roc_auc"] if matured else None
    if matured_auc is not None:
        return Decay(reference, matured_auc, "matured", threshold)
    estimate = estimated.values["roc_auc"]
    if reference is None:
        return Decay(None, estimate, "estimated", threshold, "the model version has no test ROC-AUC to compare with")
    if estimate is None:
        return Decay(reference, None, None, threshold, "neither matured labels nor the estimate give a ROC-AUC")
    if not trusted:
        unknown = "the labels have not matured and the estimate is not to be trusted (calibration drifted)"
        return Decay(reference, estimate, "estimated", threshold, unknown)
    return Decay(reference, estimate, "estimated", threshold)


@dataclass(frozen=True)
class DateRow:
    """One scoring date and model version: estimated and (once matured) matured performance, tolerances, flags."""

    day: date
    model_name: str
    model_version: str
    rows: int
    scored_at: datetime
    label: str
    label_source: str
    matures_at: datetime
    estimated: Metrics
    tolerance: dict[str, float | None]
    matured: Matured | None
    decay: Decay
    estimate_trusted: bool
    trust_basis: str

    @property
    def calibration_drift(self) -> bool | None:
        calibration = self.matured.calibration if self.matured else None
        return None if calibration is None else calibration.drifted

    def side_by_side(self, name: str) -> dict[str, Any]:
        estimated, tolerance = self.estimated.values[name], self.tolerance.get(name)
        matured = self.matured.metrics.values[name] if self.matured else None
        gap = None if estimated is None or matured is None else matured - estimated
        within = None if gap is None or tolerance is None else abs(gap) <= tolerance
        return {
            "estimated": _round(estimated),
            "matured": _round(matured),
            "gap": _round(gap),
            "tolerance": _round(tolerance),
            "within_tolerance": within,
        }

    def reasons(self) -> dict[str, str]:
        reasons = {f"estimated.{name}": reason for name, reason in self.estimated.reasons.items()}
        if self.matured:
            reasons |= {f"matured.{name}": reason for name, reason in self.matured.metrics.reasons.items()}
        return reasons

    def summary(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(),
            "model_version": self.model_version,
            "rows": self.rows,
            "matured": self.matured is not None,
            "roc_auc": self.side_by_side("roc_auc"),
            "calibration_drift": self.calibration_drift,
            "decay": self.decay.decayed,
            "estimate_trusted": self.estimate_trusted,
        }

    def as_dict(self) -> dict[str, Any]:
        matured = self.matured
        return {
            **self.summary(),
            "model_name": self.model_name,
            "scored_at": self.scored_at.isoformat(),
            "label": self.label,
            "label_source": self.label_source,
            "matures_at": self.matures_at.isoformat(),
            "metrics": {name: self.side_by_side(name) for name in METRICS},
            "reasons": self.reasons(),
            "labels": None if matured is None else _label_counts(matured),
            "matured_extra": None if matured is None else {k: _round(v) for k, v in matured.extra.items()},
            "calibration": matured.calibration.as_dict() if matured and matured.calibration else None,
            "decay": self.decay.as_dict(),
            "trust_basis": self.trust_basis,
        }


def _label_counts(matured: Matured) -> dict[str, int]:
    return {
        "labelled": matured.labelled,
        "churners": matured.churners,
        "non_churners": matured.labelled - matured.churners,
        "unlabelled": matured.unlabelled,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


@dataclass(frozen=True)
class PerformanceReport:
    as_of: datetime
    champion_version: str
    matured_until: datetime | None
    """Rows scored at or before this instant have matured labels."""
    rows: list[DateRow]
    thresholds: dict[str, float]
    empty_dates: list[date]
    """Scoring dates whose batch log holds no rows."""

    @property
    def days(self) -> list[date]:
        return sorted({row.day for row in self.rows} | set(self.empty_dates))

    def models(self) -> dict[str, dict[str, Any]]:
        """Per model version, as of its latest reported date: can its estimates be trusted, and why."""
        latest = {row.model_version: row for row in self.rows}
        return {
            version: {"date": row.day.isoformat(), "estimate_trusted": row.estimate_trusted, "basis": row.trust_basis}
            for version, row in sorted(latest.items())
        }

    def summary(self) -> dict[str, Any]:
        """What the command prints: the flags, each version's trust, and every row's ROC-AUC side by side."""
        return {
            "as_of": self.as_of.isoformat(),
            "champion_version": self.champion_version,
            "matured_until": None if self.matured_until is None else self.matured_until.isoformat(),
            "dates": [day.isoformat() for day in self.days],
            "matured_dates": sorted({row.day.isoformat() for row in self.rows if row.matured}),
            "calibration_drift": [_key(row) for row in self.rows if row.calibration_drift],
            "decay": [_key(row) for row in self.rows if row.decay.decayed],
            "untrusted_estimates": [_key(row) for row in self.rows if not row.estimate_trusted],
            "models": self.models(),
            "rows": [row.summary() for row in self.rows],
        }

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary(), "thresholds": self.thresholds, "rows": [row.as_dict() for row in self.rows]}

    def day_report(self, day: date) -> dict[str, Any]:
        """The content of ``reports/performance/date=D.json``."""
        return {
            "date": day.isoformat(),
            "as_of": self.as_of.isoformat(),
            "champion_version": self.champion_version,
            "thresholds": self.thresholds,
            "rows": [row.as_dict() for row in self.rows if row.day == day],
        }


def _key(row: DateRow) -> dict[str, str]:
    return {"date": row.day.isoformat(), "model_version": row.model_version}


def performance_report_file(paths: DataPaths, day: date) -> Path:
    return paths.reports / "performance" / f"date={day.isoformat()}.json"


# --- the report -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """The batch log rows of one date and model version."""

    day: date
    model_name: str
    model_version: str
    frame: pd.DataFrame

    @property
    def scored_at(self) -> datetime:
        return self.frame["scored_at"].max().to_pydatetime()


@dataclass(frozen=True)
class _Version:
    label: str
    label_source: str
    test_roc_auc: float | None


def performance_report(settings: Settings, day: date | None = None) -> PerformanceReport:
    """Performance of every batch scoring date up to the settings clock (or of ``day`` alone, judged on the dates up
    to it); writes each reported date's ``reports/performance/date=D.json`` and returns the report."""
    client = registry_client(settings.tracking_uri)
    champion = version_by_alias(client, CHAMPION_ALIAS)
    now = settings.clock()
    days = _scoring_days(settings, day, now)
    groups, empty = _read_groups(settings, days)
    spec = LabelSpec.of(settings)
    versions = {key: _version(client, spec, *key) for key in {(g.model_name, g.model_version) for g in groups}}
    until = matured_until(spec, now)
    matured = _matured(groups, versions, spec, until, settings)
    trust = _trust(groups, matured)
    rows = [
        _row(group, versions[_version_key(group)], matured.get(i), trust[i], settings)
        for i, group in enumerate(groups)
        if day is None or group.day == day
    ]
    report = PerformanceReport(
        as_of=now,
        champion_version=str(champion.version),
        matured_until=until,
        rows=rows,
        thresholds=_thresholds_of(settings),
        empty_dates=[d for d in empty if day is None or d == day],
    )
    for reported_day in report.days:
        _write_json(report.day_report(reported_day), performance_report_file(settings.paths, reported_day))
    logger.info("performance of %d date(s), %d row(s), as of %s", len(report.days), len(report.rows), now)
    return report


def _thresholds_of(settings: Settings) -> dict[str, float]:
    return {
        "ece": settings.performance_ece_threshold,
        "calibration_alpha": settings.performance_calibration_alpha,
        "decay": settings.performance_decay_threshold,
        "tolerance_z": settings.performance_tolerance_z,
        "label_horizon_days": settings.label_horizon_days,
    }


def _scoring_days(settings: Settings, day: date | None, now: datetime) -> list[date]:
    """The dates of the batch log up to ``day`` (it must have one) or the clock's date."""
    root = settings.prediction_log_root
    found = sorted(
        date.fromisoformat(path.parent.name.removeprefix("date=")) for path in root.glob("date=*/source=batch.parquet")
    )
    if day is not None:
        if day not in found:
            raise DataError(f"no batch prediction log for {day} at {log_file(root, day.isoformat(), 'batch')}")
        return [d for d in found if d <= day]
    days = [d for d in found if d <= now.date()]
    if not days:
        raise DataError(f"no batch prediction log under {root} up to {now.date()}; run `churn score` first")
    return days


def _read_groups(settings: Settings, days: Iterable[date]) -> tuple[list[_Group], list[date]]:
    """Each date's log rows per model version, in date then version order; and the dates without rows."""
    groups, empty = [], []
    for day in days:
        frame = _read_log(log_file(settings.prediction_log_root, day.isoformat(), "batch"))
        if frame.empty:
            logger.warning("the batch prediction log of %s holds no rows", day)
            empty.append(day)
        for (name, version), rows in frame.groupby(["model_name", "model_version"], sort=True):
            groups.append(_Group(day, str(name), str(version), rows.reset_index(drop=True)))
    return groups, empty


def _read_log(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path, columns=_LOG_COLUMNS)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the batch prediction log {path}: {exc}") from exc
    p = frame[PROBABILITY]
    bad = p.isna() | (p < 0) | (p > 1)
    if bad.any():
        raise DataError(f"{path} has {int(bad.sum())} churn probabilities missing or outside [0, 1]")
    return frame


def _version(client: MlflowClient, spec: LabelSpec, name: str, version: str) -> _Version:
    """The label the version was trained with (its run's param, else the settings') and its test ROC-AUC. A version
    no longer in the registry is still reported, labelled by the settings, without a reference to decay from."""
    try:
        registered = client.get_model_version(name, version)
        params = client.get_run(registered.run_id).data.params
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND_CODES:
            logger.warning("version %s of %r is not in the registry: labelled with the settings' label", version, name)
            return _Version(spec.kind, "settings (version not in the registry)", None)
        raise ModelRegistryError(f"cannot read version {version} of model {name!r}: {exc.message}") from exc
    label, source = (params[LABEL_PARAM], "run") if LABEL_PARAM in params else (spec.kind, "settings")
    reference = registered.tags.get(TEST_ROC_AUC_TAG)
    return _Version(label, source, float(reference) if reference else None)


def _matured(
    groups: list[_Group],
    versions: dict[tuple[str, str], _Version],
    spec: LabelSpec,
    until: datetime | None,
    settings: Settings,
) -> dict[int, Matured]:
    """The matured metrics of each group whose rows have all matured, by group index; one label query per kind."""
    ripe = [i for i, group in enumerate(groups) if until is not None and group.scored_at <= until]
    matured: dict[int, Matured] = {}
    for kind in sorted({versions[_version_key(groups[i])].label for i in ripe}):
        indices = [i for i in ripe if versions[_version_key(groups[i])].label == kind]
        entities = pd.concat([_entities(groups[i]) for i in indices]).drop_duplicates()
        labels = label_entities(entities, replace(spec, kind=kind))
        for i in indices:
            matured[i] = _matured_group(groups[i], labels, settings)
    return matured


def _version_key(group: _Group) -> tuple[str, str]:
    return group.model_name, group.model_version


def _entities(group: _Group) -> pd.DataFrame:
    return group.frame[[JOIN_KEY, "scored_at"]].rename(columns={"scored_at": TIMESTAMP_FIELD})


def _matured_group(group: _Group, labels: pd.DataFrame, settings: Settings) -> Matured:
    keyed = group.frame.rename(columns={"scored_at": TIMESTAMP_FIELD})
    labelled = keyed.merge(labels, on=[JOIN_KEY, TIMESTAMP_FIELD], how="inner", validate="many_to_one")
    unlabelled = len(keyed) - len(labelled)
    return matured_metrics(labelled["label"].to_numpy(), labelled[PROBABILITY].to_numpy(), unlabelled, settings)


def _trust(groups: list[_Group], matured: dict[int, Matured]) -> list[tuple[bool, str]]:
    """Per group: may its estimate be trusted? Its version's latest matured calibration up to its date decides
    (groups come in date order)."""
    latest: dict[tuple[str, str], tuple[date, Calibration]] = {}
    verdicts = []
    for i, group in enumerate(groups):
        calibration = matured[i].calibration if i in matured else None
        if calibration is not None:
            latest[_version_key(group)] = (group.day, calibration)
        verdicts.append(_verdict(latest.get(_version_key(group))))
    return verdicts


def _verdict(evidence: tuple[date, Calibration] | None) -> tuple[bool, str]:
    if evidence is None:
        return True, "no matured date of this version yet: its probabilities are as calibrated as training found them"
    day, found = evidence
    if found.drifted:
        return False, (
            f"calibration drifted on {day} (ECE {found.ece:.3f}, Hosmer-Lemeshow p {found.p_value:.2g}): the "
            "estimate assumes calibrated probabilities, so it is not to be trusted for this model"
        )
    return True, f"calibration held on {day} (ECE {found.ece:.3f})"


def _row(
    group: _Group, version: _Version, matured: Matured | None, trust: tuple[bool, str], settings: Settings
) -> DateRow:
    probabilities = group.frame[PROBABILITY].to_numpy()
    estimated = estimated_metrics(probabilities)
    spread = sampling_spread(probabilities, _rng(group))
    z = settings.performance_tolerance_z
    return DateRow(
        day=group.day,
        model_name=group.model_name,
        model_version=group.model_version,
        rows=len(group.frame),
        scored_at=group.scored_at,
        label=version.label,
        label_source=version.label_source,
        matures_at=group.scored_at + timedelta(days=settings.label_horizon_days),
        estimated=estimated,
        tolerance={name: None if sd is None else z * sd for name, sd in spread.items()},
        matured=matured,
        decay=decay(version.test_roc_auc, estimated, matured, trust[0], settings.performance_decay_threshold),
        estimate_trusted=trust[0],
        trust_basis=trust[1],
    )


def _rng(group: _Group) -> np.random.Generator:
    """Seeded by date and version: the same log gives the same tolerances."""
    return np.random.default_rng(zlib.crc32(f"{group.day}/{group.model_name}/{group.model_version}".encode()))


def _write_json(payload: dict[str, Any], target: Path) -> None:
    write_text_atomically(target, json.dumps(payload, indent=2))
