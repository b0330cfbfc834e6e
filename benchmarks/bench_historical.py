"""Benchmark of ``get_historical_features`` through the FeatureService against a hand-written DuckDB ASOF join.

    .venv/bin/python -m benchmarks.bench_historical [--users 100000] [--days 365] [--times 10] [--repeat 2] [--keep]

Writes a year of daily snapshots (the feature build's layout: one Parquet file per day, every column of
``tests.feature_repo.factories``) for ``--users`` users with a vectorised numpy/pyarrow writer, reused from
``data/bench/historical_<users>x<days>`` across runs, and an entity frame of ``--users x --times`` label rows (weekly
observation times). Then, each in its own subprocess so peak RSS is the job's own:

* reference: one DuckDB ``ASOF LEFT JOIN`` over the same Parquet with the same semantics as the feature views'
  point-in-time join: per row, the newest snapshot with ``event_timestamp <= t`` (ties: newest ``created``), NULL
  when it is older than ``t - ttl`` (2 days);
* feast: ``store.get_historical_features(entity_df, features=<FeatureService>).to_arrow()``;
* fast: the same call with ``churn_common.feast_offline.FastDuckDBOfflineStore`` as the offline store.

All print a checksum (non-null count and sum per feature) that must agree. Wall time, peak RSS and the ratio are
printed; a run whose RSS passes ``--max-rss-gib`` (default 12) is killed and reported, as the machine is
shared. ``--keep`` keeps the generated data, otherwise it is deleted.
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

from churn_common.names import FEATURE_SERVICE
from churn_common.settings import PROJECT_ROOT, Settings
from tests.feature_repo.factories import FLOAT_STEMS, STATUS_FLOAT, STATUS_STR, feature_columns

START = date(2025, 1, 1)
TS = pa.timestamp("us", tz="UTC")
TTL = timedelta(days=2)
CATEGORIES = {
    "plan": ["free", "paid"],
    "country": ["DE", "BR", "US", "IN", "FR"],
    "acquisition_channel": ["ads", "organic", "referral"],
}
BENCH_ROOT = PROJECT_ROOT / "data" / "bench"

app = typer.Typer(add_completion=False)


def _is_float(column: str) -> bool:
    return column in STATUS_FLOAT or column.rsplit("_", 1)[0] in FLOAT_STEMS


def _day_end(day: date) -> pd.Timestamp:
    return pd.Timestamp(day + timedelta(days=1), tz="UTC")


def _column(name: str, rng: np.random.Generator, n: int) -> pa.Array:
    if name in STATUS_STR:
        choices = pa.array(CATEGORIES[name])
        return pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, len(choices), n)), choices).cast(pa.string())
    if _is_float(name):
        # One decimal keeps the files at a realistic size (Parquet dictionary-encodes them) without changing the work.
        values = rng.gamma(2.0, 10.0, size=n).round(1)
        return pa.array(values, mask=rng.random(n) < 0.1)
    return pa.array(rng.integers(0, 30, size=n, dtype=np.int64))


def snapshot_day(user_ids: np.ndarray, day: date, rng: np.random.Generator) -> pa.Table:
    """One snapshot day for these users, typed like `churn features build` output."""
    n = len(user_ids)
    event_time = _day_end(day)
    columns = {
        "user_id": pa.array(user_ids, pa.int64()),
        "event_timestamp": pa.array(np.full(n, event_time.value // 1000), TS),
        "created": pa.array(np.full(n, (event_time + pd.Timedelta(hours=2)).value // 1000), TS),
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


def entity_frame(n_users: int, n_days: int, n_times: int) -> pd.DataFrame:
    """Weekly observation times in the second half of the year, 3 h after a snapshot day ends."""
    first = n_days // 2
    times = [_day_end(START + timedelta(days=first + 7 * i)) + pd.Timedelta(hours=3) for i in range(n_times)]
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.arange(1, n_users + 1, dtype=np.int64), n_times),
            "event_timestamp": np.tile(np.array(times, dtype="datetime64[us]"), n_users),
        }
    )
    frame["event_timestamp"] = frame["event_timestamp"].dt.tz_localize("UTC")
    return frame


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _checksum(table: pa.Table) -> dict[str, list[float]]:
    out = {}
    for name in feature_columns():
        column = table.column(name)
        total = 0.0 if name in STATUS_STR else float(pc.sum(column).as_py() or 0.0)
        out[name] = [len(column) - column.null_count, round(total, 3)]
    return out


def _reference_sql(glob: str) -> str:
    features = ", ".join(
        f"CASE WHEN f.event_timestamp >= e.event_timestamp - INTERVAL {TTL.days} DAY THEN f.{c} END AS {c}"
        for c in feature_columns()
    )
    # A struct compares field by field, so one ASOF inequality gives "newest event time <= t, then newest created".
    # Rows outside [first t - ttl, last t] can never be picked, so they are not read into the join.
    return f"""
        SELECT e.user_id, e.event_timestamp, {features}
        FROM (SELECT *, {{'t': event_timestamp, 'c': 'infinity'::TIMESTAMPTZ}} AS k FROM entities) e
        ASOF LEFT JOIN (
            SELECT *, {{'t': event_timestamp, 'c': created}} AS k FROM read_parquet('{glob}')
            WHERE event_timestamp BETWEEN (SELECT min(event_timestamp) FROM entities) - INTERVAL {TTL.days} DAY
                                      AND (SELECT max(event_timestamp) FROM entities)
        ) f ON e.user_id = f.user_id AND e.k >= f.k
    """


def reference(data_dir: Path, n_users: int, n_days: int, n_times: int) -> None:
    entities = entity_frame(n_users, n_days, n_times)  # noqa: F841 - DuckDB reads it by name
    glob = str(Settings(data_dir=data_dir).paths.snapshots / "*" / "*.parquet")
    started = time.perf_counter()
    with duckdb.connect() as con:
        table = con.execute(_reference_sql(glob)).to_arrow_table()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rss_mib": _peak_rss_mib(), "rows": table.num_rows, "sum": _checksum(table)}))


def _timed_join(data_dir: Path, n_users: int, n_days: int, n_times: int, offline_config) -> None:
    """get_historical_features through the FeatureService with the given offline store, pinned here because the
    profiles' YAML names our store: without it the "feast" child would measure ours too."""
    from churn_common.store import feature_store

    store = feature_store(Settings(data_dir=data_dir, feast_project="bench_historical"))
    store.config.offline_config = offline_config
    store.config._offline_store = None  # RepoConfig caches the config it built from the YAML
    service = store.get_feature_service(FEATURE_SERVICE)
    entities = entity_frame(n_users, n_days, n_times)
    started = time.perf_counter()
    table = store.get_historical_features(entity_df=entities, features=service).to_arrow()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rss_mib": _peak_rss_mib(), "rows": table.num_rows, "sum": _checksum(table)}))


def feast(data_dir: Path, n_users: int, n_days: int, n_times: int) -> None:
    """Feast's own DuckDB offline store (its ibis point-in-time join)."""
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig

    _timed_join(data_dir, n_users, n_days, n_times, DuckDBOfflineStoreConfig())


def fast(data_dir: Path, n_users: int, n_days: int, n_times: int) -> None:
    """Feast's API, served by churn_common.feast_offline.FastDuckDBOfflineStore."""
    from churn_common.feast_offline import FastDuckDBOfflineStoreConfig

    _timed_join(data_dir, n_users, n_days, n_times, FastDuckDBOfflineStoreConfig())


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


def _measure(kind: str, data_dir: Path, n_users: int, n_days: int, n_times: int, max_rss_gib: float) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_historical", "--child", kind, "--data-dir", str(data_dir)]
    command += ["--users", str(n_users), "--days", str(n_days), "--times", str(n_times)]
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

    snapshots = Settings(data_dir=data_dir).paths.snapshots
    if not snapshots.exists():
        started = time.perf_counter()
        rows = write_snapshots(snapshots, n_users, [START + timedelta(days=i) for i in range(n_days)])
        print(f"wrote {rows:,} snapshot rows in {time.perf_counter() - started:.0f}s", flush=True)
    os.environ["CHURN_DATA_DIR"] = str(data_dir)
    apply_repo(Settings(data_dir=data_dir, feast_project="bench_historical"))


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
    child: Annotated[str, typer.Option(hidden=True)] = "",
    data_dir: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    data_dir = data_dir or BENCH_ROOT / f"historical_{users}x{days}"
    if child:
        CHILDREN[child](data_dir, users, days, times)
        return
    _prepare(data_dir, users, days)
    print(f"{users:,} users x {days} days of snapshots, {users * times:,} label rows", flush=True)
    runs: dict[str, list[dict]] = {kind: [] for kind in path or CHILDREN}
    for _ in range(repeat):
        for kind in runs:
            runs[kind].append(_measure(kind, data_dir, users, days, times, max_rss_gib))
    _report(runs)
    if not keep:
        shutil.rmtree(data_dir)


if __name__ == "__main__":
    app()
