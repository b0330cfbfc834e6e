"""Benchmark of ``churn features build`` (full build) against a bare DuckDB daily GROUP BY over the same events.

    .venv/bin/python -m benchmarks.bench_features [--users 10000 --users 100000] [--days 365]

For each size it writes a random validated users/events table set (vectorised numpy: a per-user activity
propensity, Bernoulli active days, 1 + Poisson events on an active day, ~1.5 events per user-day), then runs,
each in its own subprocess so peak RSS is the job's own: (1) the reference, ``COPY (SELECT user_id,
date_trunc('day', event_timestamp) d, count(*) FROM events GROUP BY ALL) TO parquet``; (2) the feature build.
It prints wall time, peak RSS, the ratio to the reference, the time per user-day and the 1-minute load average
before and after the build (the machine is shared), then deletes the data.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer

from churn_common.settings import Settings
from products.elearning import CATALOG as ELEARNING
from transformations.snapshot_schema import ACCOUNT_SCHEMA

START = date(2026, 1, 1)
DAY_US = 86_400 * 1_000_000
TS = pa.timestamp("us", tz="UTC")
ACTIVE_SHARE_BETA = (2.0, 3.0)  # mean propensity 0.4 active days
EXTRA_EVENTS_PER_ACTIVE_DAY = 2.75  # 0.4 * (1 + 2.75) = 1.5 events per user-day
TYPE_P = np.array([0.35, 0.3, 0.15, 0.04, 0.03, 0.05, 0.03, 0.05])

app = typer.Typer(add_completion=False)


def _epoch_us(day: date) -> int:
    return (day - date(1970, 1, 1)).days * DAY_US


def _write_users(path: Path, rng: np.random.Generator, n_users: int, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Write the users table; return each user's signup and closing day offsets (closing -1: open)."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return signup, closed_day


def _write_history(paths) -> None:
    """The account history the gate would write for these users (the build gathers it into user_account)."""
    from tests.factories import account_history

    users = pq.read_table(paths.users).to_pandas()
    history = pa.Table.from_pandas(account_history(users), preserve_index=False).cast(ACCOUNT_SCHEMA)
    paths.user_history.mkdir(parents=True, exist_ok=True)
    pq.write_table(history, paths.user_history / "batch=bench.parquet")


def _write_day(root: Path, rng: np.random.Generator, day: int, propensity: np.ndarray, customer: np.ndarray) -> int:
    active = np.flatnonzero(customer & (rng.random(propensity.size) < propensity))
    counts = 1 + rng.poisson(EXTRA_EVENTS_PER_ACTIVE_DAY, active.size)
    user_ids = np.repeat(active + 1, counts).astype("int64")
    types = rng.choice(len(TYPE_P), user_ids.size, p=TYPE_P)
    names = np.array(ELEARNING.names)[types]
    value = np.where(np.isin(types, [1, 2, 5]), np.round(rng.uniform(0, 100, user_ids.size), 2), np.nan)
    stamps = _epoch_us(START + timedelta(days=day)) + rng.integers(0, DAY_US, user_ids.size)
    order = np.lexsort((stamps, user_ids))
    table = pa.table(
        {
            "user_id": pa.array(user_ids[order]),
            "event_timestamp": pa.array(stamps[order], TS),
            "event_type": pa.array(names[order]),
            "value": pa.array(value[order], mask=np.isnan(value[order])),
            "ingested_at": pa.array(stamps[order] + 60_000_000, TS),
        }
    )
    partition = root / f"date={(START + timedelta(days=day)).isoformat()}"
    partition.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, partition / "batch=bench.parquet")
    return user_ids.size


def generate(data_dir: Path, n_users: int, n_days: int, seed: int = 7) -> int:
    """Write validated users and events under ``data_dir``; return the number of events."""
    rng = np.random.default_rng(seed)
    paths = Settings(data_dir=data_dir).paths
    signup, closed_day = _write_users(paths.users, rng, n_users, n_days)
    _write_history(paths)
    propensity = rng.beta(*ACTIVE_SHARE_BETA, n_users)
    events = 0
    for day in range(n_days):
        customer = (signup <= day) & ((closed_day < 0) | (day < closed_day))
        events += _write_day(paths.events, rng, day, propensity, customer)
    return events


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@app.command("reference", hidden=True)
def reference(data_dir: Path) -> None:
    """The bare DuckDB daily GROUP BY over the same events."""
    import duckdb

    paths = Settings(data_dir=data_dir).paths
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"COPY (SELECT user_id, date_trunc('day', event_timestamp) d, count(*) "
        f"FROM read_parquet('{paths.events}/*/*.parquet') GROUP BY ALL) TO '{data_dir / 'reference.parquet'}'"
    )
    print(json.dumps({"seconds": time.perf_counter() - started, "rss_mib": _peak_rss_mib()}))


@app.command("build", hidden=True)
def build(data_dir: Path) -> None:
    """The feature build, full range."""
    from transformations.features import build_features

    started = time.perf_counter()
    summary = build_features(Settings(data_dir=data_dir))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rss_mib": _peak_rss_mib(), "rows": summary.rows}))


def _measure(command: str, data_dir: Path) -> dict[str, float]:
    script = [sys.executable, "-m", "benchmarks.bench_features", command, str(data_dir)]
    result = subprocess.run(script, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@app.command("run")
def run(
    users: Annotated[list[int], typer.Option(help="User counts to measure.")] = [10_000, 100_000],  # noqa: B006
    days: Annotated[int, typer.Option(help="Days of events.")] = 365,
) -> None:
    for n_users in users:
        data_dir = Path(tempfile.mkdtemp(prefix="bench-features-"))
        try:
            events = generate(data_dir, n_users, days)
            load_before = os.getloadavg()[0]
            ref = _measure("reference", data_dir)
            got = _measure("build", data_dir)
            load_after = os.getloadavg()[0]
        finally:
            shutil.rmtree(data_dir)
        per_user_day_us = got["seconds"] / (n_users * days) * 1e6
        print(
            f"{n_users:>7} users x {days} days, {events:,} events, {got['rows']:,} snapshot rows: "
            f"build {got['seconds']:.1f} s ({got['seconds'] / ref['seconds']:.1f}x reference "
            f"{ref['seconds']:.2f} s), {per_user_day_us:.2f} us per user-day, peak RSS {got['rss_mib']:.0f} MiB "
            f"(reference {ref['rss_mib']:.0f} MiB), load average {load_before:.1f} -> {load_after:.1f}"
        )


if __name__ == "__main__":
    app()
