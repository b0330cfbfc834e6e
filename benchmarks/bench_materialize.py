"""Benchmark of ``store.materialize`` into Redis: Feast's default engine, our RedisBatchEngine, and a raw pipeline.

    .venv/bin/python -m benchmarks.bench_materialize --users 100000 [--users 1000000] [--path fast --path raw]
        [--repeat 2]

For each size it writes two days of snapshots for every user (the feature build's layout, all 56 features of the
five views over the snapshot source; the account view, a source of its own, is not materialised) under
``data/bench/materialize_<users>``, then runs each path in its own subprocess (so peak RSS is the job's own), each
against its own Feast project in Redis db 12 (keys deleted afterwards):

* ``default``: Feast's local engine (pinned: the redis profile enables ours), ``pull_latest_features: true``,
  ``online_write_batch_size: 10000``;
* ``fast``: the same profile with ``batch_engine: {type: churn_common.feast_plugins.engine.RedisBatchEngine}``;
* ``raw`` (the reference): the exact key/field/value bytes precomputed in batches of 10,000 users, timing only the
  redis-py ``HSET`` pipeline (transaction=False) that writes them;
* ``resp`` (the server's floor): the same HSET commands packed to RESP bytes before the clock starts (all batches,
  so ~1.5 KB per user of memory), then sent over one connection while a second thread reads and checks the
  replies: what Redis alone needs to apply them, with no client work to wait for.

It prints wall time of ``materialize`` (registry updates included; ``feast apply`` excluded), peak RSS, and the
ratio to the raw pipeline, then deletes the data.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, date, datetime
from itertools import chain
from pathlib import Path
from typing import Annotated

import duckdb
import hiredis
import numpy as np
import redis
import typer
from feast import FeatureStore, FeatureView

from benchmarks.bench_historical import write_snapshots
from churn_common.feast_plugins.engine import _HashLayout
from churn_common.names import SNAPSHOT_TABLE, TIMESTAMP_FIELD
from churn_common.settings import PROJECT_ROOT, Settings
from churn_common.store import apply_repo, repo_config

BENCH_REDIS_DB = 12
BATCH_ROWS = 10_000
DAYS = [date(2026, 3, 1), date(2026, 3, 2)]
START = datetime(2026, 3, 1, tzinfo=UTC)
END = datetime(2026, 3, 3, 3, tzinfo=UTC)  # both snapshot days (event time = end of day) and their created time
ENGINE = {"type": "churn_common.feast_plugins.engine.RedisBatchEngine"}
BENCH_ROOT = PROJECT_ROOT / "data" / "bench"

app = typer.Typer(add_completion=False)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        feast_project=f"bench_{uuid.uuid4().hex[:10]}",
        feast_profile="redis",
        redis_db=BENCH_REDIS_DB,
        online_write_batch_size=BATCH_ROWS,
    )


def _store(settings: Settings, path: str) -> FeatureStore:
    config = repo_config(settings)
    # The redis profile enables our engine; the default path pins Feast's own local engine explicitly.
    config.batch_engine_config = {"type": "local"} if path == "default" else ENGINE
    return FeatureStore(repo_path=str(settings.feature_repo), config=config)


def _delete_keys(client: redis.Redis, project: str) -> int:
    deleted, batch = 0, []
    for key in client.scan_iter(match=f"*{project}", count=10_000):
        batch.append(key)
        if len(batch) == 10_000:
            deleted += client.unlink(*batch)
            batch = []
    return deleted + (client.unlink(*batch) if batch else 0)


def _snapshot_views(store: FeatureStore) -> list[FeatureView]:
    return [view for view in store.list_feature_views() if view.batch_source.name == SNAPSHOT_TABLE]


def _timed_materialize(store: FeatureStore) -> float:
    views = [view.name for view in _snapshot_views(store)]
    started = time.perf_counter()
    store.materialize(start_date=START, end_date=END, feature_views=views)
    return time.perf_counter() - started


def _raw_batches(settings: Settings, store: FeatureStore):
    """The bytes the engines write, precomputed batch by batch from the newest snapshot per user."""
    layout = _HashLayout(_snapshot_views(store), store.config)
    columns = ", ".join(layout.columns())
    query = f"""
        SELECT user_id, {TIMESTAMP_FIELD}, {columns} FROM read_parquet(?)
        QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY {TIMESTAMP_FIELD} DESC, created DESC) = 1
    """
    with duckdb.connect() as con:
        reader = con.execute(query, [str(settings.paths.snapshots / "*" / "*.parquet")]).to_arrow_reader(BATCH_ROWS)
        for batch in reader:
            encoded = layout.encode(batch, TIMESTAMP_FIELD)
            fields = [field for pairs in encoded.views for field, _ in pairs]
            values = [column.to_pylist() for pairs in encoded.views for _, column in pairs]
            yield [
                [key, *chain.from_iterable(zip(fields, row, strict=True))]
                for key, row in zip(encoded.keys.to_pylist(), zip(*values, strict=True), strict=True)
            ]


def _timed_raw_pipeline(settings: Settings, store: FeatureStore, client: redis.Redis) -> float:
    seconds = 0.0
    for rows in _raw_batches(settings, store):
        started = time.perf_counter()
        with client.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.execute_command("HSET", *row)
            pipe.execute()
        seconds += time.perf_counter() - started
    return seconds


def _read_replies(sock, count: int, errors: list) -> None:
    reader, buffer, seen = hiredis.Reader(), bytearray(1 << 20), 0
    while seen < count:
        received = sock.recv_into(buffer)
        if not received:
            raise ConnectionError("Redis closed the connection")
        reader.feed(buffer, 0, received)
        while (reply := reader.gets()) is not False:
            seen += 1
            if isinstance(reply, hiredis.ReplyError):
                errors.append(reply)


def _timed_resp(settings: Settings, store: FeatureStore, client: redis.Redis) -> float:
    payloads, count = [], 0
    for rows in _raw_batches(settings, store):
        payloads.append(b"".join(hiredis.pack_command(("HSET", *row)) for row in rows))
        count += len(rows)
    connection = client.connection_pool.get_connection()  # handshake (SELECT) by redis-py, then its raw socket
    errors: list = []
    started = time.perf_counter()
    reader = threading.Thread(target=_read_replies, args=(connection._sock, count, errors))
    reader.start()
    for payload in payloads:
        connection._sock.sendall(payload)
    reader.join()
    seconds = time.perf_counter() - started
    client.connection_pool.release(connection)
    if errors:
        raise RuntimeError(f"{len(errors)} error replies, first: {errors[0]}")
    return seconds


def child(path: str, data_dir: Path) -> None:
    os.environ["CHURN_DATA_DIR"] = str(data_dir)
    settings = _settings(data_dir)
    client = redis.Redis(host=settings.redis_host, port=settings.redis_port, db=BENCH_REDIS_DB)
    apply_repo(settings)
    store = _store(settings, path)
    rss_before = _peak_rss_mib()
    try:
        if path == "raw":
            seconds = _timed_raw_pipeline(settings, store, client)
        elif path == "resp":
            seconds = _timed_resp(settings, store, client)
        else:
            seconds = _timed_materialize(store)
        rss = _peak_rss_mib()
    finally:
        keys = _delete_keys(client, settings.feast_project)
    print(json.dumps({"seconds": seconds, "rss_mib": rss, "rss_before_mib": rss_before, "keys": keys}))


def _measure(path: str, data_dir: Path) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_materialize", "--child", path, "--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT)
    if result.returncode != 0:
        outcome = {"error": f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]}"}
    else:
        outcome = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"  {path}: {json.dumps(outcome)}", flush=True)
    return outcome


def _report(users: int, runs: dict[str, list[dict]]) -> None:
    best = {}
    for path, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            print(f"{users:>9,} {path:>8}: failed: {results[0]['error']}")
            continue
        seconds = sorted(r["seconds"] for r in ok)
        best[path] = seconds[0]
        print(
            f"{users:>9,} {path:>8}: best {seconds[0]:7.1f}s  median {float(np.median(seconds)):7.1f}s  "
            f"peak RSS {max(r['rss_mib'] for r in ok):6.0f} MiB (before: {ok[0]['rss_before_mib']:.0f})  "
            f"keys {ok[0]['keys']:,}",
            flush=True,
        )
    if "raw" in best:
        ratios = "  ".join(f"{p}/raw {s / best['raw']:.2f}x" for p, s in best.items() if p != "raw")
        print(f"{users:>9,} ratios (best): {ratios}", flush=True)


@app.command()
def run(
    users: Annotated[list[int] | None, typer.Option(help="Users (repeatable)")] = None,
    path: Annotated[list[str] | None, typer.Option(help="default, fast, raw, resp (repeatable; default: all)")] = None,
    repeat: Annotated[int, typer.Option(help="Runs of each path")] = 2,
    child_path: Annotated[str, typer.Option("--child", hidden=True)] = "",
    data_dir: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    if child_path:
        child(child_path, data_dir)
        return
    free = redis.Redis(db=BENCH_REDIS_DB).info("memory")
    print(f"redis used_memory before: {free['used_memory_human']}", flush=True)
    for n in users or [100_000]:
        data_dir = BENCH_ROOT / f"materialize_{n}"
        started = time.perf_counter()
        write_snapshots(Settings(data_dir=data_dir).paths.snapshots, n, DAYS, seed=n)
        print(f"{n:,} users x {len(DAYS)} days written in {time.perf_counter() - started:.0f}s", flush=True)
        runs: dict[str, list[dict]] = {p: [] for p in path or ["default", "fast", "raw", "resp"]}
        for _ in range(repeat):
            for p in runs:
                runs[p].append(_measure(p, data_dir))
        _report(n, runs)
        shutil.rmtree(data_dir)


if __name__ == "__main__":
    app()
