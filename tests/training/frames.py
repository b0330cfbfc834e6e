"""A synthetic point-in-time training frame with the real feature columns and a learnable label, built with
numpy alone (vectorised, so the training benchmark can ask for a million rows).

Each user has a hidden engagement level that drifts week to week; every activity feature is a noisy function
of it, and the churn label is drawn from a logistic function of it. The hidden level never appears as a column.
"""

import numpy as np
import pandas as pd

from transformations.catalog import DEFAULT_CATALOG

STATUS_NUMERIC = ["days_since_last_activity", "tenure_days", "active_days_trend_7d", "watch_minutes_trend_7d"]
STRING_FEATURES = ["plan", "country", "acquisition_channel"]
PLANS = np.array(["free", "monthly", "annual"])
COUNTRIES = np.array(["DE", "FR", "US", "IN", "BR"])
CHANNELS = np.array(["organic", "ads", "referral"])


def feature_names() -> list[str]:
    return [*DEFAULT_CATALOG.window_features(), *STATUS_NUMERIC, *STRING_FEATURES]


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
    for window in DEFAULT_CATALOG.windows:
        counts = {stem: rng.poisson(rate * window * activity) for stem, rate in _DAILY_RATES.items()}
        for stem, values in counts.items():
            out[f"{stem}_{window}d"] = values.astype("int64")
        out[f"active_days_{window}d"] = np.minimum(window, rng.poisson(0.5 * window * activity)).astype("int64")
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
