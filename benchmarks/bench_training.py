"""Training at scale: time and peak memory of ``train_churn_model`` on a synthetic point-in-time frame with the
real feature columns (numpy-built, see tests/training/frames.py), on a weekly grid of 16 observation times.

The reference, measured in the same run, is one bare HistGradientBoostingClassifier fit (100 iterations, numeric
features only, no search, no calibration) on the same fit slice; the figure to record is the ratio.

    .venv/bin/python -m benchmarks.bench_training --rows 1000000
"""

import argparse
import resource
import time

from sklearn.ensemble import HistGradientBoostingClassifier

from tests.training.frames import make_training_frame
from training.models import feature_kinds
from training.split import time_split
from training.train import KEY_COLUMNS, train_churn_model

N_TIMES = 16
HORIZON_DAYS = 30


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_seconds(frame) -> float:
    fit = time_split(frame, HORIZON_DAYS).train
    numeric, _ = feature_kinds(fit, [c for c in frame.columns if c not in KEY_COLUMNS])
    started = time.perf_counter()
    HistGradientBoostingClassifier(max_iter=100, early_stopping=False, random_state=0).fit(fit[numeric], fit["label"])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="label rows (users x 16 weekly times)")
    rows = parser.parse_args().rows
    started = time.perf_counter()
    frame, truth = make_training_frame(n_users=rows // N_TIMES, n_times=N_TIMES, seed=0)
    built = time.perf_counter() - started
    print(f"frame: {len(frame):,} rows x {frame.shape[1]} columns, built in {built:.1f}s, {peak_rss_mib():,.0f} MiB")
    reference = reference_seconds(frame)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = train_churn_model(frame, HORIZON_DAYS, truth)
    trained, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(f"reference (one bare HGB fit on the fit slice): {reference:.1f}s")
    print(f"train_churn_model: {trained:.1f}s = {trained / reference:.1f}x reference ({cpu:.1f}s CPU)")
    print(f"peak RSS {peak_rss_mib():,.0f} MiB")
    print(
        f"chose {result.family} {result.params}; test ROC-AUC {result.metrics['roc_auc']:.4f}, "
        f"oracle ratio {result.metrics['roc_auc_oracle_ratio']:.3f}, PR-AUC {result.metrics['pr_auc']:.4f}"
    )


if __name__ == "__main__":
    main()
