"""Batch scoring at scale: ``churn score`` (monitoring.scoring.score_batch) for ``--users`` users against the bare
model's ``predict_proba`` on the same feature matrix, in the same run.

    .venv/bin/python -m benchmarks.bench_scoring run [--users 1000000]

Writes two days of daily snapshots for every user and the account table with the vectorised writer of
benchmarks.bench_historical (the feature build's layout and columns), the validated users table, applies the repo
(embedded profile, a project of its own) and registers a champion trained on a synthetic frame with the same feature
columns (tests/training/frames.py) in the data directory's MLflow. Then, each in its own subprocess so peak RSS is
its own:

* score: ``score_batch`` at the morning after the last day: the offline point-in-time join of every user through the
  FeatureService, the population rule, predict + explain, the features-as-of column, the prediction log, the scored
  matrix and the high-risk list;
* reference: read the scored matrix score wrote and call the champion's ``predict_proba`` on it, nothing else.

Prints wall time and peak RSS of both and the ratio (the overhead of retrieval, explanation and writing); the
generated data is deleted afterwards.
"""

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer

from benchmarks.bench_historical import write_snapshots
from churn_common.settings import Settings
from tests.feature_repo.factories import random_accounts, write_accounts

DAYS = [date(2026, 3, 1), date(2026, 3, 2)]
AT = datetime(2026, 3, 3, 6, tzinfo=UTC)
app = typer.Typer(add_completion=False)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, feast_project=(data_dir / "project").read_text(), now=AT)


def _prepare(data_dir: Path, n_users: int) -> None:
    from churn_common.store import apply_repo
    from tests.training.frames import make_training_frame
    from training import registry
    from training.train import train_churn_model

    (data_dir / "project").write_text(f"bench_{uuid.uuid4().hex[:10]}")
    settings = _settings(data_dir)
    write_snapshots(settings.paths.snapshots, n_users, DAYS)
    write_accounts(random_accounts(range(1, n_users + 1), seed=n_users), settings.paths)
    ids = np.arange(1, n_users + 1, dtype=np.int64)
    signup = pa.array(np.full(n_users, datetime(2025, 1, 1, tzinfo=UTC)), pa.timestamp("us", tz="UTC"))
    settings.paths.users.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": ids, "signup_at": signup}), settings.paths.users)
    apply_repo(settings)
    frame, truth = make_training_frame(n_users=2_000, n_times=16, seed=0)
    registry.log_and_register(settings, train_churn_model(frame, 30, truth), settings.event_catalog().feature_service)
    assert registry.promote(settings)["promoted"]


@app.command(hidden=True)
def score(data_dir: Path) -> None:
    from monitoring.scoring import score_batch

    started = time.perf_counter()
    report = score_batch(_settings(data_dir), AT)
    seconds = time.perf_counter() - started
    figures = {"seconds": seconds, "rss_mib": _peak_rss_mib(), "scored": report.scored}
    print(json.dumps(figures | {"path": str(report.features)}))


@app.command(hidden=True)
def reference(data_dir: Path, matrix: Path) -> None:
    from churn_common.champion import load_version, registry_client, version_by_alias

    settings = _settings(data_dir)
    client = registry_client(settings.tracking_uri)
    model = load_version(client, version_by_alias(client, "champion"))
    started = time.perf_counter()
    frame = pq.read_table(matrix).to_pandas()
    probabilities = model.predict_proba(frame)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rss_mib": _peak_rss_mib(), "scored": len(probabilities)}))


def _measure(*args: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_scoring", *args]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode:
        raise SystemExit(f"{args[0]} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


@app.command()
def run(
    users: Annotated[int, typer.Option(help="Users to score")] = 1_000_000,
    keep: Annotated[bool, typer.Option(help="Keep the generated data (and print where)")] = False,
) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="bench_scoring_"))
    try:
        started = time.perf_counter()
        _prepare(data_dir, users)
        if keep:
            print(data_dir)
        print(f"prepared {users:,} users in {time.perf_counter() - started:.0f}s", flush=True)
        scored = _measure("score", str(data_dir))
        bare = _measure("reference", str(data_dir), str(scored["path"]))
        print(f"score_batch: {scored['seconds']:.1f}s, peak {scored['rss_mib']:,.0f} MiB, {scored['scored']:,} scored")
        print(f"bare predict_proba on the same matrix: {bare['seconds']:.1f}s, peak {bare['rss_mib']:,.0f} MiB")
        time_ratio, memory_ratio = scored["seconds"] / bare["seconds"], scored["rss_mib"] / bare["rss_mib"]
        print(f"ratio: {time_ratio:.1f}x the time, {memory_ratio:.1f}x the peak memory")
    finally:
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    app()
