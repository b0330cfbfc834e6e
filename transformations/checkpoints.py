"""What the feature build keeps between runs so that a daily build reads days, not the whole look-back.

* ``features/rolling_state/event_files.json``: per validated events file, its size and modification time and, from
  its events, the first event day and the first and last knowledge day. A build queries only the files that are new
  or changed since the previous build (the daily drop's), not the whole history.
* ``features/rolling_state/day=YYYY-MM-DD/``: the rolling-window state after every aggregate known by the end of
  that knowledge day (per-user running totals, the totals that have left each frame, the last activity day), with
  the events files it was computed from. A build that starts on day F resumes from the newest checkpoint of a day
  before F instead of re-reading the 90-day look-back, and writes the checkpoint the next day's build needs. The
  sums are exact integers, so a resumed build writes the same bytes as one from scratch
  (tests/transformations/test_features.py checks both ways).

A checkpoint is used only when the events it was computed from still say the same thing about the days it covers:
every events file that is new, changed or gone since must hold only events known after the checkpoint's day
(a late-validated drop, a re-validation or ``churn forget`` of an earlier day invalidates it, and the build starts
from scratch). ``churn forget`` deletes the checkpoints: they hold per-user sums.
"""

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np

from churn_common.files import replace_atomically
from churn_common.settings import DataPaths

logger = logging.getLogger(__name__)

EPOCH = date(1970, 1, 1)
FORMAT = 2
KEEP = 3
"""Checkpoints kept: today's, yesterday's (a re-run of today resumes from it) and one more for a missed day."""
INDEX = "event_files.json"
ARRAYS = ("ids", "total", "left", "last_active", "ring_days", "ring_index", "ring_day", "ring_metrics")


def state_root(paths: DataPaths) -> Path:
    return paths.features / "rolling_state"


@dataclass(frozen=True)
class EventFile:
    size: int
    mtime_ns: int
    first_day: int
    """Day number of its earliest event."""
    first_known: int
    last_known: int
    """Knowledge day numbers (max(event day, arrival day)) of its earliest- and latest-known events."""


EventFiles = dict[str, EventFile]


@dataclass
class Checkpoint:
    day: int
    """Knowledge day number: the state holds every aggregate known by the end of it."""
    ids: np.ndarray
    total: np.ndarray
    left: np.ndarray
    last_active: np.ndarray
    ring_days: np.ndarray
    """The event days whose known aggregates the next day's build takes from its ring (saved even when empty)."""
    ring_index: np.ndarray
    ring_day: np.ndarray
    ring_metrics: np.ndarray
    """Those aggregates: positions in ``ids``, event day, (metric, row) sums; by day, then position."""


def event_files(con: duckdb.DuckDBPyConnection, paths: DataPaths, day_number: Callable[[str], str]) -> EventFiles:
    """Every validated events file with its day bounds; only new or changed files are read."""
    previous = _read_index(state_root(paths) / INDEX)
    stats, unread = {}, []
    for path in sorted(paths.events.glob("date=*/*.parquet")):
        name, stat = str(path.relative_to(paths.events)), path.stat()
        known = previous.get(name)
        if known and (known.size, known.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            stats[name] = known
        else:
            unread.append((name, stat))
    if unread:
        day = day_number("event_timestamp")
        known = f"greatest({day}, {day_number('ingested_at')})"
        rows = con.execute(
            f"""SELECT filename, min({day}), min({known}), max({known})
                FROM read_parquet($files, filename = true) GROUP BY filename""",
            {"files": [str(paths.events / name) for name, _ in unread]},
        ).fetchall()
        bounds = {Path(filename).relative_to(paths.events).as_posix(): row for filename, *row in rows}
        for name, stat in unread:
            # A file without rows bounds nothing: it can neither start the data nor invalidate a checkpoint.
            first_day, first_known, last_known = bounds.get(name, (np.iinfo(np.int32).max,) * 2 + (-1,))
            stats[name] = EventFile(stat.st_size, stat.st_mtime_ns, first_day, first_known, last_known)
    return stats


def write_index(paths: DataPaths, files: EventFiles) -> None:
    _write_json(state_root(paths) / INDEX, {name: asdict(stat) for name, stat in files.items()})


def _read_index(path: Path) -> EventFiles:
    try:
        return {name: EventFile(**stat) for name, stat in json.loads(path.read_text()).items()}
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return {}


def _write_json(target: Path, content: object) -> None:
    text = json.dumps(content, indent=1, sort_keys=True) + "\n"
    replace_atomically(target, lambda temporary: temporary.write_text(text))


def _directory(paths: DataPaths, day: int) -> Path:
    return state_root(paths) / f"day={(EPOCH + timedelta(days=day)).isoformat()}"


def save(paths: DataPaths, checkpoint: Checkpoint, layout: dict, files: EventFiles) -> None:
    """Write the checkpoint (whole or not at all) and keep the newest ``KEEP``."""
    target = _directory(paths, checkpoint.day)
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ARRAYS:
        np.save(staging / f"{name}.npy", getattr(checkpoint, name))
    manifest = {"format": FORMAT, "layout": layout, "files": {name: asdict(stat) for name, stat in files.items()}}
    (staging / "manifest.json").write_text(json.dumps(manifest, sort_keys=True) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    for stale in sorted(state_root(paths).glob("day=*"))[:-KEEP]:
        shutil.rmtree(stale, ignore_errors=True)


def load(paths: DataPaths, latest: int, earliest: int, layout: dict, files: EventFiles) -> Checkpoint | None:
    """The newest usable checkpoint of a day in ``[earliest, latest]``, or None."""
    for directory in sorted(state_root(paths).glob("day=*"), reverse=True):
        day = (date.fromisoformat(directory.name.removeprefix("day=")) - EPOCH).days
        if not earliest <= day <= latest:
            continue
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if manifest.get("format") != FORMAT or manifest.get("layout") != layout:
            continue
        changed = _changed_before(day, {name: EventFile(**stat) for name, stat in manifest["files"].items()}, files)
        if changed:
            logger.info("checkpoint %s not used: %s holds events known by its day", directory.name, changed)
            continue
        try:
            arrays = {name: np.load(directory / f"{name}.npy") for name in ARRAYS}
        except (OSError, ValueError) as exc:  # a damaged checkpoint is no checkpoint: the build starts over
            logger.warning("checkpoint %s not used: %s", directory.name, exc)
            continue
        return Checkpoint(day, **arrays)
    return None


def _changed_before(day: int, then: EventFiles, now: EventFiles) -> str | None:
    """An events file, new, changed or gone since the checkpoint, that held or holds events known by ``day``."""
    for name in sorted(then.keys() | now.keys()):
        before, after = then.get(name), now.get(name)
        if before == after:
            continue
        if (before and before.first_known <= day) or (after and after.first_known <= day):
            return name
    return None


def forget(paths: DataPaths) -> int:
    """Delete every checkpoint (they hold per-user sums); the next build starts from scratch. Checkpoints removed."""
    checkpoints = list(state_root(paths).glob("day=*"))
    for directory in checkpoints:
        shutil.rmtree(directory)
    return len(checkpoints)
