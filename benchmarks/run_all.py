"""``make bench``: every benchmark in turn, each printing its ratios against the reference it measures in the same
run. By default at quick sizes (a few minutes in all, to see that each runs and how the ratios look); ``--full``
at the sizes benchmarks/README.md reports (hours on 2 cores). Each benchmark also runs alone: its module docstring
gives the command."""

import argparse
import subprocess
import sys
import time

QUICK = {
    "bench_features": ["run", "--users", "10000", "--days", "120"],
    "bench_historical": ["--users", "10000", "--days", "60", "--times", "4", "--repeat", "1"],
    "bench_materialize": ["--users", "20000", "--repeat", "1"],
    "bench_daily": ["run", "--users", "20000", "--days", "60"],
    "bench_training": ["--rows", "100000"],
    "bench_scoring": ["run", "--users", "20000"],
    "bench_serving": ["--seconds", "5", "--rounds", "1"],
    "bench_push": ["--pushes", "200"],
}
FULL = {
    "bench_features": ["run", "--users", "10000", "--users", "100000"],
    "bench_historical": [],
    "bench_materialize": [],
    "bench_daily": ["run"],
    "bench_training": ["--rows", "1000000"],
    "bench_scoring": ["run"],
    "bench_serving": [],
    "bench_push": ["--pushes", "1000"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the sizes benchmarks/README.md reports")
    parser.add_argument("only", nargs="*", help="run only these (e.g. bench_scoring)")
    options = parser.parse_args()
    plan = FULL if options.full else QUICK
    failed = []
    for name, args in plan.items():
        if options.only and name not in options.only:
            continue
        print(f"\n=== {name} {' '.join(args)}", flush=True)
        started = time.perf_counter()
        if subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], check=False).returncode:
            failed.append(name)
        print(f"=== {name}: {time.perf_counter() - started:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
