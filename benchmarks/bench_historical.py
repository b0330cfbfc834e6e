"""Benchmark of ``get_historical_features`` through the FeatureService against hand-written DuckDB SQL.

    .venv/bin/python -m benchmarks.bench_historical [--users 100000] [--days 365] [--times 10] [--repeat 2] [--keep]
        [--filter-created]

Writes a year of daily snapshots (the feature build's layout: one Parquet file per day, every column of
``tests.feature_repo.factories``) for ``--users`` users with a vectorised numpy/pyarrow writer, reused from
``data/bench/historical_<users>x<days>_<DATA_VERSION>`` across runs, and an entity frame of ``--users x --times`` label
rows (weekly observation times, each at a random time of day). A snapshot is normally created 2 h after its event
time; 5 % arrive late (3 h to 3 days), so with the label times ``created <= t`` excludes some picks. The account
table (one open-account row per user, from before the first day) is written beside them, as the FeatureService also
reads the ``user_account`` view; the reference and the checksum cover the snapshot features only. Then, each in its
own subprocess so peak RSS is the job's own:

* reference: hand-written DuckDB SQL over the same Parquet with the same semantics as the feature views'
  point-in-time join. Default: one ``ASOF LEFT JOIN``, per row the newest snapshot with ``event_timestamp <= t``
  (ties: newest ``created``), NULL when it is older than ``t - ttl`` (2 days). ``--filter-created``: per row the
  newest (``event_timestamp``, ``created``) among the snapshots with both ``<= t`` and ``event_timestamp >= t - ttl``;
* feast: ``store.get_historical_features(entity_df, features=<FeatureService>).to_arrow()`` (with
  ``filter_by_created_timestamp=True`` under ``--filter-created``);
* fast: the same call with ``churn_common.feast_plugins.offline_store.FastDuckDBOfflineStore`` as the offline store.

All print a checksum (non-null count and sum per feature) that must agree. Wall time, peak RSS and the ratio are
printed; a run whose RSS passes ``--max-rss-gib`` (default 12) is killed and reported, as the machine is
shared. ``--keep`` keeps the generated data, otherwise it is deleted. ``--filter-created`` first prints how many label
rows the filter changes (from the keys alone), to show it matters in this data.
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

import duckdb
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer

from churn_common.settings import PROJECT_ROOT, Settings
from products.elearning import FEATURE_SERVICE
from tests.feature_repo.factories import FLOAT_STEMS, STATUS_FLOAT, feature_columns, random_accounts, write_accounts

START = date(2025, 1, 1)
TS = pa.timestamp("us", tz="UTC")
TTL = timedelta(days=2)
# Bump when the generated data changes, so data/bench kept by --keep from an older layout is not reused.
DATA_VERSION = "v3"
CREATED_DELAY = timedelta(hours=2)
LATE_FRACTION = 0.05
LATE_DELAY = (timedelta(hours=3), timedelta(days=3))
BENCH_ROOT = PROJECT_ROOT / "data" / "bench"

app = typer.Typer(add_completion=False)


def _is_float(column: str) -> bool:
    return column in STATUS_FLOAT or column.rsplit("_", 1)[0] in FLOAT_STEMS


def _day_end(day: date) -> pd.Timestamp:
    return pd.Timestamp(day + timedelta(days=1), tz="UTC")


def _column(name: str, rng: np.random.Generator, n: int) -> pa.Array:
    if _is_float(name):
        # One decimal keeps the files at a realistic size (Parquet dictionary-encodes them) without changing the work.
        values = rng.gamma(2.0, 10.0, size=n).round(1)
        return pa.array(values, mask=rng.random(n) < 0.1)
    return pa.array(rng.integers(0, 30, size=n, dtype=np.int64))


def _micros(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def _created_delays(rng: np.random.Generator, n: int) -> np.ndarray:
    """Microseconds from event to created time: a late-arriving (backfilled) snapshot for a few rows, so
    ``filter_by_created_timestamp`` changes some answers."""
    late = rng.random(n) < LATE_FRACTION
    late_delays = rng.integers(_micros(LATE_DELAY[0]), _micros(LATE_DELAY[1]), size=n)
    return np.where(late, late_delays, _micros(CREATED_DELAY))


def snapshot_day(user_ids: np.ndarray, day: date, rng: np.random.Generator) -> pa.Table:
    """One snapshot day for these users, typed like `churn features build` output."""
    n = len(user_ids)
    event_time = _day_end(day).value // 1000
    columns = {
        "user_id": pa.array(user_ids, pa.int64()),
        "event_timestamp": pa.array(np.full(n, event_time), TS),
        "created": pa.array(event_time + _created_delays(rng, n), TS),
    }
    columns.update({name: _column(name, rng, n) for name in feature_columns()})
    return pa.table(columns)


def write_snapshots(snapshots_dir: Path, n_users: int, days: list[date], seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    user_ids = np.arange(1, n_users + 1, dtype=np.int64)
    for day in days:
        target = snapshots_dir / f"date={day.isoformat()}"
        target.mkdir(parents=True, exist_ok=True)
        pq.write_table(snapshot_day(user_ids, day, rng), target / "part-0.parquet")
    return n_users * len(days)


def entity_frame(n_users: int, n_days: int, n_times: int, seed: int = 1) -> pd.DataFrame:
    """Weekly observation days in the second half of the year, each label at a random time of its day: the ones in
    the first 2 h (and those after a late snapshot) come before the day's snapshot is created."""
    first = n_days // 2
    days = [_day_end(START + timedelta(days=first + 7 * i)).value // 1000 for i in range(n_times)]
    times = np.tile(np.array(days, dtype=np.int64), n_users)
    times += np.random.default_rng(seed).integers(0, _micros(timedelta(days=1)), size=len(times))
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(1, n_users + 1, dtype=np.int64), n_times),
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True).as_unit("us"),
        }
    )


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _checksum(table: pa.Table) -> dict[str, list[float]]:
    out = {}
    for name in feature_columns():
        column = table.column(name)
        total = float(pc.sum(column).as_py() or 0.0)
        out[name] = [len(column) - column.null_count, round(total, 3)]
    return out


def _snapshots_sql(glob: str, filter_created: bool) -> str:
    """Rows outside [first t - ttl, last t] (filtered: or created after the last t) can never be picked, so they are
    not read into the join."""
    created = " AND created <= (SELECT max(event_timestamp) FROM entities)" if filter_created else ""
    return f"""
        SELECT * FROM read_parquet('{glob}')
        WHERE event_timestamp BETWEEN (SELECT min(event_timestamp) FROM entities) - INTERVAL {TTL.days} DAY
                                  AND (SELECT max(event_timestamp) FROM entities){created}
    """


def _asof_sql(glob: str) -> str:
    features = ", ".join(
        f"CASE WHEN f.event_timestamp >= e.event_timestamp - INTERVAL {TTL.days} DAY THEN f.{c} END AS {c}"
        for c in feature_columns()
    )
    # A struct compares field by field, so one ASOF inequality gives "newest event time <= t, then newest created".
    return f"""
        SELECT e.user_id, e.event_timestamp, {features}
        FROM (SELECT *, {{'t': event_timestamp, 'c': 'infinity'::TIMESTAMPTZ}} AS k FROM entities) e
        ASOF LEFT JOIN (
            SELECT *, {{'t': event_timestamp, 'c': created}} AS k FROM ({_snapshots_sql(glob, False)})
        ) f ON e.user_id = f.user_id AND e.k >= f.k
    """


def _filtered_sql(glob: str) -> str:
    # `created <= t` cannot be one ASOF key, so: every eligible snapshot of the user by a hash join on user_id (the ttl
    # keeps it to a couple per label), the newest (event, created) per label, joined back so labels without one get
    # NULLs. Labels are keyed by row number as (user_id, t) need not be unique. At 1M labels this is as fast as
    # picking only (event, created) first and fetching the features in a second read, with the least code.
    return f"""
        WITH e AS (SELECT *, row_number() OVER () AS r FROM entities)
        SELECT e.user_id, e.event_timestamp, {", ".join(f"p.{c}" for c in feature_columns())}
        FROM e LEFT JOIN (
            SELECT e.r, f.* FROM e JOIN ({_snapshots_sql(glob, True)}) f
                ON f.user_id = e.user_id AND f.event_timestamp <= e.event_timestamp
                AND f.created <= e.event_timestamp
                AND f.event_timestamp >= e.event_timestamp - INTERVAL {TTL.days} DAY
            QUALIFY row_number() OVER (PARTITION BY e.r ORDER BY f.event_timestamp DESC, f.created DESC) = 1
        ) p ON p.r = e.r
    """


def reference(data_dir: Path, n_users: int, n_days: int, n_times: int, filter_created: bool) -> None:
    entities = entity_frame(n_users, n_days, n_times)  # noqa: F841 - DuckDB reads it by name
    glob = str(Settings(data_dir=data_dir).paths.snapshots / "*" / "*.parquet")
    sql = _filtered_sql(glob) if filter_created else _asof_sql(glob)
    started = time.perf_counter()
    with duckdb.connect() as con:
        table = con.execute(sql).to_arrow_table()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rss_mib": _peak_rss_mib(), "rows": table.num_rows, "sum": _checksum(table)}))


def _timed_join(data_dir: Path, n_users: int, n_days: int, n_times: int, filter_created: bool, offline_config) -> None:
    """get_historical_features through the FeatureService with the given offline store, pinned here because the
    profiles' YAML names our store: without it the "feast" child would measure ours too."""
    from churn_common.store import feature_store

    store = feature_store(Settings(data_dir=data_dir, feast_project="bench_historical"))
    store.config.offline_config = offline_config
    store.config._offline_store = None  # RepoConfig caches the config it built from the YAML
    service = store.get_feature_service(FEATURE_SERVICE)
    entities = entity_frame(n_users, n_days, n_times)
    started = time.perf_counter()
    job = store.get_historical_features(
        entity_df=entities, features=service, filter_by_created_timestamp=filter_created
    )
    table = job.to_arrow()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rss_mib": _peak_rss_mib(), "rows": table.num_rows, "sum": _checksum(table)}))


def feast(data_dir: Path, n_users: int, n_days: int, n_times: int, filter_created: bool) -> None:
    """Feast's own DuckDB offline store (its ibis point-in-time join)."""
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig

    _timed_join(data_dir, n_users, n_days, n_times, filter_created, DuckDBOfflineStoreConfig())


def fast(data_dir: Path, n_users: int, n_days: int, n_times: int, filter_created: bool) -> None:
    """Feast's API, served by churn_common.feast_plugins.offline_store.FastDuckDBOfflineStore."""
    from churn_common.feast_plugins.offline_store import FastDuckDBOfflineStoreConfig

    _timed_join(data_dir, n_users, n_days, n_times, filter_created, FastDuckDBOfflineStoreConfig())


CHILDREN = {"reference": reference, "feast": feast, "fast": fast}


def _watch(child: subprocess.Popen, max_rss_gib: float) -> float | None:
    """Wait for the child; kill it (the machine is shared) once its RSS passes the cap. Returns the kill time."""
    process, started = psutil.Process(child.pid), time.perf_counter()
    while child.poll() is None:
        try:
            rss = process.memory_info().rss
        except psutil.NoSuchProcess:
            break
        if rss > max_rss_gib * 2**30:
            child.kill()
            child.wait()
            return time.perf_counter() - started
        time.sleep(0.5)
    return None


def _measure(kind: str, child_args: list[str], max_rss_gib: float) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_historical", "--child", kind, *child_args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=PROJECT_ROOT)
        killed_after = _watch(child, max_rss_gib)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if killed_after is not None:
        result = {"error": f"killed above {max_rss_gib} GiB RSS after {killed_after:.0f}s"}
    elif child.returncode != 0:
        result = {"error": f"exit {child.returncode}: {stderr.strip().splitlines()[-1:]}"}
    else:
        result = json.loads(stdout.strip().splitlines()[-1])
    print(f"  {kind}: {json.dumps({k: v for k, v in result.items() if k != 'sum'})}", flush=True)
    return result


def _prepare(data_dir: Path, n_users: int, n_days: int) -> None:
    from churn_common.store import apply_repo

    paths = Settings(data_dir=data_dir).paths
    if not paths.snapshots.exists():
        started = time.perf_counter()
        rows = write_snapshots(paths.snapshots, n_users, [START + timedelta(days=i) for i in range(n_days)])
        write_accounts(random_accounts(range(1, n_users + 1), seed=n_users), paths)
        print(f"wrote {rows:,} snapshot rows in {time.perf_counter() - started:.0f}s", flush=True)
    os.environ["CHURN_DATA_DIR"] = str(data_dir)
    apply_repo(Settings(data_dir=data_dir, feast_project="bench_historical"))


def _filter_effect(data_dir: Path, n_users: int, n_days: int, n_times: int) -> None:
    """How many labels the created filter changes, from the (event, created) keys alone: without it the pick is the
    newest snapshot in [t - ttl, t] (its values NULL when there is none); with it, the newest of those created by t."""
    entities = entity_frame(n_users, n_days, n_times)  # noqa: F841 - DuckDB reads it by name
    glob = str(Settings(data_dir=data_dir).paths.snapshots / "*" / "*.parquet")
    key = "{'t': s.event_timestamp, 'c': s.created}"
    sql = f"""
        WITH e AS (SELECT *, row_number() OVER () AS r FROM entities),
        picks AS (
            SELECT max({key}) AS unfiltered, max({key}) FILTER (WHERE s.created <= e.event_timestamp) AS filtered
            FROM e JOIN (SELECT user_id, event_timestamp, created FROM read_parquet('{glob}')) s
                ON s.user_id = e.user_id
                AND s.event_timestamp BETWEEN e.event_timestamp - INTERVAL {TTL.days} DAY AND e.event_timestamp
            GROUP BY e.r
        )
        SELECT count(*) FILTER (WHERE filtered IS DISTINCT FROM unfiltered),
               count(*) FILTER (WHERE filtered IS NULL)
        FROM picks
    """
    with duckdb.connect() as con:
        changed, emptied = con.execute(sql).fetchone()
    print(f"created filter changes {changed:,} label rows ({changed / len(entities):.1%}), {emptied:,} of them to NULL")


def _report(runs: dict[str, list[dict]]) -> None:
    best = {}
    for kind, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            print(f"{kind:>9}: failed: {results[0]['error']}")
            continue
        seconds = sorted(r["seconds"] for r in ok)
        best[kind] = seconds[0]
        print(
            f"{kind:>9}: best {seconds[0]:7.1f}s  median {float(np.median(seconds)):7.1f}s  "
            f"peak RSS {max(r['rss_mib'] for r in ok):7.0f} MiB  rows {ok[0]['rows']:,}"
        )
    if "reference" not in best:
        return
    for kind in ("feast", "fast"):
        if kind in best:
            agree = runs[kind][0]["sum"] == runs["reference"][0]["sum"]
            print(f"{kind} / reference (best): {best[kind] / best['reference']:.2f}x   results agree: {agree}")


@app.command()
def run(
    users: Annotated[int, typer.Option(help="Users in the snapshot table")] = 100_000,
    days: Annotated[int, typer.Option(help="Snapshot days")] = 365,
    times: Annotated[int, typer.Option(help="Observation times per user")] = 10,
    repeat: Annotated[int, typer.Option(help="Runs of each path")] = 2,
    keep: Annotated[bool, typer.Option(help="Keep the generated data for the next run")] = False,
    path: Annotated[list[str] | None, typer.Option(help="reference, feast, fast (repeatable; default: all)")] = None,
    max_rss_gib: Annotated[float, typer.Option(help="Kill a run whose RSS passes this (shared machine)")] = 12.0,
    filter_created: Annotated[bool, typer.Option(help="Join with filter_by_created_timestamp=True")] = False,
    child: Annotated[str, typer.Option(hidden=True)] = "",
    data_dir: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    data_dir = data_dir or BENCH_ROOT / f"historical_{users}x{days}_{DATA_VERSION}"
    if child:
        CHILDREN[child](data_dir, users, days, times, filter_created)
        return
    _prepare(data_dir, users, days)
    mode = "filter_by_created_timestamp=True" if filter_created else "no created filter"
    print(f"{users:,} users x {days} days of snapshots, {users * times:,} label rows, {mode}", flush=True)
    if filter_created:
        _filter_effect(data_dir, users, days, times)
    child_args = ["--data-dir", str(data_dir), "--users", str(users), "--days", str(days), "--times", str(times)]
    child_args += ["--filter-created"] if filter_created else []
    runs: dict[str, list[dict]] = {kind: [] for kind in path or CHILDREN}
    for _ in range(repeat):
        for kind in runs:
            runs[kind].append(_measure(kind, child_args, max_rss_gib))
    _report(runs)
    if not keep:
        shutil.rmtree(data_dir)


if __name__ == "__main__":
    app()
