"""The synthetic subscription social app (its catalogue is ``products.social.CATALOG``).

Eight event types, user ids from 0, no ``plan`` column, and behaviour that stays steady until the subscription ends:
a user does not fade out, they cancel. The end is recorded as the account's ``closed_at`` (at a renewal date), so
the platform is trained with the ``closure`` label here; an inactivity label would mark almost nobody before the
account closes.

The story each user follows: a hidden ``churn_propensity`` in [0, 1] sets the chance to cancel at each monthly
renewal; half the users are at risk (around 0.6), the others rarely leave (around 0.06). The propensity also shows,
steadily and only partly, in what a model can see: fewer active days, a smaller share of the social kinds of
activity (posts, comments, messages) among them, more failed renewal payments, and more signups through
influencers. Everything else is noise: Bernoulli active days, a Poisson number of events on an active day,
quieter weekends. Events arrive within minutes, ``late_share`` of them 1-5 days late. Raw data lands as the
e-learning generator's does: daily drops by arrival day under ``raw/events/date=*``, the accounts export
``raw/users.parquet`` as of the period end, the hidden truth in ``raw/ground_truth.parquet``.
"""

import shutil
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churn_common.errors import ConfigurationError
from churn_common.settings import DataPaths
from products import GenerationSummary, GeneratorConfig

DAY_US = 86_400 * 1_000_000
TS = pa.timestamp("us", tz="UTC")
PERIOD_DAYS = 30
PRICE = 9.99
CANCEL_PER_PROPENSITY = 0.35
AT_RISK_SHARE = 0.5
HISTORY_DAYS = 180
ACTIVITY = ("app_open", "post", "comment", "like", "message", "story_view")
ACTIVITY_P = np.array([0.45, 0.05, 0.1, 0.2, 0.1, 0.1])
SOCIAL_KINDS = np.isin(ACTIVITY, ("post", "comment", "message"))
COUNTRIES = ("US", "GB", "MX", "NG", "PH")
CHANNELS, INFLUENCER = ("store", "friend_invite"), "influencer"


def _users(config: GeneratorConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Signups up to HISTORY_DAYS before the period and during it; a cancellation at some renewal, or none."""
    n = config.n_users
    signup_day = np.where(rng.random(n) < 0.6, -rng.random(n) * HISTORY_DAYS, rng.random(n) * config.n_days)
    # A minority is at risk: the rest rarely leave.
    propensity = np.where(rng.random(n) < AT_RISK_SHARE, rng.beta(6.0, 4.0, n), rng.beta(1.0, 15.0, n))
    # Renewals every PERIOD_DAYS after signup; each one is cancelled with a chance that grows with propensity.
    renewals = np.arange(1, (HISTORY_DAYS + config.n_days) // PERIOD_DAYS + 2)
    renewal_day = signup_day[:, None] + renewals[None, :] * PERIOD_DAYS
    cancels = rng.random(renewal_day.shape) < CANCEL_PER_PROPENSITY * propensity[:, None]
    first = np.where(cancels.any(axis=1), cancels.argmax(axis=1), -1)
    close_day = np.where(first >= 0, renewal_day[np.arange(n), np.maximum(first, 0)], np.inf)
    return {
        "user_id": np.arange(n, dtype=np.int64),  # ids from 0
        "signup_day": signup_day,
        "propensity": propensity,
        "base_active": rng.beta(10.0, 4.0, n) * (1.0 - 0.7 * propensity),
        "kind_cdf": _kind_cdf(propensity),
        "fail_p": 0.02 + 0.5 * propensity,
        # Cancelled after the period: not known at its end.
        "close_day": np.where(close_day < config.n_days, close_day, np.inf),
        "country": rng.choice(np.array(COUNTRIES), n),
        # Influencer campaigns bring in more of the users who leave soon.
        "channel": np.where(rng.random(n) < 0.1 + 0.6 * propensity, INFLUENCER, rng.choice(np.array(CHANNELS), n)),
    }


def _kind_cdf(propensity: np.ndarray) -> np.ndarray:
    """Per user, the cumulative distribution of an activity event's kind: the social kinds fade with propensity."""
    weights = ACTIVITY_P[None, :] * np.where(SOCIAL_KINDS[None, :], 1.0 - 0.8 * propensity[:, None], 1.0)
    return np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)


def _kinds(cdf: np.ndarray, user_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One kind per event, drawn from its user's row of ``cdf``; a column at a time, never an events x kinds array."""
    draw = rng.random(len(user_index))
    return sum((draw > cdf[user_index, k]).astype(np.intp) for k in range(cdf.shape[1] - 1))


def _events(users: dict[str, np.ndarray], config: GeneratorConfig, rng: np.random.Generator) -> pd.DataFrame:
    days = np.arange(config.n_days, dtype=np.float64)[None, :]
    alive = (days + 1 > users["signup_day"][:, None]) & (days + 1 <= users["close_day"][:, None])
    weekend = ((np.arange(config.n_days) + config.start.weekday()) % 7 >= 5)[None, :]
    p_active = users["base_active"][:, None] * np.where(weekend, 0.85, 1.0) * alive
    cell = np.flatnonzero(rng.random(p_active.shape) < p_active)
    cell = np.repeat(cell, 1 + rng.poisson(1.5, cell.size))
    kind = _kinds(users["kind_cdf"], cell // config.n_days, rng)
    value = np.where(np.array(ACTIVITY)[kind] == "story_view", np.round(rng.gamma(2.0, 40.0, cell.size), 1), np.nan)
    names = np.array(ACTIVITY, dtype=object)[kind]
    bills = _renewals(users, config, alive, rng)
    user_index, day = np.divmod(np.r_[cell, bills[0]], config.n_days)
    start_us = config.start_us + day * DAY_US
    stamp = start_us + (rng.random(user_index.size) * DAY_US).astype(np.int64)
    signup_us = config.start_us + (users["signup_day"][user_index] * DAY_US).astype(np.int64)
    close_us = (
        config.start_us
        + np.where(np.isinf(users["close_day"]), 0, users["close_day"] * DAY_US).astype(np.int64)[user_index]
    )
    stamp = np.maximum(stamp, signup_us + 1)
    stamp = np.where(np.isinf(users["close_day"][user_index]), stamp, np.minimum(stamp, close_us - 1))
    return pd.DataFrame(
        {
            "user_id": users["user_id"][user_index],
            "event_timestamp": stamp,
            "event_type": np.r_[names, bills[1]],
            "value": np.r_[value, bills[2]],
        }
    )


def _renewals(
    users: dict[str, np.ndarray], config: GeneratorConfig, alive: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renewal charges on every PERIOD_DAYS after signup while subscribed; failures grow with propensity."""
    days = np.arange(config.n_days)[None, :]
    first = np.ceil(users["signup_day"])[:, None]
    due = ((days - first) % PERIOD_DAYS == 0) & (days > first) & alive
    cell = np.flatnonzero(due)
    failed = rng.random(cell.size) < users["fail_p"][cell // config.n_days]
    kinds = np.where(failed, "renewal_failed", "renewal").astype(object)
    return cell, kinds, np.where(failed, np.nan, PRICE)


def _arrivals(events: pd.DataFrame, config: GeneratorConfig, rng: np.random.Generator) -> pd.DataFrame:
    late = rng.random(len(events)) < config.late_share
    delay_us = np.where(
        late, rng.integers(DAY_US, 5 * DAY_US, len(events)), rng.integers(1_000_000, 300_000_000, len(events))
    )
    events = events.assign(ingested_at=events["event_timestamp"] + delay_us)
    end_us = config.start_us + config.n_days * DAY_US
    return events[events["ingested_at"] < end_us].sort_values(["ingested_at", "user_id"], ignore_index=True)


def _write_drops(paths: DataPaths, events: pd.DataFrame, config: GeneratorConfig) -> int:
    drop_day = (events["ingested_at"].to_numpy() - config.start_us) // DAY_US
    table = pa.table(
        {
            "user_id": pa.array(events["user_id"].to_numpy()),
            "event_timestamp": pa.array(events["event_timestamp"].to_numpy(), pa.int64()).cast(TS),
            "event_type": pa.array(events["event_type"].to_numpy(), pa.string()),
            "value": pa.array(events["value"].to_numpy(), mask=np.isnan(events["value"].to_numpy())),
            "ingested_at": pa.array(events["ingested_at"].to_numpy(), pa.int64()).cast(TS),
        }
    )
    for day in np.unique(drop_day):
        directory = paths.raw_events / f"date={(config.start + timedelta(days=int(day))).isoformat()}"
        directory.mkdir(parents=True)
        pq.write_table(table.filter(pa.array(drop_day == day)), directory / "part-0.parquet")
    return int(np.unique(drop_day).size)


def _write_users(paths: DataPaths, users: dict[str, np.ndarray], config: GeneratorConfig) -> None:
    closed = ~np.isinf(users["close_day"])
    close_us = config.start_us + np.where(closed, users["close_day"], 0) * DAY_US
    table = pa.table(
        {
            "user_id": pa.array(users["user_id"]),
            "signup_at": pa.array(config.start_us + (users["signup_day"] * DAY_US).astype(np.int64), pa.int64()).cast(
                TS
            ),
            "country": pa.array(users["country"].astype(str)),
            "acquisition_channel": pa.array(users["channel"].astype(str)),
            "closed_at": pa.array(close_us.astype(np.int64), pa.int64(), mask=~closed).cast(TS),
        }
    )
    pq.write_table(table, paths.raw_users)
    truth = pa.table({"user_id": pa.array(users["user_id"]), "churn_propensity": pa.array(users["propensity"])})
    pq.write_table(truth, paths.ground_truth)


def generate(paths: DataPaths, config: GeneratorConfig) -> GenerationSummary:
    """Write the raw drops, the accounts export and the hidden truth under ``paths.raw`` (replacing them)."""
    if config.drift_date is not None or config.dirty:
        raise ConfigurationError("the social app's generator has no drift or dirty mode")
    if paths.raw.exists():
        shutil.rmtree(paths.raw)
    paths.raw_events.mkdir(parents=True)
    rng = np.random.default_rng([config.seed, 7])
    users = _users(config, rng)
    events = _arrivals(_events(users, config, rng), config, rng)
    _write_users(paths, users, config)
    drops = _write_drops(paths, events, config)
    churners = int((~np.isinf(users["close_day"]) & (users["close_day"] >= 0)).sum())
    return GenerationSummary(config.n_users, len(events), churners, drops)
