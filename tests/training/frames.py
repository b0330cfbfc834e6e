"""A synthetic point-in-time training frame with the model features of churn_model_v2 and a learnable label, built
with numpy alone (vectorised, so the training benchmark can ask for a million rows).

Each user has a hidden engagement level that drifts week to week; every activity feature is a noisy function
of it, and the churn label is drawn from a logistic function of it. The hidden level never appears as a column.
Every row is one the population rule scores (active in the trailing 30 days); :func:`with_unscored_candidates` adds
the rows a point-in-time join of all candidates also returns (closed, stale, inactive, unknown accounts).
"""

import numpy as np
import pandas as pd

from churn_common.feature_frame import ServiceSchema
from churn_common.names import ACCOUNT_STATUS
from churn_common.population import CLOSED, OPEN, Status
from products.elearning import CATALOG as ELEARNING

# The service's model features in its order: the four activity views, user_status_daily, then the account
# attributes of user_account (its account_status is a population field, never a model input).
STATUS_NUMERIC = ["days_since_last_activity", "tenure_days", "active_days_trend_7d", "watch_minutes_trend_7d"]
STRING_FEATURES = ["plan", "country", "acquisition_channel"]
PLANS = np.array(["free", "paid"])
COUNTRIES = np.array(["DE", "FR", "US", "IN", "BR"])
CHANNELS = np.array(["organic", "paid_search", "social", "referral"])
ACTIVE_WINDOW_DAYS = 30
UNSCORED = (Status.CLOSED, Status.STALE, Status.INACTIVE, Status.UNKNOWN)


def feature_names() -> list[str]:
    return [*ELEARNING.window_features(), *STATUS_NUMERIC, *STRING_FEATURES]


def snapshot_features() -> list[str]:
    return [*ELEARNING.window_features(), *STATUS_NUMERIC]


def make_training_frame(
    n_users: int = 300,
    n_times: int = 16,
    *,
    start: str = "2026-02-02",
    cadence_days: int = 7,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(frame, ground_truth)``: user_id, event_timestamp, label + features; and user_id, churn_propensity."""
    rng = np.random.default_rng(seed)
    user_level = rng.normal(size=n_users)
    plan_idx = rng.integers(0, len(PLANS), n_users)
    n = n_users * n_times
    users = np.repeat(np.arange(1, n_users + 1, dtype="int64"), n_times)
    time_idx = np.tile(np.arange(n_times), n_users)
    engagement = np.repeat(user_level, n_times) + 0.4 * rng.normal(size=n)
    plan = PLANS[np.repeat(plan_idx, n_times)]
    logit = -1.2 - 1.4 * engagement + 0.6 * (plan == "free")
    frame = pd.DataFrame(
        {
            "user_id": users,
            "event_timestamp": pd.Timestamp(start, tz="UTC") + pd.to_timedelta(time_idx * cadence_days, unit="D"),
            "label": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64"),
        }
    )
    features = _features(rng, engagement, time_idx, cadence_days)
    features["plan"] = plan
    features["country"] = COUNTRIES[np.repeat(rng.integers(0, len(COUNTRIES), n_users), n_times)]
    features["acquisition_channel"] = CHANNELS[np.repeat(rng.integers(0, len(CHANNELS), n_users), n_times)]
    frame = pd.concat([frame, pd.DataFrame(features)[feature_names()]], axis=1)
    frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
    static_logit = -1.2 - 1.4 * user_level + 0.6 * (PLANS[plan_idx] == "free")
    truth = pd.DataFrame({"user_id": np.arange(1, n_users + 1), "churn_propensity": 1 / (1 + np.exp(-static_logit))})
    return frame, truth


_DAILY_RATES = {
    "sessions": 0.8,
    "videos_watched": 0.6,
    "quiz_attempts": 0.2,
    "enrolls": 0.02,
    "completions": 0.01,
    "payments": 0.03,
    "payment_failures": 0.005,
    "support_tickets": 0.01,
}


def _features(rng: np.random.Generator, engagement: np.ndarray, time_idx: np.ndarray, cadence: int) -> dict:
    activity = np.exp(0.7 * engagement)
    out: dict[str, np.ndarray] = {}
    for window in ELEARNING.windows:
        counts = {stem: rng.poisson(rate * window * activity) for stem, rate in _DAILY_RATES.items()}
        for stem, values in counts.items():
            out[f"{stem}_{window}d"] = values.astype("int64")
        # Scored rows are active in the trailing window: at least one active day in every window that covers it.
        floor = 1 if window >= ACTIVE_WINDOW_DAYS else 0
        out[f"active_days_{window}d"] = np.clip(rng.poisson(0.5 * window * activity), floor, window).astype("int64")
        out[f"watch_minutes_{window}d"] = counts["videos_watched"] * rng.gamma(2.0, 10.0, len(engagement))
        quiz_mean = np.clip(60 + 10 * engagement + rng.normal(0, 8, len(engagement)), 0, 100)
        out[f"quiz_score_mean_{window}d"] = np.where(counts["quiz_attempts"] > 0, quiz_mean, np.nan)
        out[f"amount_paid_{window}d"] = counts["payments"] * 19.0
        charges = counts["payments"] + counts["payment_failures"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"payment_fail_rate_{window}d"] = np.where(charges > 0, counts["payment_failures"] / charges, np.nan)
    out["days_since_last_activity"] = np.round(rng.exponential(3.0 / activity)).astype("int64")
    out["tenure_days"] = (30 + time_idx * cadence + rng.integers(0, 300, len(engagement))).astype("int64")
    out["active_days_trend_7d"] = out["active_days_7d"] - (out["active_days_14d"] - out["active_days_7d"])
    out["watch_minutes_trend_7d"] = out["watch_minutes_7d"] - (out["watch_minutes_14d"] - out["watch_minutes_7d"])
    return out


def with_unscored_candidates(frame: pd.DataFrame, n_each: int = 15, seed: int = 0) -> pd.DataFrame:
    """``frame`` (all scored, now with ``account_status`` "open") plus, at each of its observation times, ``n_each``
    new users per unscored status, shaped as the point-in-time join returns them: closed accounts and stale
    snapshots have every snapshot feature missing, inactive users zero activity in the trailing window, unknown
    users no account either. All of them labelled churners, the way a model trained on them would learn the rule
    instead of churn."""
    rng = np.random.default_rng(seed)
    times = np.sort(frame["event_timestamp"].unique())
    first_id = int(frame["user_id"].max()) + 1
    parts = [frame.assign(**{ACCOUNT_STATUS: OPEN})]
    for k, status in enumerate(UNSCORED):
        donors = frame.sample(n=n_each * len(times), random_state=seed + k, replace=True).reset_index(drop=True)
        users = first_id + k * n_each + np.arange(n_each)
        donors["user_id"] = np.tile(users, len(times)).astype("int64")
        donors["event_timestamp"] = np.repeat(times, n_each)
        donors["label"] = 1
        parts.append(_as_unscored(donors, status, rng))
    candidates = pd.concat(parts, ignore_index=True)
    candidates["event_timestamp"] = candidates["event_timestamp"].astype("datetime64[us, UTC]")
    return candidates


def _as_unscored(rows: pd.DataFrame, status: Status, rng: np.random.Generator) -> pd.DataFrame:
    rows[ACCOUNT_STATUS] = {Status.CLOSED: CLOSED, Status.UNKNOWN: None}.get(status, OPEN)
    if status in (Status.CLOSED, Status.STALE, Status.UNKNOWN):
        rows[snapshot_features()] = np.nan
    if status == Status.UNKNOWN:
        rows[STRING_FEATURES] = None
    if status == Status.INACTIVE:
        for window in ELEARNING.windows:
            if window <= ACTIVE_WINDOW_DAYS:
                rows[[f"{stem}_{window}d" for stem in _DAILY_RATES]] = 0
                rows[f"active_days_{window}d"] = 0
        rows["days_since_last_activity"] = rng.integers(ACTIVE_WINDOW_DAYS + 1, 90, len(rows))
    return rows


def candidate_schema() -> ServiceSchema:
    """The schema churn_model_v2 gives the synthetic columns: the model features plus the population field."""
    features = (*feature_names(), ACCOUNT_STATUS)
    return ServiceSchema(
        features=features,
        view_of={},
        string_features=frozenset({*STRING_FEATURES, ACCOUNT_STATUS}),
        population_features=frozenset({ACCOUNT_STATUS}),
    )
