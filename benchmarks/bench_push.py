"""Push benchmark: how soon a pushed event shows in ``/predict`` while the API is under load. One uvicorn worker,
real Redis, real MLflow champion; wrk keeps ``/predict`` busy for random users while this process pushes one event
at a time (``POST /events``) for a user and polls ``/predict`` for that user until the pushed count appears.

    .venv/bin/python -m benchmarks.bench_push [--users 2000] [--pushes 300] [--connections 32]

Push -> visible is from just before the POST to the answer of the first ``/predict`` that shows the event. The
reference, measured in the same run under the same load, is one ``/predict`` round trip of the same client (each
push is followed by one, whether or not it is needed): push -> visible divided by it says how many round trips a
push costs. Without the push path the day's activity reached ``/predict`` with the nightly build: up to 26 hours.

Uses its own Feast project on Redis db 11 and deletes its keys afterwards.
"""

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

from benchmarks.bench_serving import REDIS_DB, build_world, wrk
from churn_common.settings import Settings
from tests.serving.world import delete_project_keys, running_server, server_env


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def activity_type(settings: Settings) -> str:
    """An activity event type without a value, from the catalogue (the benchmark names none)."""
    catalog = settings.event_catalog()
    return next(t.name for t in catalog.event_types if t.is_activity and not t.has_value)


def measure(base: str, users: int, pushes: int, kind: str) -> tuple[list[float], list[float], list[float], int]:
    """(push -> visible, POST alone, one /predict round trip) in ms per push, and the polls it took in all."""
    visible, posts, reference, polls = [], [], [], 0
    counts: dict[int, int] = {}
    with httpx.Client(base_url=base, timeout=10) as client:
        for i in range(pushes):
            user = 1 + (i * 7919) % users
            expected = counts.get(user, 0) + 1
            event = {"user_id": user, "event_type": kind, "event_timestamp": datetime.now(UTC).isoformat()}
            started = time.perf_counter()
            client.post("/events", json={"events": [event]}).raise_for_status()
            posted = time.perf_counter()
            while True:
                polls += 1
                today = client.get("/predict", params={"user_id": user}).json()["today"]
                if today["events"][kind] >= expected:
                    break
            seen = time.perf_counter()
            counts[user] = expected
            client.get("/predict", params={"user_id": user})
            reference.append((time.perf_counter() - seen) * 1000)
            visible.append((seen - started) * 1000)
            posts.append((posted - started) * 1000)
    return visible, posts, reference, polls


def run(settings: Settings, args: argparse.Namespace, tmp: Path) -> None:
    script = tmp / "predict.lua"
    script.write_text(
        f'request = function() return wrk.format("GET", "/predict?user_id=" .. math.random(1, {args.users})) end\n'
    )
    kind = activity_type(settings)
    with running_server(server_env(settings)) as base:
        quiet = measure(base, args.users, 20, kind)
        loads = []
        started = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            pushing = pool.submit(measure, base, args.users, args.pushes, kind)
            # wrk runs are bounded (15 s each): chained until the pushes are done, so every push is under load.
            while not pushing.done():
                loads.append(wrk(f"{base}/predict", args.connections, 15, script))
            results = pushing.result()
        elapsed = time.monotonic() - started
    report(results, quiet, loads, elapsed, args)


def report(results, quiet, loads, elapsed: float, args: argparse.Namespace) -> None:
    visible, posts, reference, polls = results
    rps = statistics.mean(run["rps"] for run in loads)
    print(f"load: wrk at {args.connections} conns on /predict (random users), {len(loads)} runs over {elapsed:.0f} s:")
    print(f"  {rps:.0f} req/s mean, /predict p50 {statistics.median(r['p50_ms'] for r in loads):.2f} ms,"
          f" p99 worst {max(r['p99_ms'] for r in loads):.2f} ms, non-2xx {sum(r['non_2xx'] for r in loads):.0f},"
          f" load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"{len(visible)} pushes under load, {polls} /predict polls ({polls / len(visible):.2f} per push):")
    for name, values in (
        ("push -> visible", visible),
        ("POST /events alone", posts),
        ("/predict (reference)", reference),
    ):
        print(
            f"  {name:<22} p50 {percentile(values, 50):7.2f} ms  p95 {percentile(values, 95):7.2f} ms"
            f"  p99 {percentile(values, 99):7.2f} ms  max {max(values):7.2f} ms"
        )
    ratio = percentile(visible, 50) / percentile(reference, 50)
    print(f"  push -> visible ÷ one /predict round trip, p50: {ratio:.2f}x")
    print(f"  p99 push -> visible {percentile(visible, 99) / 1000:.3f} s (target < 1 s; the nightly build: up to 26 h)")
    quiet_visible = quiet[0]
    print(f"without load ({len(quiet_visible)} pushes): push -> visible p50 {percentile(quiet_visible, 50):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--pushes", type=int, default=300)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(Path(tmp), args.users)
        try:
            run(world.settings, args, Path(tmp))
        finally:
            delete_project_keys(redis.Redis(db=REDIS_DB), world.settings.feast_project)


if __name__ == "__main__":
    main()
