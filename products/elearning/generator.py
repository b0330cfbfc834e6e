"""Synthetic users and events for the e-learning portal, with a hidden churn process behind them.

The story each user follows:

* Users sign up over time: about half before ``start`` (up to a year earlier), the rest during the period.
* A hidden ``churn_propensity`` in [0, 1] (higher on the free plan) sets a constant daily churn hazard
  (``HAZARD_PER_PROPENSITY * propensity``), which draws the instant ``churn_at`` the user disengages. Users
  who signed up before ``start`` draw it from ``start`` on (the hazard is memoryless). It is null when it
  falls after the period. Propensity also lowers baseline engagement a little, so it is not only visible
  through the decline.
* Over the 3-8 weeks before ``churn_at`` engagement declines linearly, not as a cliff: fewer active days and
  sessions, shorter watches, lower quiz scores, more failed payments and more support tickets. After
  ``churn_at`` almost nothing happens (``AFTER_CHURN_LEVEL``). Some churners close their account
  (``closed_at``, up to a month after churning); nothing at all happens from that day on.
* Non-churners keep a stable but noisy engagement (a Bernoulli active day, a Poisson number of events,
  quieter weekends). Paid users are charged every 30 days after signup until they churn.

Raw data is what a daily pipeline would have received by the end of the period ``[start, start + n_days)``:

* Raw events land in daily drops by the UTC day they arrived (``ingested_at``), not the day they happened:
  ``raw/events/date=<ingestion day>/part-<chunk>.parquet``. Events arriving at or after the period end have
  not arrived yet, so they are simply absent (the last days therefore hold fewer late events).
* ``raw/users.parquet`` is the accounts export as of the period end: closures after it are null.
  ``users_as_of`` derives the export as it looked at an earlier instant (for day-by-day simulations).

Options:

* ``late_share``: that share of events reaches us 1-5 days after it happened (``ingested_at``); the others
  within five minutes.
* ``drift_date``: from that date, (1) every ``video_watch`` value (minutes per video) is 30 % lower
  (``DRIFT_WATCH_FACTOR``), and (2) a new acquisition channel ``tiktok_ads`` takes ~30 % of signups
  (``DRIFT_CHANNEL_SHARE``). Everything else is drawn exactly as without drift (same random stream).
* ``dirty``: injects each bad-row class the validation gate knows, in fixed counts (``DIRTY_EVENT_COUNTS``,
  ``DIRTY_USER_COUNTS``) recorded in ``raw/dirty_manifest.json``. Raw ``user_id`` / ``event_timestamp``
  (events) and ``user_id`` / ``signup_at`` (users) are then written as strings so they can hold garbage.
  The gate gives each row one reason (the first in precedence order), so every injected row carries exactly
  one defect and nothing earlier: rows moved in time are re-ingested shortly after their new instant (never
  too late), and validated with ``now`` = the period end no clean row is flagged. Future-ingestion rows are
  written to the drop of their event day, as no drop of ten years on exists.

Users are simulated in chunks of ``CHUNK_USERS`` on a user x day grid with numpy, so memory stays bounded.
Every chunk has its own random stream derived from the seed: the same seed gives byte-identical files.
"""

import json
import logging
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churn_common.errors import ConfigurationError
from churn_common.settings import DataPaths
from products import GenerationSummary, GeneratorConfig
from transformations.validation import EventReason, UserReason

logger = logging.getLogger(__name__)

CHUNK_USERS = 10_000
DAY_US = 86_400 * 1_000_000
TS_US_UTC = pa.timestamp("us", tz="UTC")
TEN_YEARS_US = 3652 * DAY_US
TOO_LATE_US = 20 * DAY_US  # well past Settings.late_data_days (7), well before the period end
REINGEST_DELAY_US = 60 * 1_000_000  # "shortly after": how soon an injected row that moved in time arrives

COUNTRIES = ("DE", "FR", "GB", "US", "IN", "BR")
COUNTRY_P = (0.2, 0.15, 0.15, 0.25, 0.15, 0.1)
CHANNELS = ("organic", "paid_search", "social", "referral")
CHANNEL_P = (0.4, 0.25, 0.2, 0.15)
DRIFT_CHANNEL = "tiktok_ads"
DRIFT_CHANNEL_SHARE = 0.3
DRIFT_WATCH_FACTOR = 0.7
PAID_SHARE = 0.3
MONTHLY_PRICE = 19.99
BILLING_DAYS = 30

HAZARD_PER_PROPENSITY = 0.012
DECLINE_DAYS = (21, 56)
DECLINE_DEPTH = 0.8
AFTER_CHURN_LEVEL = 0.01
CLOSE_SHARE = 0.4
WEEKEND_FACTOR = 0.8

ACTIVITY_TYPES = ("login", "video_watch", "quiz_attempt", "course_enroll", "course_complete")
ACTIVITY_P = (0.4, 0.35, 0.17, 0.05, 0.03)
TYPE_NAMES = (*ACTIVITY_TYPES, "payment_success", "payment_failed", "support_ticket")
TYPE_CODE = {name: code for code, name in enumerate(TYPE_NAMES)}

DIRTY_EVENT_COUNTS = {
    EventReason.INVALID_USER_ID: 6,
    EventReason.UNPARSEABLE_TIMESTAMP: 5,
    EventReason.UNKNOWN_EVENT_TYPE: 4,
    EventReason.INVALID_VALUE: 8,
    EventReason.FUTURE_TIMESTAMP: 3,
    EventReason.FUTURE_INGESTION: 3,
    EventReason.TOO_LATE: 4,
    EventReason.UNKNOWN_USER: 4,
    EventReason.BEFORE_SIGNUP: 3,
    EventReason.AFTER_CLOSURE: 3,
    EventReason.DUPLICATE_EVENT: 5,
}
DIRTY_USER_COUNTS = {
    UserReason.INVALID_USER_ID: 3,
    UserReason.UNPARSEABLE_SIGNUP: 2,
    UserReason.FUTURE_SIGNUP: 2,
    UserReason.CLOSED_BEFORE_SIGNUP: 2,
    UserReason.DUPLICATE_USER_ID: 2,
}


def _manifest_path(paths: DataPaths) -> Path:
    return paths.raw / "dirty_manifest.json"


def generate(paths: DataPaths, config: GeneratorConfig) -> GenerationSummary:
    """Write raw users, raw events and the hidden ground truth under ``paths.raw`` (replacing them)."""
    if paths.raw.exists():
        shutil.rmtree(paths.raw)
    paths.raw_events.mkdir(parents=True)
    users = _simulate_users(config)
    n_events, dates = 0, set()
    for chunk_no, first in enumerate(range(0, config.n_users, CHUNK_USERS)):
        chunk = {key: column[first : first + CHUNK_USERS] for key, column in users.items()}
        events = _simulate_events(chunk, config, np.random.default_rng([config.seed, 1, chunk_no]))
        if config.dirty and chunk_no == 0:
            events = _inject_dirty_events(events, chunk, config)
        n_events += len(events["user_id"])
        dates |= _write_event_partitions(paths.raw_events, events, chunk_no, config)
    _write_users(paths, users, config)
    _write_ground_truth(paths, users)
    if config.dirty:
        _write_manifest(paths)
    logger.info("generated %d users, %d events in %d daily drops", config.n_users, n_events, len(dates))
    return GenerationSummary(config.n_users, n_events, int(np.sum(users["churn_us"] >= 0)), len(dates))


# --- users -----------------------------------------------------------------------------------------------


def _simulate_users(config: GeneratorConfig) -> dict[str, np.ndarray]:
    """One array per user attribute, hidden ones included; times in microseconds since the epoch."""
    rng = np.random.default_rng([config.seed, 0])
    n = config.n_users
    before_start = rng.random(n) < 0.5
    signup_day = np.where(before_start, -rng.random(n) * 365, rng.random(n) * config.n_days)
    signup_us = config.start_us + (signup_day * DAY_US).astype(np.int64)
    paid = rng.random(n) < PAID_SHARE
    propensity = np.minimum(rng.beta(2.0, 5.0, n) * np.where(paid, 1.0, 1.3), 1.0)
    lifetime_days = rng.exponential(1.0 / (HAZARD_PER_PROPENSITY * np.maximum(propensity, 1e-6)))
    churn_day = np.maximum(signup_day, 0.0) + lifetime_days
    closes = rng.random(n) < CLOSE_SHARE
    close_day = churn_day + rng.random(n) * 30
    channel = _channels(rng, signup_day, config)
    return {
        "user_id": np.arange(1, n + 1, dtype=np.int64),
        "signup_us": signup_us,
        "signup_day": signup_day,
        "country": rng.choice(np.array(COUNTRIES), n, p=COUNTRY_P),
        "paid": paid,
        "channel": channel,
        "propensity": propensity,
        "base_active": rng.beta(3.0, 5.0, n) * (1.0 - 0.4 * propensity),
        "decline_days": rng.integers(DECLINE_DAYS[0], DECLINE_DAYS[1] + 1, n).astype(np.float64),
        "churn_day": churn_day,
        "churn_us": _day_to_us(churn_day, config, churn_day < config.n_days),
        "close_day": np.where(closes, close_day, np.inf),
        "closed_us": _day_to_us(close_day, config, closes & (close_day < config.n_days)),
    }


def _channels(rng: np.random.Generator, signup_day: np.ndarray, config: GeneratorConfig) -> np.ndarray:
    # Both draws happen with or without drift, so drift changes nothing else in the random stream.
    channel = rng.choice(np.array(CHANNELS, dtype=object), len(signup_day), p=CHANNEL_P)
    switch = rng.random(len(signup_day)) < DRIFT_CHANNEL_SHARE
    if config.drift_day is not None:
        channel[switch & (signup_day >= config.drift_day)] = DRIFT_CHANNEL
    return channel


def _day_to_us(day: np.ndarray, config: GeneratorConfig, keep: np.ndarray) -> np.ndarray:
    """Fractional day index -> epoch microseconds, -1 where ``keep`` is false (null)."""
    safe = np.where(keep, day, 0.0)
    return np.where(keep, config.start_us + (safe * DAY_US).astype(np.int64), -1)


def _ts_array(us: np.ndarray) -> pa.Array:
    return pa.array(us, type=pa.int64(), mask=us < 0).cast(TS_US_UTC)


def _write_users(paths: DataPaths, users: dict[str, np.ndarray], config: GeneratorConfig) -> None:
    table = pa.table(
        {
            "user_id": pa.array(users["user_id"]),
            "signup_at": _ts_array(users["signup_us"]),
            "country": pa.array(users["country"].astype(str)),
            "plan": pa.array(np.where(users["paid"], "paid", "free")),
            "acquisition_channel": pa.array(users["channel"].astype(str)),
            "closed_at": _ts_array(users["closed_us"]),
        }
    )
    if config.dirty:
        table = _inject_dirty_users(table, config.n_users)
    pq.write_table(table, paths.raw_users)


def _write_ground_truth(paths: DataPaths, users: dict[str, np.ndarray]) -> None:
    table = pa.table(
        {
            "user_id": pa.array(users["user_id"]),
            "churn_propensity": pa.array(users["propensity"]),
            "churn_at": _ts_array(users["churn_us"]),
        }
    )
    pq.write_table(table, paths.ground_truth)


# --- events ----------------------------------------------------------------------------------------------


def _engagement(chunk: dict[str, np.ndarray], n_days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user x day: engagement level (1 = usual), decline progress in [0, 1], and whether alive."""
    day = np.arange(n_days, dtype=np.float64)[None, :]
    churn = chunk["churn_day"][:, None]
    decline = np.clip((day + 0.5 - (churn - chunk["decline_days"][:, None])) / chunk["decline_days"][:, None], 0, 1)
    decline = np.where(day + 1 <= churn, decline, 1.0)
    level = np.where(day + 1 <= churn, 1.0 - DECLINE_DEPTH * decline, AFTER_CHURN_LEVEL)
    alive = (day + 1 > chunk["signup_day"][:, None]) & (day < np.floor(chunk["close_day"])[:, None])
    return level, decline, alive


def _simulate_events(
    chunk: dict[str, np.ndarray], config: GeneratorConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """All events of one user chunk as parallel arrays (user index, day, type code, value, times)."""
    level, decline, alive = _engagement(chunk, config.n_days)
    weekday = (np.arange(config.n_days) + config.start.weekday()) % 7
    weekday_factor = np.where(weekday >= 5, WEEKEND_FACTOR, 1.0)[None, :]
    p_active = chunk["base_active"][:, None] * level * weekday_factor * alive
    active = np.flatnonzero(rng.random(p_active.shape) < p_active)
    n_per_day = 1 + rng.poisson(0.9 * level.ravel()[active])
    cells = [np.repeat(active, n_per_day)]
    codes = [rng.choice(len(ACTIVITY_TYPES), len(cells[0]), p=ACTIVITY_P)]
    tickets = np.flatnonzero(rng.random(alive.shape) < (0.003 + 0.03 * decline) * alive)
    cells.append(tickets)
    codes.append(np.full(len(tickets), TYPE_CODE["support_ticket"]))
    bill_cells, bill_codes = _payments(chunk, decline, alive, rng)
    cells.append(bill_cells)
    codes.append(bill_codes)
    cell, code = np.concatenate(cells), np.concatenate(codes)
    user_idx, day = np.divmod(cell, config.n_days)
    value = _values(code, day, level.ravel()[cell], decline.ravel()[cell], config, rng)
    ts_us = _event_times(user_idx, day, chunk, config, rng)
    return _arrived_events(chunk["user_id"][user_idx], code, value, ts_us, config, rng)


def _payments(
    chunk: dict[str, np.ndarray], decline: np.ndarray, alive: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Monthly charges of paid users until they churn; failures grow with the decline."""
    day = np.arange(decline.shape[1])[None, :]
    first_day = np.ceil(chunk["signup_day"])[:, None]
    due = ((day - first_day) % BILLING_DAYS == 0) & (day > first_day) & (day + 1 <= chunk["churn_day"][:, None])
    cells = np.flatnonzero(due & alive & chunk["paid"][:, None])
    failed = rng.random(len(cells)) < 0.03 + 0.5 * decline.ravel()[cells]
    codes = np.where(failed, TYPE_CODE["payment_failed"], TYPE_CODE["payment_success"])
    return cells, codes


def _values(
    code: np.ndarray,
    day: np.ndarray,
    level: np.ndarray,
    decline: np.ndarray,
    config: GeneratorConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Value per event: watch minutes, quiz score, amount paid; NaN for types without a value."""
    watch = rng.gamma(2.0, 10.0 * (0.4 + 0.6 * level))
    if config.drift_day is not None:
        watch = np.where(day >= config.drift_day, watch * DRIFT_WATCH_FACTOR, watch)
    score = rng.normal(70.0 - 15.0 * decline, 15.0)
    value = np.full(len(code), np.nan)
    value = np.where(code == TYPE_CODE["video_watch"], np.round(np.clip(watch, 0.1, 600.0), 1), value)
    value = np.where(code == TYPE_CODE["quiz_attempt"], np.round(np.clip(score, 0.0, 100.0), 1), value)
    return np.where(code == TYPE_CODE["payment_success"], MONTHLY_PRICE, value)


def _event_times(
    user_idx: np.ndarray,
    day: np.ndarray,
    chunk: dict[str, np.ndarray],
    config: GeneratorConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Uniform instants within the event's day, never before signup on the signup day itself."""
    day_start = config.start_us + day.astype(np.int64) * DAY_US
    signup = chunk["signup_us"][user_idx]
    low = np.where(signup > day_start, signup - day_start, 0)
    return day_start + low + (rng.random(len(day)) * (DAY_US - low)).astype(np.int64)


def _day_index(us: np.ndarray, config: GeneratorConfig) -> np.ndarray:
    return (us - config.start_us) // DAY_US


def _arrived_events(
    user_id: np.ndarray,
    code: np.ndarray,
    value: np.ndarray,
    ts_us: np.ndarray,
    config: GeneratorConfig,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Draw arrival times; keep the events that arrived within the period, ordered by drop, user and time."""
    late = rng.random(len(ts_us)) < config.late_share
    delay_s = np.where(late, 86_400 * (1 + 4 * rng.random(len(ts_us))) + 1, 1 + 299 * rng.random(len(ts_us)))
    ingested_us = ts_us + (delay_s * 1_000_000).astype(np.int64)
    events = {
        "user_id": user_id,
        "code": code,
        "value": value,
        "ts_us": ts_us,
        "ingested_us": ingested_us,
        "drop_day": _day_index(ingested_us, config),
    }
    order = np.lexsort((ts_us, user_id, events["drop_day"]))
    order = order[ingested_us[order] < config.end_us]
    return {key: column[order] for key, column in events.items()}


def _write_event_partitions(
    root: Path, events: dict[str, np.ndarray], chunk_no: int, config: GeneratorConfig
) -> set[date]:
    # Stable: clean rows are already in drop order; only rows dirty mode re-ingested move.
    order = np.argsort(events["drop_day"], kind="stable")
    table = _events_table(events, config.dirty).take(order)
    days = events["drop_day"][order]
    bounds = np.flatnonzero(np.diff(days)) + 1
    written = set()
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(days)], strict=True):
        if lo == hi:
            continue
        when = config.start + timedelta(days=int(days[lo]))
        directory = root / f"date={when.isoformat()}"
        directory.mkdir(exist_ok=True)
        pq.write_table(table.slice(lo, hi - lo), directory / f"part-{chunk_no:05d}.parquet")
        written.add(when)
    return written


def _events_table(events: dict[str, np.ndarray], as_strings: bool) -> pa.Table:
    names = np.array(TYPE_NAMES, dtype=object)[np.maximum(events["code"], 0)]
    if "type_override" in events:
        names = np.where(events["code"] >= 0, names, events["type_override"])
    user_id: pa.Array = pa.array(events["user_id"])
    ts: pa.Array = _ts_array(events["ts_us"])
    if as_strings:
        events = _with_string_columns(events)
        user_id = pa.array(events["user_id_str"], type=pa.string())
        ts = pa.array(events["ts_str"], type=pa.string())
    return pa.table(
        {
            "user_id": user_id,
            "event_timestamp": ts,
            "event_type": pa.array(names, type=pa.string()),
            "value": pa.array(events["value"], mask=np.isnan(events["value"])),
            "ingested_at": _ts_array(events["ingested_us"]),
        }
    )


# --- dirty mode ------------------------------------------------------------------------------------------


def _iso(us: np.ndarray) -> np.ndarray:
    text = pd.to_datetime(us, unit="us", utc=True).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return np.asarray(text, dtype=object)


def _with_string_columns(events: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add string versions of user_id and event_timestamp, which dirty mode writes (and corrupts)."""
    if "user_id_str" in events:
        return events
    return {**events, "user_id_str": events["user_id"].astype(str).astype(object), "ts_str": _iso(events["ts_us"])}


class _RowPool:
    """Shuffled clean rows, each handed out once, so every injected defect lands on a row of its own."""

    def __init__(self, codes: np.ndarray, rng: np.random.Generator) -> None:
        self._codes = codes.copy()
        self._order = rng.permutation(len(codes))
        self._free = np.ones(len(codes), dtype=bool)

    def take(self, count: int, type_name: str | None = None, where: np.ndarray | None = None) -> np.ndarray:
        """``count`` free rows, of ``type_name`` only and only where the mask ``where`` holds, when given."""
        candidates = self._order[self._free[self._order]]
        if type_name is not None:
            candidates = candidates[self._codes[candidates] == TYPE_CODE[type_name]]
        if where is not None:
            candidates = candidates[where[candidates]]
        rows = candidates[:count]
        if len(rows) < count:
            raise ConfigurationError(f"too few {type_name or ''} events to inject dirty rows; generate more data")
        self._free[rows] = False
        return rows


def _inject_dirty_events(
    events: dict[str, np.ndarray], chunk: dict[str, np.ndarray], config: GeneratorConfig
) -> dict[str, np.ndarray]:
    """Corrupt distinct clean rows (one defect each), then append exact copies of others."""
    events = {key: column.copy() for key, column in _with_string_columns(events).items()}
    events["type_override"] = np.full(len(events["code"]), None, dtype=object)
    pool = _RowPool(events["code"], np.random.default_rng([config.seed, 2]))
    rows = pool.take(DIRTY_EVENT_COUNTS[EventReason.INVALID_USER_ID])
    events["user_id_str"][rows] = np.resize(np.array([None, "", "abc", "12x", "-4", "7.5"], dtype=object), len(rows))
    rows = pool.take(DIRTY_EVENT_COUNTS[EventReason.UNPARSEABLE_TIMESTAMP])
    garbage = np.array(["not a timestamp", "2026-02-30T10:00:00Z", "", None, "yesterday"], dtype=object)
    events["ts_str"][rows] = np.resize(garbage, len(rows))
    rows = pool.take(DIRTY_EVENT_COUNTS[EventReason.UNKNOWN_EVENT_TYPE])
    events["code"][rows], events["type_override"][rows] = -1, "video_pause"
    _corrupt_values(events, pool)
    _corrupt_times(events, pool, chunk, config)
    _corrupt_arrivals(events, pool, config)
    rows = pool.take(DIRTY_EVENT_COUNTS[EventReason.UNKNOWN_USER])
    events["user_id_str"][rows] = [str(10**12 + i) for i in range(len(rows))]
    # Copies share their original's drop and follow it there (the writer sorts stably): the original comes first.
    copies = pool.take(DIRTY_EVENT_COUNTS[EventReason.DUPLICATE_EVENT])
    return {key: np.r_[column, column[copies]] for key, column in events.items()}


def _corrupt_values(events: dict[str, np.ndarray], pool: _RowPool) -> None:
    """Equal shares of each value defect: negative, above the range, present without meaning, missing."""
    per_kind = DIRTY_EVENT_COUNTS[EventReason.INVALID_VALUE] // 4
    for type_name, bad_value in (("video_watch", -5.0), ("quiz_attempt", 250.0), ("login", 3.0)):
        events["value"][pool.take(per_kind, type_name)] = bad_value
    events["value"][pool.take(per_kind, "video_watch")] = np.nan


def _move(events: dict[str, np.ndarray], rows: np.ndarray, ts_us: np.ndarray) -> None:
    events["ts_us"][rows] = ts_us
    events["ts_str"][rows] = _iso(ts_us)


def _reingest(
    events: dict[str, np.ndarray],
    rows: np.ndarray,
    ingested_us: np.ndarray,
    config: GeneratorConfig,
    drop_us: np.ndarray | None = None,
) -> None:
    """New arrival instants for ``rows``, written to the drop of that day (or of ``drop_us``, when given)."""
    events["ingested_us"][rows] = ingested_us
    events["drop_day"][rows] = _day_index(ingested_us if drop_us is None else drop_us, config)


def _corrupt_times(
    events: dict[str, np.ndarray], pool: _RowPool, chunk: dict[str, np.ndarray], config: GeneratorConfig
) -> None:
    """Events moved to ten years on, to before their user's signup, and to after their user's closure."""
    # Ten years on, still ingested when they were: in the future for any run of the gate near the period, and
    # arrived before they happened (negative lateness), so never too late.
    rows = pool.take(DIRTY_EVENT_COUNTS[EventReason.FUTURE_TIMESTAMP])
    _move(events, rows, events["ts_us"][rows] + TEN_YEARS_US)
    user = np.searchsorted(chunk["user_id"], events["user_id"])
    signup_us, closed_us = chunk["signup_us"][user], chunk["closed_us"][user]
    # Arriving just after the signup keeps them within the lateness limit (one day late) and puts them in a drop
    # whose accounts export already knows the user, so a day-by-day gate also says before_signup.
    in_period = (signup_us - DAY_US >= config.start_us) & (signup_us + REINGEST_DELAY_US < config.end_us)
    rows = pool.take(DIRTY_EVENT_COUNTS[EventReason.BEFORE_SIGNUP], where=in_period)
    _move(events, rows, signup_us[rows] - DAY_US)
    _reingest(events, rows, signup_us[rows] + REINGEST_DELAY_US, config)
    # Halfway between the closure and the period end, arriving a minute later (still before the end).
    closed_in_period = (closed_us >= 0) & (closed_us + 2 * REINGEST_DELAY_US < config.end_us)
    rows = pool.take(DIRTY_EVENT_COUNTS[EventReason.AFTER_CLOSURE], where=closed_in_period)
    _move(events, rows, closed_us[rows] + (config.end_us - closed_us[rows]) // 2)
    _reingest(events, rows, events["ts_us"][rows] + REINGEST_DELAY_US, config)


def _corrupt_arrivals(events: dict[str, np.ndarray], pool: _RowPool, config: GeneratorConfig) -> None:
    """Events ingested ten years after they happened, and 20 days after (too late, but arrived in the period)."""
    ts_us = events["ts_us"]
    rows = pool.take(DIRTY_EVENT_COUNTS[EventReason.FUTURE_INGESTION])
    # No drop of ten years on exists: the event's own day gets them, so they reach the gate at all.
    _reingest(events, rows, ts_us[rows] + TEN_YEARS_US, config, drop_us=ts_us[rows])
    rows = pool.take(DIRTY_EVENT_COUNTS[EventReason.TOO_LATE], where=ts_us + TOO_LATE_US < config.end_us)
    _reingest(events, rows, ts_us[rows] + TOO_LATE_US, config)


def _inject_dirty_users(table: pa.Table, n_users: int) -> pa.Table:
    """String-typed ids and signups, plus bad rows whose ids no event refers to."""
    frame = table.to_pandas()
    signup_us = frame["signup_at"].array.asi8
    frame["user_id"] = frame["user_id"].astype(str)
    frame["signup_at"] = _iso(signup_us)
    garbage_ids = np.array([None, "user-9", "1e3", "", " "], dtype=object)
    bad_ids = _repeat_rows(frame, DIRTY_USER_COUNTS[UserReason.INVALID_USER_ID])
    bad_ids["user_id"] = np.resize(garbage_ids, len(bad_ids))
    bad_signups = _repeat_rows(frame, DIRTY_USER_COUNTS[UserReason.UNPARSEABLE_SIGNUP])
    bad_signups["signup_at"] = np.resize(np.array(["soon", "2026-99-01", None], dtype=object), len(bad_signups))
    bad_times = _bad_signup_times(frame, signup_us)
    # Fresh ids for every new row no event refers to, so none of them turns events into unknown_user ones.
    fresh, next_id = [bad_signups, *bad_times], n_users + 1
    for rows in fresh:
        rows["user_id"] = [str(next_id + i) for i in range(len(rows))]
        next_id += len(rows)
    duplicates = _repeat_rows(frame, DIRTY_USER_COUNTS[UserReason.DUPLICATE_USER_ID])
    frame = pd.concat([frame, bad_ids, *fresh, duplicates], ignore_index=True)
    return pa.Table.from_pandas(frame, preserve_index=False)


def _bad_signup_times(frame: pd.DataFrame, signup_us: np.ndarray) -> list[pd.DataFrame]:
    """Copies of users signing up ten years on (never closed), and of users closed a day before signing up."""
    future = _repeat_rows(frame, DIRTY_USER_COUNTS[UserReason.FUTURE_SIGNUP])
    future["signup_at"] = _iso(signup_us[np.arange(len(future)) % len(frame)] + TEN_YEARS_US)
    # Without a closure, so closed_before_signup (later in precedence) cannot apply to them as well.
    future["closed_at"] = pd.NaT
    closed_early = _repeat_rows(frame, DIRTY_USER_COUNTS[UserReason.CLOSED_BEFORE_SIGNUP])
    closed_us = signup_us[np.arange(len(closed_early)) % len(frame)] - DAY_US
    closed_early["closed_at"] = pd.to_datetime(closed_us, unit="us", utc=True).astype(frame["closed_at"].dtype)
    return [future, closed_early]


def _repeat_rows(frame: pd.DataFrame, count: int) -> pd.DataFrame:
    return frame.iloc[np.arange(count) % len(frame)].copy()


def _write_manifest(paths: DataPaths) -> None:
    manifest = {
        "events": {str(reason): count for reason, count in DIRTY_EVENT_COUNTS.items()},
        "users": {str(reason): count for reason, count in DIRTY_USER_COUNTS.items()},
    }
    _manifest_path(paths).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(paths: DataPaths) -> dict[str, dict[str, int]]:
    """The bad-row counts a dirty run injected, per table and reason code."""
    return json.loads(_manifest_path(paths).read_text())
