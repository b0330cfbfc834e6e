"""Benchmark of the daily increment (``churn pipeline daily`` for one new day) against the full rebuild of the same
history, in the same run, on the redis profile (real Redis, our batch engine).

    .venv/bin/python -m benchmarks.bench_daily run [--users 1000000] [--days 180]

It writes raw daily drops of random events (vectorised numpy, as benchmarks.bench_features: a per-user activity
propensity, Bernoulli active days, 1 + Poisson events on an active day, ~1.5 events per user-day; 5 % of events
arrive 1-5 days late, so each drop also holds late events of earlier days) and the accounts export, for ``days``
days plus one. Then, each phase in its own subprocess so peak RSS is the phase's own:

* full rebuild: validate every drop of the history (one gate run), build every day, apply the repo, materialise
  (a refill: every user's newest row);
* daily increment: the pipeline for the one new day (validate its drop, build it plus the late-data window,
  materialise what the build rewrote).

It prints wall time and peak RSS per phase and the increment as a share of the full rebuild, then deletes the data
and the project's Redis keys.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis
import typer

from benchmarks.bench_features import ACTIVE_SHARE_BETA, EXTRA_EVENTS_PER_ACTIVE_DAY, TYPE_P
from churn_common.settings import Settings
from products.elearning import CATALOG as ELEARNING

START = date(2026, 1, 1)
DAY_US = 86_400 * 1_000_000
TS = pa.timestamp("us", tz="UTC")
LATE_SHARE = 0.05
INCREMENT_STEPS = ("validate", "build", "today", "materialize")
REDIS_DB = int(os.environ.get("CHURN_TEST_REDIS_DB", "11"))

app = typer.Typer(add_completion=False)


def _epoch_us(day: date) -> int:
    return (day - date(1970, 1, 1)).days * DAY_US


def _users(rng: np.random.Generator, n_users: int, n_days: int) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    signup = rng.integers(-180, n_days, n_users)
    closed_day = np.where(rng.random(n_users) < 0.1, rng.integers(0, n_days, n_users), -1)
    closed_day = np.where(closed_day > signup, closed_day, -1)
    start_us = _epoch_us(START)
    table = pa.table(
        {
            "user_id": pa.array(np.arange(1, n_users + 1, dtype="int64")),
            "signup_at": pa.array(start_us + signup * DAY_US + rng.integers(0, DAY_US, n_users), TS),
            "country": pa.array(rng.choice(["DE", "FR", "US", "IN"], n_users)),
            "plan": pa.array(rng.choice(["free", "pro"], n_users)),
            "acquisition_channel": pa.array(rng.choice(["organic", "paid_search", "social"], n_users)),
            "closed_at": pa.array(start_us + closed_day * DAY_US + DAY_US // 2, TS, mask=closed_day < 0),
        }
    )
    return table, signup, closed_day


def _day_events(rng: np.random.Generator, day: int, propensity: np.ndarray, customer: np.ndarray) -> pa.Table:
    active = np.flatnonzero(customer & (rng.random(propensity.size) < propensity))
    counts = 1 + rng.poisson(EXTRA_EVENTS_PER_ACTIVE_DAY, active.size)
    user_ids = np.repeat(active + 1, counts).astype("int64")
    types = rng.choice(len(TYPE_P), user_ids.size, p=TYPE_P)
    value = np.where(np.isin(types, [1, 2, 5]), np.round(rng.uniform(0, 100, user_ids.size), 2), np.nan)
    stamps = _epoch_us(START + timedelta(days=day)) + rng.integers(0, DAY_US, user_ids.size)
    late = rng.random(user_ids.size) < LATE_SHARE
    delay = np.where(
        late, rng.integers(1 * DAY_US, 5 * DAY_US, user_ids.size), rng.integers(1, 300_000_000, user_ids.size)
    )
    return pa.table(
        {
            "user_id": pa.array(user_ids),
            "event_timestamp": pa.array(stamps, TS),
            "event_type": pa.array(np.array(ELEARNING.names)[types]),
            "value": pa.array(value, mask=np.isnan(value)),
            "ingested_at": pa.array(stamps + delay, TS),
        }
    )


def generate(data_dir: Path, n_users: int, n_days: int, seed: int = 7) -> int:
    """Raw drops by arrival day for days [0, n_days] (the last one is the increment's) and the accounts export as
    of the end of the history; return the number of events written."""
    rng = np.random.default_rng(seed)
    paths = Settings(data_dir=data_dir).paths
    users, signup, closed_day = _users(rng, n_users, n_days + 1)
    paths.raw.mkdir(parents=True, exist_ok=True)
    pq.write_table(users, paths.raw_users)
    propensity = rng.beta(*ACTIVE_SHARE_BETA, n_users)
    pending: list[pa.Table] = []
    written = 0
    for day in range(n_days + 1):
        customer = (signup <= day) & ((closed_day < 0) | (day < closed_day))
        pending.append(_day_events(rng, day, propensity, customer))
        arrived = pa.concat_tables(pending)
        drop_day = np.asarray(arrived["ingested_at"].cast(pa.int64())) // DAY_US
        due = drop_day == (_epoch_us(START) // DAY_US + day)
        drop = arrived.filter(pa.array(due))
        pending = [arrived.filter(pa.array(~due))]
        directory = paths.raw_events / f"date={(START + timedelta(days=day)).isoformat()}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            drop.sort_by([("user_id", "ascending"), ("event_timestamp", "ascending")]), directory / "part-0.parquet"
        )
        written += drop.num_rows
    return written


def _settings(data_dir: Path, project: str, day: date) -> Settings:
    # The clock: one hour after the day's end, when the CronJob would run.
    now = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) + timedelta(hours=1)
    return Settings(data_dir=data_dir, feast_project=project, feast_profile="redis", redis_db=REDIS_DB, now=now)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@app.command("full", hidden=True)
def full(data_dir: Path, project: str, days: int) -> None:
    """Validate every drop of the history, build every day, apply, materialise."""
    from churn_common.store import apply_repo
    from jobs.materialize import materialize
    from transformations.features import build_features
    from transformations.validation import validate

    last = START + timedelta(days=days - 1)
    settings = _settings(data_dir, project, last)
    started = time.perf_counter()
    drops = [settings.paths.raw_events / f"date={(START + timedelta(days=d)).isoformat()}" for d in range(days)]
    validate(settings.paths, catalog=ELEARNING, now=settings.clock(), max_quarantine_share=0.05, events_source=drops)
    validated = time.perf_counter()
    build = build_features(settings, end=last)
    built = time.perf_counter()
    apply_repo(settings)
    report = materialize(settings)
    done = time.perf_counter()
    phases = {"validate": validated - started, "build": built - validated, "materialise": done - built}
    print(
        json.dumps(
            {
                "seconds": done - started,
                "phases": phases,
                "rss_mib": _peak_rss_mib(),
                "rows": build.rows,
                "users_written": report.users_written,
            }
        )
    )


@app.command("daily", hidden=True)
def daily(data_dir: Path, project: str, days: int) -> None:
    """The pipeline for the day after the history."""
    from jobs.pipeline import run_daily

    day = START + timedelta(days=days)
    settings = _settings(data_dir, project, day)
    started = time.perf_counter()
    report = run_daily(settings, day)
    total = time.perf_counter() - started
    print(
        json.dumps(
            {
                # The increment: the day's validate + build (snapshots, then the today tables) + materialise. The
                # run also checks for a champion to monitor (there is none here); that is in `total`.
                "seconds": sum(report.seconds[step] for step in INCREMENT_STEPS),
                "total": total,
                "rss_mib": _peak_rss_mib(),
                "rows": report.build["rows"],
                "mode": report.materialization["mode"],
                "users_written": report.materialization["users_written"],
                "phases": report.seconds,
            }
        )
    )


def _measure(command: str, *args: str) -> dict:
    script = [sys.executable, "-m", "benchmarks.bench_daily", command, *args]
    result = subprocess.run(script, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _delete_keys(project: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    keys = list(client.scan_iter(match=f"*{project}", count=10_000))
    for start in range(0, len(keys), 10_000):
        client.delete(*keys[start : start + 10_000])


def _phases(measured: dict) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in measured["phases"].items())


@app.command("run")
def run(
    users: Annotated[int, typer.Option(help="Users.")] = 1_000_000,
    days: Annotated[int, typer.Option(help="Days of history before the new day.")] = 180,
) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-daily-"))
    project = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        began = time.perf_counter()
        events = generate(data_dir, users, days)
        generated = time.perf_counter() - began
        load_before = os.getloadavg()[0]
        rebuilt = _measure("full", str(data_dir), project, str(days))
        increment = _measure("daily", str(data_dir), project, str(days))
        load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
        _delete_keys(project)
    print(
        f"{users:,} users x {days} days, {events:,} events (generated in {generated:.0f} s)\n"
        f"  full rebuild:    {rebuilt['seconds']:.1f} s ({_phases(rebuilt)}), peak RSS {rebuilt['rss_mib']:.0f} MiB, "
        f"{rebuilt['rows']:,} snapshot rows, {rebuilt['users_written']:,} users online\n"
        f"  daily increment: {increment['seconds']:.1f} s ({_phases(increment)}; "
        f"run_daily {increment['total']:.1f} s), "
        f"peak RSS {increment['rss_mib']:.0f} MiB, "
        f"{increment['rows']:,} snapshot rows, materialisation {increment['mode']} "
        f"({increment['users_written']:,} users)\n"
        f"  increment / full rebuild: {increment['seconds'] / rebuilt['seconds']:.1%}; "
        f"load average {load_before:.1f} -> {load_after:.1f}"
    )


if __name__ == "__main__":
    app()
