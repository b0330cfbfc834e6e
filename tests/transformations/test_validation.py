"""The validation gate: every bad-row class found with its exact count, reconciliation, failures, BYO events."""

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from churn_common.catalog import EventCatalog, EventType
from churn_common.errors import DataError, EmptyInput, QuarantineThresholdExceeded, SchemaError
from churn_common.settings import DataPaths, Settings
from jobs.cli import app
from products import GeneratorConfig
from products.elearning import CATALOG as ELEARNING
from products.elearning.generator import generate, read_manifest
from tests.factories import make_events, make_users, utc, write_raw
from transformations.validation import EventReason, UserReason, ValidationReport, parse_ids, validate

START = date(2026, 1, 1)
DAYS = 120
PERIOD_END = pd.Timestamp(START + timedelta(days=DAYS), tz="UTC")
TS = pa.timestamp("us", tz="UTC")
NOW = utc(2026, 3, 1)
EVENT_COLUMNS = [
    ("user_id", pa.int64()),
    ("event_timestamp", TS),
    ("event_type", pa.string()),
    ("value", pa.float64()),
    ("ingested_at", TS),
    ("event_id", pa.string()),
]

MUSIC = EventCatalog(
    event_types=(
        EventType("play", "plays", True, "seconds_played", "sum", 0.0, 3600.0),
        EventType("skip", "skips", True),
        EventType("subscribe_fail", "subscribe_failures", False),
    )
)


def _raw_rows(paths_root: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in paths_root.rglob("*.parquet"))


# --- the generator's dirty mode ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataPaths, dict]:
    paths = DataPaths(tmp_path_factory.mktemp("dirty"))
    generate(paths, GeneratorConfig(n_users=300, start=START, n_days=DAYS, seed=5, late_share=0.05, dirty=True))
    report = validate(paths, catalog=ELEARNING, now=PERIOD_END, max_quarantine_share=0.05)
    return paths, report.as_dict()


def test_dirty_raw_columns_are_strings(dirty: tuple[DataPaths, dict]) -> None:
    paths, _ = dirty
    part = next(paths.raw_events.glob("date=*/part-*.parquet"))
    schema = pq.read_schema(part)
    assert schema.field("user_id").type == pa.string()
    assert schema.field("event_timestamp").type == pa.string()
    assert pq.read_schema(paths.raw_users).field("signup_at").type == pa.string()


def test_gate_finds_exactly_the_injected_bad_rows(dirty: tuple[DataPaths, dict]) -> None:
    paths, report = dirty
    manifest = read_manifest(paths)
    assert sum(manifest["events"].values()) > 0
    for table, reasons in (("events", EventReason), ("users", UserReason)):
        expected = {str(reason): manifest[table].get(str(reason), 0) for reason in reasons}
        assert report[table]["by_reason"] == expected, table


def test_counts_reconcile_with_raw_and_published_files(dirty: tuple[DataPaths, dict]) -> None:
    paths, report = dirty
    events, users = report["events"], report["users"]
    assert events["rows_in"] == _raw_rows(paths.raw_events)
    assert users["rows_in"] == pq.read_metadata(paths.raw_users).num_rows
    for table in (events, users):
        assert table["rows_in"] == table["rows_accepted"] + table["rows_quarantined"]
        assert table["rows_quarantined"] == sum(table["by_reason"].values())
    assert events["rows_accepted"] == _raw_rows(paths.events)
    assert users["rows_accepted"] == pq.read_metadata(paths.users).num_rows == 300
    for name in ("events", "users"):
        quarantined = pd.read_parquet(paths.quarantine / name)
        counts = quarantined["reason"].value_counts().to_dict()
        assert counts == {k: v for k, v in report[name]["by_reason"].items() if v}
    on_disk = json.loads((paths.reports / "validation.json").read_text())
    assert on_disk == report
    assert on_disk["passed"] is True


def test_validated_events_are_typed_sorted_files_per_date_and_batch(dirty: tuple[DataPaths, dict]) -> None:
    paths, report = dirty
    date_dirs = sorted(paths.events.iterdir())
    assert len(date_dirs) == DAYS
    # The raw log lands in daily drops raw/events/date=YYYY-MM-DD/: each drop is a batch named by its day.
    drops = sorted(p.name.removeprefix("date=") for p in paths.raw_events.glob("date=*"))
    assert report["batches"] == drops
    for date_dir in date_dirs:
        files = sorted(date_dir.iterdir())
        assert files and all(p.name.removeprefix("batch=").removesuffix(".parquet") in drops for p in files)
        for file in files:
            table = pq.read_table(file)
            assert [(f.name, f.type) for f in table.schema] == EVENT_COLUMNS
            frame = table.to_pandas()
            assert (frame["event_timestamp"].dt.strftime("date=%Y-%m-%d") == date_dir.name).all()
            assert frame.equals(frame.sort_values(["user_id", "event_timestamp"], ignore_index=True))
            assert frame["event_id"].isna().all()  # the generated log carries no event ids
    assert not list(paths.validated.glob(".*"))


def test_quarantine_keeps_original_values_and_origin(dirty: tuple[DataPaths, dict]) -> None:
    paths, _ = dirty
    quarantined = pd.read_parquet(paths.quarantine / "events")
    unparseable = quarantined[quarantined["reason"] == "unparseable_timestamp"]
    assert {"not a timestamp", "2026-02-30T10:00:00Z", "yesterday"} <= set(unparseable["event_timestamp"])
    row = quarantined.iloc[0]
    raw = pd.read_parquet(paths.raw_events / row["source_file"]).iloc[row["source_row"]]
    assert raw["event_type"] == row["event_type"]
    assert raw["user_id"] == row["user_id"]


# --- hand-built frames -------------------------------------------------------------------------------------

CLEAN = [
    ("1", "2026-01-05T10:00:00Z", "login", None),
    ("1", "2026-01-05T10:30:00Z", "video_watch", 12.5),
    ("2", "2026-01-06T08:00:00+01:00", "quiz_attempt", 80.0),
    ("3", "2026-01-07 09:00:00", "payment_success", 19.99),
    ("3", "2026-01-08T00:00:00Z", "support_ticket", None),
]
BAD = [
    (None, "2026-01-05T11:00:00Z", "login", None, "invalid_user_id"),
    ("x1", "2026-01-05T11:00:00Z", "login", None, "invalid_user_id"),
    ("1", "garbage", "login", None, "unparseable_timestamp"),
    ("1", None, "login", None, "unparseable_timestamp"),
    ("1", "2026-01-05T12:00:00Z", "pause", None, "unknown_event_type"),
    ("1", "2026-01-05T12:00:00Z", None, None, "unknown_event_type"),
    # Unknown type and in the future: the reason earlier in precedence wins.
    ("1", "2026-05-01T00:00:00Z", "pause", None, "unknown_event_type"),
    ("1", "2026-01-05T13:00:00Z", "video_watch", -1.0, "invalid_value"),
    ("1", "2026-01-05T13:00:00Z", "quiz_attempt", 100.5, "invalid_value"),
    ("1", "2026-01-05T13:00:00Z", "login", 1.0, "invalid_value"),
    ("1", "2026-01-05T13:00:00Z", "video_watch", None, "invalid_value"),
    ("2", "2026-03-01T00:00:00.000001Z", "login", None, "future_timestamp"),
    ("99", "2026-01-05T13:00:00Z", "login", None, "unknown_user"),
    ("2", "2026-01-02T23:59:59Z", "login", None, "before_signup"),
    ("1", "2026-01-05T10:30:00Z", "video_watch", 12.5, "duplicate_event"),
    ("1", "2026-01-05T10:30:00Z", "video_watch", 12.5, "duplicate_event"),
]


def _string_events(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame([row[:4] for row in rows], columns=["user_id", "event_timestamp", "event_type", "value"])
    frame["value"] = frame["value"].astype("float64")
    frame["ingested_at"] = pd.Series([utc(2026, 1, 9)] * len(frame)).astype("datetime64[us, UTC]")
    return frame


def test_each_bad_event_class_is_quarantined_with_its_reason(settings: Settings) -> None:
    # Signups on Jan 3: the before-signup row then arrives within the lateness limit (7 days).
    write_raw(settings.paths, make_users(3, signup=utc(2026, 1, 3)), _string_events(CLEAN + BAD))
    report = validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0)
    expected = {str(reason): 0 for reason in EventReason} | {
        "invalid_user_id": 2,
        "unparseable_timestamp": 2,
        "unknown_event_type": 3,
        "invalid_value": 4,
        "future_timestamp": 1,
        "unknown_user": 1,
        "before_signup": 1,
        "duplicate_event": 2,
    }
    assert report.events.by_reason == expected
    assert (report.events.rows_in, report.events.rows_accepted) == (21, 5)

    quarantined = pd.read_parquet(settings.paths.quarantine / "events").sort_values("source_row")
    assert quarantined["source_row"].tolist() == list(range(len(CLEAN), len(CLEAN) + len(BAD)))
    assert quarantined["reason"].tolist() == [row[4] for row in BAD]
    assert quarantined["user_id"].tolist()[:3] == [None, "x1", "1"]
    assert quarantined["event_timestamp"].tolist()[2] == "garbage"
    assert set(quarantined["source_file"]) == {"part-00000.parquet"}


def test_accepted_events_are_parsed_to_utc_and_sorted(settings: Settings) -> None:
    write_raw(settings.paths, make_users(3), _string_events(list(reversed(CLEAN))))
    validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    published = pd.read_parquet(settings.paths.events)
    expected = pd.DataFrame(
        {
            "user_id": np.array([1, 1, 2, 3, 3], dtype="int64"),
            "event_timestamp": pd.Series(
                [utc(2026, 1, 5, 10), utc(2026, 1, 5, 10, 30), utc(2026, 1, 6, 7), utc(2026, 1, 7, 9), utc(2026, 1, 8)]
            ).astype("datetime64[us, UTC]"),
            "event_type": ["login", "video_watch", "quiz_attempt", "payment_success", "support_ticket"],
            "value": [np.nan, 12.5, 80.0, 19.99, np.nan],
            "ingested_at": pd.Series([utc(2026, 1, 9)] * 5).astype("datetime64[us, UTC]"),
        }
    )
    published = published[expected.columns].sort_values(["event_timestamp"], ignore_index=True)
    pd.testing.assert_frame_equal(published, expected)


def test_typed_and_string_raw_columns_validate_identically(settings: Settings, tmp_path: Path) -> None:
    typed = make_events(
        [(1, utc(2026, 1, 2, 9), "login", None), (2, utc(2026, 1, 3, 9, 5), "video_watch", 30.0)]
        + [(1, utc(2026, 1, 2, 9), "login", None)]
    )
    as_text = typed.assign(
        user_id=typed["user_id"].astype(str),
        event_timestamp=typed["event_timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )
    outputs = []
    for name, events in (("typed", typed), ("text", as_text)):
        paths = DataPaths(tmp_path / name)
        write_raw(paths, make_users(2), events)
        report = validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0)
        assert report.events.by_reason["duplicate_event"] == 1
        outputs.append(pd.read_parquet(paths.events))
    pd.testing.assert_frame_equal(outputs[0], outputs[1])


def test_each_bad_user_class_is_quarantined(settings: Settings) -> None:
    users = pd.DataFrame(
        {
            "user_id": ["1", "u-2", "3", "1", None, "4", "5"],
            "signup_at": ["2026-01-01T00:00:00Z", "2026-01-01", "someday", "2026-01-02", "2026-01-01"]
            + ["2026-01-01", "2026-01-03"],
            "country": "DE",
            "plan": "free",
            "acquisition_channel": "organic",
            "closed_at": [None, None, None, None, None, "never", "2026-02-01T12:00:00Z"],
        }
    )
    write_raw(settings.paths, users, make_events([(1, utc(2026, 1, 2), "login", None)]))
    report = validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0)
    assert report.users.by_reason == {
        "invalid_user_id": 2,
        "unparseable_signup": 1,
        "unparseable_closed_at": 1,
        "future_signup": 0,
        "closed_before_signup": 0,
        "duplicate_user_id": 1,
    }
    accepted = pd.read_parquet(settings.paths.users)
    assert accepted["user_id"].tolist() == [1, 5]
    assert accepted["signup_at"].tolist() == [utc(2026, 1, 1), utc(2026, 1, 3)]
    assert accepted["closed_at"].tolist()[1] == utc(2026, 2, 1, 12)
    quarantined = pd.read_parquet(settings.paths.quarantine / "users")
    assert quarantined["source_row"].tolist() == [1, 2, 3, 4, 5]
    assert quarantined["closed_at"].tolist()[4] == "never"


def test_rerun_removes_dates_no_longer_produced(settings: Settings) -> None:
    two_days = [(1, utc(2026, 1, 2), "login", None), (1, utc(2026, 1, 3), "login", None)]
    write_raw(settings.paths, make_users(1), make_events(two_days))
    validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    write_raw(settings.paths, make_users(1), make_events(two_days[:1]))
    validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    assert [p.name for p in settings.paths.events.iterdir()] == ["date=2026-01-02"]


@pytest.mark.parametrize(
    "raw",
    [
        pa.array([7, 2**64 - 1, None, 2**63], type=pa.uint64()),
        pa.array([7, -1, None, -128], type=pa.int8()),
        pa.array([7.0, -1.0, None, 2.5]),
        pa.array([" 7", "-1", None, "8x"]),
    ],
    ids=["uint64", "int8", "float", "string"],
)
def test_ids_of_every_raw_type_parse_or_become_null(raw: pa.Array) -> None:
    parsed = parse_ids(pa.chunked_array([raw]), "user_id")
    assert str(parsed.dtype) == "Int64"
    assert parsed[0] == 7
    assert parsed.isna().tolist() == [False, True, True, True]


# --- failures ----------------------------------------------------------------------------------------------


def test_threshold_breach_fails_the_cli_and_publishes_nothing(settings: Settings) -> None:
    good = [(1, utc(2026, 1, 2, hour), "login", None) for hour in range(9)]
    write_raw(settings.paths, make_users(1), make_events(good))
    validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    published = (settings.paths.events / "date=2026-01-02" / "batch=events.parquet").read_bytes()
    validated = _files(settings.paths.validated), sorted(settings.paths.validated.rglob("*"))

    # One unknown user in ten rows: 10 % > the 5 % default.
    write_raw(settings.paths, make_users(1), make_events([*good, (7, utc(2026, 1, 3), "login", None)]))
    result = CliRunner().invoke(app, ["data", "validate", "--now", "2026-03-01T00:00:00Z"])
    assert result.exit_code == 1
    assert "quarantined share above 5.00%" in result.output
    assert "events 10.00%" in result.output
    assert (settings.paths.events / "date=2026-01-02" / "batch=events.parquet").read_bytes() == published
    assert not (settings.paths.events / "date=2026-01-03").exists()
    assert (_files(settings.paths.validated), sorted(settings.paths.validated.rglob("*"))) == validated
    report = json.loads((settings.paths.reports / "validation.json").read_text())
    assert report["passed"] is False
    assert report["events"]["by_reason"]["unknown_user"] == 1

    raised = CliRunner().invoke(app, ["data", "validate", "--now", "2026-03-01", "--max-quarantine-share", "0.2"])
    assert raised.exit_code == 0, raised.output
    assert (settings.paths.events / "date=2026-01-03").exists() is False  # the bad row stays quarantined


def test_missing_column_fails_the_cli_with_a_clear_message(settings: Settings) -> None:
    events = make_events([(1, utc(2026, 1, 2), "login", None)]).drop(columns=["event_type"])
    write_raw(settings.paths, make_users(1), events)
    result = CliRunner().invoke(app, ["data", "validate", "--now", "2026-03-01"])
    assert result.exit_code == 1
    assert "missing required column(s) ['event_type']" in result.output
    assert not settings.paths.events.exists()


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (pd.Series([True]), "cannot be read as a UTC timestamp"),
        (pd.Series([pd.Timestamp("2026-01-02")]).astype("datetime64[us]"), "timezone-naive"),
    ],
)
def test_uncoercible_timestamp_column_is_a_schema_error(settings: Settings, column: pd.Series, message: str) -> None:
    events = make_events([(1, utc(2026, 1, 2), "login", None)]).assign(event_timestamp=column)
    write_raw(settings.paths, make_users(1), events)
    with pytest.raises(SchemaError, match=message):
        validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0)


def test_threshold_error_is_typed(settings: Settings) -> None:
    write_raw(settings.paths, make_users(1), make_events([(2, utc(2026, 1, 2), "login", None)]))
    with pytest.raises(QuarantineThresholdExceeded, match="events 100.00%"):
        validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.5)


# --- bring your own events ---------------------------------------------------------------------------------


def test_music_event_log_validates_against_its_own_catalogue(settings: Settings, tmp_path: Path) -> None:
    users = pd.DataFrame({"user_id": [10, 11], "signup_at": pd.to_datetime(["2025-06-01", "2025-07-01"], utc=True)})
    events = pd.DataFrame(
        {
            "user_id": [10, 10, 11, 11, 10, 10, 11],
            "event_timestamp": pd.to_datetime(
                ["2026-01-02 08:00", "2026-01-02 08:04", "2026-01-03 20:00", "2026-01-04 07:00"] * 2, utc=True
            )[:7],
            "event_type": ["play", "skip", "subscribe_fail", "play", "video_watch", "play", "skip"],
            "value": [185.0, None, None, 240.0, 12.0, 5000.0, 1.0],
        }
    )
    users.to_parquet(tmp_path / "listeners.parquet")
    events.to_parquet(tmp_path / "plays.parquet")
    args = ["data", "validate", "--catalog", "tests.transformations.test_validation:MUSIC", "--now", "2026-02-01"]
    args += ["--events", str(tmp_path / "plays.parquet"), "--users", str(tmp_path / "listeners.parquet")]
    result = CliRunner().invoke(app, [*args, "--max-quarantine-share", "0.5"])
    assert result.exit_code == 0, result.output
    report = json.loads((settings.paths.reports / "validation.json").read_text())
    assert report["catalog"] == ["play", "skip", "subscribe_fail"]
    assert report["events"]["by_reason"]["unknown_event_type"] == 1
    assert report["events"]["by_reason"]["invalid_value"] == 2
    published = pd.read_parquet(settings.paths.events).sort_values("event_timestamp", ignore_index=True)
    assert published["event_type"].tolist() == ["play", "skip", "subscribe_fail", "play"]
    # No arrival times in this log: taken as on time.
    assert (published["ingested_at"] == published["event_timestamp"]).all()
    assert pd.read_parquet(settings.paths.users)["country"].isna().all()


def test_cli_rejects_a_catalogue_that_is_not_one(settings: Settings) -> None:
    spec = "tests.transformations.test_validation:NOW"
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "data", "validate", "--catalog", spec],
        env={**os.environ, "CHURN_DATA_DIR": str(settings.data_dir)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 1
    assert f"{spec!r} is a Timestamp, not an EventCatalog" in done.stderr and "Traceback" not in done.stderr


# --- batches: a run replaces only its own batches ----------------------------------------------------------

USERS = make_users(3)
DAY_5 = [(1, utc(2026, 1, 4, 22), "login", None), (1, utc(2026, 1, 5, 9), "login", None)]
DAY_6 = [(2, utc(2026, 1, 6, 8), "video_watch", 3.0), (3, utc(2026, 1, 6, 9), "login", None)]


def _drop(root: Path, day: str, events: pd.DataFrame, part: str = "part-0") -> None:
    """A daily raw drop, as the log lands: ``root/date=<day>/<part>.parquet``."""
    (root / f"date={day}").mkdir(parents=True, exist_ok=True)
    events.to_parquet(root / f"date={day}" / f"{part}.parquet", index=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _state(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and directory under ``root`` with its bytes and modification time: what "untouched" means."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
        for p in root.rglob("*")
    }


def _validated_rows(paths: DataPaths) -> int:
    return sum(pq.read_metadata(p).num_rows for p in paths.events.glob("*/*.parquet"))


def _reconciles(report: ValidationReport) -> bool:
    return all(t.rows_in == t.rows_accepted + t.rows_quarantined for t in (report.users, report.events))


def _two_drops(settings: Settings) -> DataPaths:
    paths = settings.paths
    paths.raw.mkdir(parents=True)
    USERS.to_parquet(paths.raw_users, index=False)
    _drop(paths.raw_events, "2026-01-05", make_events(DAY_5))
    _drop(paths.raw_events, "2026-01-06", make_events(DAY_6))
    return paths


def test_a_directory_of_daily_drops_publishes_one_batch_per_drop(settings: Settings) -> None:
    paths = _two_drops(settings)
    report = validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    assert report.batches == ["2026-01-05", "2026-01-06"]
    assert sorted(_files(paths.events)) == [
        "date=2026-01-04/batch=2026-01-05.parquet",
        "date=2026-01-05/batch=2026-01-05.parquet",
        "date=2026-01-06/batch=2026-01-06.parquet",
    ]
    assert report.as_dict()["batches"] == ["2026-01-05", "2026-01-06"]
    assert "batches: 2026-01-05, 2026-01-06 (2)" in report.summary()
    # The users' history is the run's last batch.
    assert [p.name for p in paths.user_history.iterdir()] == ["batch=2026-01-06.parquet"]


def test_summary_shortens_a_long_list_of_batches() -> None:
    report = ValidationReport(NOW, 0.05, ("login",), batches=[f"2026-01-{day:02d}" for day in range(1, 11)])
    assert "\n  batches: 2026-01-01, ..., 2026-01-10 (10)\n" in report.summary()


def test_validating_one_file_keeps_every_other_batch(settings: Settings, tmp_path: Path) -> None:
    paths = _two_drops(settings)
    validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    before = _files(paths.events)
    one_file = tmp_path / "one_file.parquet"
    make_events([(3, utc(2026, 1, 6, 10), "login", None)]).to_parquet(one_file)

    report = validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0, events_source=one_file)

    after = _files(paths.events)
    assert {name: after.get(name) for name in before} == before
    assert sorted(set(after) - set(before)) == ["date=2026-01-06/batch=one_file.parquet"]
    assert _validated_rows(paths) == len(DAY_5) + len(DAY_6) + 1
    assert report.batches == ["one_file"]
    assert _reconciles(report)


def test_revalidating_a_batch_replaces_only_it_and_a_rerun_is_byte_identical(
    settings: Settings, tmp_path: Path
) -> None:
    paths = _two_drops(settings)
    validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    day_5_files = {k: v for k, v in _files(paths.events).items() if k.endswith("batch=2026-01-05.parquet")}
    # The 2026-01-06 drop again, now with an event of 2026-01-05 (late) and without user 3's event.
    redo = tmp_path / "redo"
    _drop(redo, "2026-01-06", make_events([(2, utc(2026, 1, 5, 23), "login", None), DAY_6[0]]))

    report = validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0, events_source=redo)
    assert report.batches == ["2026-01-06"]
    files = _files(paths.events)
    assert {k: v for k, v in files.items() if k.endswith("batch=2026-01-05.parquet")} == day_5_files
    assert sorted(k for k in files if k.endswith("batch=2026-01-06.parquet")) == [
        "date=2026-01-05/batch=2026-01-06.parquet",
        "date=2026-01-06/batch=2026-01-06.parquet",
    ]
    assert pd.read_parquet(paths.events / "date=2026-01-06")["user_id"].tolist() == [2]

    published = _files(paths.validated), (paths.reports / "validation.json").read_bytes()
    validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0, events_source=redo)
    assert (_files(paths.validated), (paths.reports / "validation.json").read_bytes()) == published


def test_a_batch_that_no_longer_produces_a_date_leaves_other_batches_there(settings: Settings, tmp_path: Path) -> None:
    paths = _two_drops(settings)
    validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    late = tmp_path / "late.parquet"
    make_events([(2, utc(2026, 1, 4, 23), "login", None)]).to_parquet(late)
    validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0, events_source=late)
    make_events([(2, utc(2026, 1, 6, 23), "login", None)]).to_parquet(late)

    validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0, events_source=late)
    assert sorted(p.name for p in (paths.events / "date=2026-01-04").iterdir()) == ["batch=2026-01-05.parquet"]
    assert (paths.events / "date=2026-01-06" / "batch=late.parquet").exists()

    # A date left with no file at all disappears.
    (paths.raw_events / "date=2026-01-05" / "part-0.parquet").unlink()
    _drop(paths.raw_events, "2026-01-05", make_events(DAY_5[1:]))
    validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    assert not (paths.events / "date=2026-01-04").exists()


def test_a_second_days_batch_appends(settings: Settings, tmp_path: Path) -> None:
    paths = settings.paths
    write_raw(paths, USERS, make_events(DAY_5))
    for day, rows in (("2026-01-05", DAY_5), ("2026-01-06", DAY_6)):
        source = tmp_path / f"{day}.parquet"
        make_events(rows).to_parquet(source)
        report = validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0, events_source=source, batch=day)
        assert report.batches == [day]
    published = pd.read_parquet(paths.events).sort_values("event_timestamp", ignore_index=True)
    assert list(zip(published["user_id"], published["event_timestamp"], strict=True)) == [
        (user, ts) for user, ts, _, _ in DAY_5 + DAY_6
    ]
    assert sorted(_files(paths.events)) == [
        "date=2026-01-04/batch=2026-01-05.parquet",
        "date=2026-01-05/batch=2026-01-05.parquet",
        "date=2026-01-06/batch=2026-01-06.parquet",
    ]


def test_each_days_run_keeps_its_own_quarantined_rows(settings: Settings, tmp_path: Path) -> None:
    paths = settings.paths
    write_raw(paths, USERS, make_events(DAY_5))
    for day, rows in (("2026-01-05", DAY_5), ("2026-01-06", DAY_6)):
        source = tmp_path / f"{day}.parquet"
        # One event of an unknown user per day: set aside, never lost by the next day's run.
        make_events([*rows, (999, rows[0][1], "login", None)]).to_parquet(source)
        validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.5, events_source=source, batch=day)
    quarantined = pd.read_parquet(paths.quarantine / "events")
    assert quarantined["reason"].tolist() == ["unknown_user", "unknown_user"]
    assert sorted(p.name for p in (paths.quarantine / "events").iterdir()) == [
        "batch=2026-01-05.parquet",
        "batch=2026-01-06.parquet",
    ]


def test_a_drop_directory_given_as_the_source_is_that_days_batch(settings: Settings) -> None:
    paths = _two_drops(settings)
    report = validate(
        paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0, events_source=paths.raw_events / "date=2026-01-06"
    )
    assert report.batches == ["2026-01-06"]
    assert sorted(_files(paths.events)) == ["date=2026-01-06/batch=2026-01-06.parquet"]


def test_files_outside_a_date_directory_take_the_batch_option(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "mixed"
    _drop(source, "2026-01-05", make_events(DAY_5))
    make_events(DAY_6).to_parquet(source / "extra.parquet")
    for root, batch, expected in (("default", None, "mixed"), ("named", "manual-1", "manual-1")):
        paths = DataPaths(tmp_path / root)
        write_raw(paths, USERS, make_events(DAY_5))
        report = validate(
            paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0, events_source=source, batch=batch
        )
        assert report.batches == ["2026-01-05", expected]
        assert sorted(_files(paths.events)) == [
            "date=2026-01-04/batch=2026-01-05.parquet",
            "date=2026-01-05/batch=2026-01-05.parquet",
            f"date=2026-01-06/batch={expected}.parquet",
        ]
        assert [p.name for p in paths.user_history.iterdir()] == [f"batch={expected}.parquet"]


@pytest.mark.parametrize(("file_name", "batch"), [("my events.parquet", None), ("ok.parquet", "../up")])
def test_a_batch_name_that_is_not_a_plain_name_is_rejected(
    settings: Settings, tmp_path: Path, file_name: str, batch: str | None
) -> None:
    write_raw(settings.paths, USERS, make_events(DAY_5))
    make_events(DAY_5).to_parquet(tmp_path / file_name)
    with pytest.raises(DataError, match="batch name"):
        validate(
            settings.paths,
            catalog=ELEARNING,
            now=NOW,
            max_quarantine_share=0.0,
            events_source=tmp_path / file_name,
            batch=batch,
        )
    assert not settings.paths.validated.exists()


def test_cli_batch_option_names_the_batch(settings: Settings, tmp_path: Path) -> None:
    write_raw(settings.paths, USERS, make_events(DAY_5))
    make_events(DAY_6).to_parquet(tmp_path / "drop.parquet")
    args = ["data", "validate", "--now", "2026-03-01", "--events", str(tmp_path / "drop.parquet")]
    result = CliRunner().invoke(app, [*args, "--batch", "2026-01-06"])
    assert result.exit_code == 0, result.output
    assert "batches: 2026-01-06 (1)" in result.output
    assert (settings.paths.events / "date=2026-01-06" / "batch=2026-01-06.parquet").exists()
    assert (settings.paths.user_history / "batch=2026-01-06.parquet").exists()


# --- duplicates across batches -----------------------------------------------------------------------------


def test_duplicates_of_another_batch_are_quarantined_by_content(settings: Settings, tmp_path: Path) -> None:
    write_raw(settings.paths, USERS, make_events(DAY_5))
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    login, watch = (1, utc(2026, 1, 5, 10), "login", None), (1, utc(2026, 1, 5, 10, 30), "video_watch", 12.5)
    make_events([login, watch]).to_parquet(first)
    news = [(1, utc(2026, 1, 5, 11), "login", None), (2, utc(2026, 1, 6), "login", None)]
    make_events([watch, login, *news]).to_parquet(second)
    validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0, events_source=first)

    report = validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0, events_source=second)
    assert report.events.by_reason["duplicate_event"] == 2
    assert (report.events.rows_in, report.events.rows_accepted) == (4, 2)
    assert _reconciles(report)
    quarantined = pd.read_parquet(settings.paths.quarantine / "events").sort_values("source_row")
    assert quarantined["source_row"].tolist() == [0, 1]
    assert sorted(_files(settings.paths.events)) == [
        "date=2026-01-05/batch=a.parquet",
        "date=2026-01-05/batch=b.parquet",
        "date=2026-01-06/batch=b.parquet",
    ]
    assert pd.read_parquet(settings.paths.events / "date=2026-01-05" / "batch=a.parquet").shape[0] == 2

    # Re-validating a batch does not count its own earlier rows as duplicates: it replaces them.
    for source, duplicates in ((second, 2), (first, 0)):
        published = _files(settings.paths.events)
        report = validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0, events_source=source)
        assert report.events.by_reason["duplicate_event"] == duplicates
        assert _files(settings.paths.events) == published


def _with_ids(rows: list[tuple], ids: list[str | None]) -> pd.DataFrame:
    return make_events(rows).assign(event_id=pd.Series(ids, dtype=object))


def test_duplicates_of_another_batch_are_quarantined_by_event_id(settings: Settings, tmp_path: Path) -> None:
    write_raw(settings.paths, USERS, make_events(DAY_5))
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    login_10, login_11 = (1, utc(2026, 1, 5, 10), "login", None), (1, utc(2026, 1, 5, 11), "login", None)
    _with_ids([login_10, login_11], ["e1", None]).to_parquet(first)
    validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0, events_source=first)
    resent = [
        ((1, utc(2026, 1, 5, 10, 0, 5), "login", None), "e1"),  # same id, another time: the id decides
        (login_11, None),  # no id: the content decides
        (login_11, "e9"),  # same content as a row without id, but an id of its own
        ((2, utc(2026, 1, 7), "login", None), "e2"),
    ]
    _with_ids([row for row, _ in resent], [event_id for _, event_id in resent]).to_parquet(second)

    report = validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0, events_source=second)
    assert report.events.by_reason["duplicate_event"] == 2
    assert _reconciles(report)
    quarantined = pd.read_parquet(settings.paths.quarantine / "events").sort_values("source_row")
    assert quarantined["source_row"].tolist() == [0, 1]
    assert quarantined["event_id"].tolist() == ["e1", None]
    published = pd.read_parquet(settings.paths.events / "date=2026-01-05" / "batch=b.parquet")
    assert published["event_id"].tolist() == ["e9"]
    assert pd.read_parquet(settings.paths.events / "date=2026-01-05" / "batch=a.parquet")["event_id"].tolist() == [
        "e1",
        None,
    ]


def test_duplicate_event_ids_within_a_run_are_quarantined(settings: Settings) -> None:
    rows = [
        ((1, utc(2026, 1, 5, 10), "login", None), "e1"),
        ((1, utc(2026, 1, 6, 10), "login", None), "e1"),  # another day, same id
        ((1, utc(2026, 1, 5, 10), "login", None), "e2"),  # same content as e1, another id: not a duplicate
        ((1, utc(2026, 1, 5, 11), "login", None), None),
        ((1, utc(2026, 1, 5, 11), "login", None), None),  # no id: content duplicate
        ((2, utc(2026, 1, 7), "video_watch", -1.0), "e3"),  # quarantined for its value ...
        ((2, utc(2026, 1, 7), "video_watch", 5.0), "e3"),  # ... so its corrected resend is the first e3
        ((1, utc(2026, 1, 9), "login", None), "e5"),
        ((1, utc(2026, 1, 9, 0, 0, 1), "login", None), "e5"),
    ]
    write_raw(settings.paths, USERS, _with_ids([r for r, _ in rows], [i for _, i in rows]))
    report = validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0)
    assert report.events.by_reason == {str(reason): 0 for reason in EventReason} | {
        "invalid_value": 1,
        "duplicate_event": 3,
    }
    assert _reconciles(report)
    quarantined = pd.read_parquet(settings.paths.quarantine / "events").sort_values("source_row")
    assert quarantined["source_row"].tolist() == [1, 4, 5, 8]
    published = pd.read_parquet(settings.paths.events).sort_values(["event_timestamp", "event_id"])
    assert published["event_id"].tolist() == ["e1", "e2", None, "e3", "e5"]
    # 2026-01-06 held only a duplicate: no date directory for it.
    assert sorted(p.name for p in settings.paths.events.iterdir()) == [
        "date=2026-01-05",
        "date=2026-01-07",
        "date=2026-01-09",
    ]


def test_integer_event_ids_are_kept_as_strings(settings: Settings) -> None:
    rows = [(1, utc(2026, 1, 5, 10), "login", None), (1, utc(2026, 1, 5, 11), "login", None)]
    write_raw(settings.paths, USERS, make_events(rows).assign(event_id=np.array([7, 7], dtype="int64")))
    report = validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0)
    assert report.events.by_reason["duplicate_event"] == 1
    published = pq.read_table(settings.paths.events / "date=2026-01-05" / "batch=events.parquet")
    assert published["event_id"].to_pylist() == ["7"]


# --- empty input -------------------------------------------------------------------------------------------


def _published_once(settings: Settings) -> dict[str, tuple[bytes, int]]:
    write_raw(settings.paths, USERS, make_events(DAY_5 + DAY_6))
    validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    assert _validated_rows(settings.paths) == len(DAY_5) + len(DAY_6)
    return _state(settings.paths.root)


def test_an_empty_events_file_publishes_nothing_and_says_so(settings: Settings, tmp_path: Path) -> None:
    before = _published_once(settings)
    empty = tmp_path / "empty_drop.parquet"
    make_events(DAY_5).iloc[:0].to_parquet(empty)

    with pytest.raises(EmptyInput) as raised:
        validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0, events_source=empty)
    message = str(raised.value)
    assert str(empty) in message
    assert "nothing was published" in message
    assert "previously validated data is unchanged" in message
    assert _state(settings.paths.root) == before

    result = CliRunner().invoke(app, ["data", "validate", "--now", "2026-03-01", "--events", str(empty)])
    assert result.exit_code == 1
    assert "0 rows" in result.output and "nothing was published" in result.output
    assert _state(settings.paths.root) == before


def test_an_empty_users_file_publishes_nothing_and_says_so(settings: Settings, tmp_path: Path) -> None:
    before = _published_once(settings)
    empty = tmp_path / "no_users.parquet"
    USERS.iloc[:0].to_parquet(empty)

    with pytest.raises(EmptyInput, match="no_users.parquet.*nothing was published"):
        validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0, users_source=empty)
    assert _state(settings.paths.root) == before
    result = CliRunner().invoke(app, ["data", "validate", "--now", "2026-03-01", "--users", str(empty)])
    assert result.exit_code == 1
    assert "nothing was published" in result.output
    assert _state(settings.paths.root) == before


def test_an_empty_drop_among_others_publishes_nothing(settings: Settings) -> None:
    paths = _two_drops(settings)
    validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    (paths.raw_events / "date=2026-01-06" / "part-0.parquet").unlink()
    _drop(paths.raw_events, "2026-01-06", make_events(DAY_6).iloc[:0])
    before = _state(paths.root)
    with pytest.raises(EmptyInput, match="2026-01-06"):
        validate(paths, catalog=ELEARNING, now=NOW, max_quarantine_share=0.0)
    assert _state(paths.root) == before


# --- the newer reasons -------------------------------------------------------------------------------------


def _arrivals(rows: list[tuple]) -> pd.DataFrame:
    """Events from ``(user_id, event_timestamp, event_type, value, ingested_at)`` tuples."""
    frame = make_events([row[:4] for row in rows])
    frame["ingested_at"] = pd.Series([row[4] for row in rows]).astype("datetime64[us, UTC]")
    return frame


def test_ingestion_closure_and_lateness_reasons(settings: Settings) -> None:
    users = make_users(3, closed_at=[None, None, utc(2026, 1, 10)])
    rows = [
        (1, utc(2026, 1, 5, 10), "login", None, utc(2026, 1, 5, 10, 1)),
        (1, utc(2026, 1, 5, 11), "login", None, NOW + pd.Timedelta(microseconds=1)),  # future_ingestion
        (1, utc(2026, 2, 28, 23), "login", None, utc(2026, 3, 2)),  # future_ingestion
        (2, utc(2026, 3, 2), "login", None, utc(2026, 3, 3)),  # future_timestamp wins
        (1, utc(2026, 1, 5, 12), "login", None, utc(2026, 1, 12, 12)),  # exactly 7 days late: accepted
        (1, utc(2026, 1, 5, 13), "login", None, utc(2026, 1, 12, 13) + pd.Timedelta(microseconds=1)),  # too_late
        (2, utc(2026, 1, 2), "login", None, utc(2026, 1, 20)),  # too_late
        (99, utc(2026, 1, 2), "login", None, utc(2026, 1, 20)),  # too_late wins over unknown_user
        (99, utc(2026, 1, 2), "login", None, utc(2026, 1, 3)),  # unknown_user
        (3, utc(2026, 1, 10), "login", None, utc(2026, 1, 10, 0, 1)),  # at closure: accepted
        (3, utc(2026, 1, 10, 0, 0, 1), "login", None, utc(2026, 1, 10, 0, 1)),  # after_closure
        (3, utc(2026, 1, 20), "video_watch", 5.0, utc(2026, 1, 20, 1)),  # after_closure
        (3, utc(2026, 1, 20), "login", None, utc(2026, 2, 20)),  # too_late wins over after_closure
    ]
    write_raw(settings.paths, users, _arrivals(rows))
    report = validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0)
    assert report.events.by_reason == {str(reason): 0 for reason in EventReason} | {
        "future_timestamp": 1,
        "future_ingestion": 2,
        "too_late": 4,
        "unknown_user": 1,
        "after_closure": 2,
    }
    assert (report.events.rows_in, report.events.rows_accepted) == (13, 3)
    quarantined = pd.read_parquet(settings.paths.quarantine / "events").sort_values("source_row")
    assert quarantined["reason"].tolist()[:3] == ["future_ingestion", "future_ingestion", "future_timestamp"]


def test_late_data_days_sets_the_lateness_limit(settings: Settings) -> None:
    rows = [(1, utc(2026, 1, 5), "login", None, utc(2026, 1, 7)), (1, utc(2026, 1, 6), "login", None, utc(2026, 1, 7))]
    write_raw(settings.paths, USERS, _arrivals(rows))
    report = validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0, late_data_days=1)
    assert report.events.by_reason["too_late"] == 1
    assert report.events.rows_accepted == 1


def test_future_signups_and_closures_before_signup_are_quarantined(settings: Settings) -> None:
    users = pd.DataFrame(
        {
            "user_id": ["1", "2", "3", "4", "5", "x", "1", "6"],
            "signup_at": ["2026-01-01", "2026-03-01T00:00:00.000001Z", "2026-01-05", "2026-01-05", "2026-04-01"]
            + ["2026-04-01", "2026-04-01", "2026-04-01"],
            "closed_at": [None, None, "2026-01-04T23:59:59Z", "2026-01-05", "2026-01-01", None, None, "never"],
        }
    )
    write_raw(settings.paths, users, make_events([(1, utc(2026, 1, 2), "login", None)]))
    report = validate(settings.paths, catalog=ELEARNING, now=NOW, max_quarantine_share=1.0)
    assert report.users.by_reason == {
        "invalid_user_id": 1,
        "unparseable_signup": 0,
        "unparseable_closed_at": 1,
        "future_signup": 3,  # user 5 is also closed before signup: the earlier reason wins
        "closed_before_signup": 1,
        "duplicate_user_id": 0,  # the second user 1 signs up in the future
    }
    assert pd.read_parquet(settings.paths.users)["user_id"].tolist() == [1, 4]
    assert _reconciles(report)


# --- users: upsert and history -----------------------------------------------------------------------------

HISTORY_COLUMNS = [
    ("user_id", pa.int64()),
    ("valid_from", TS),
    ("created", TS),
    ("plan", pa.string()),
    ("country", pa.string()),
    ("acquisition_channel", pa.string()),
    ("account_status", pa.string()),
]


def _validate_users(settings: Settings, users: pd.DataFrame, batch: str, tmp_path: Path) -> ValidationReport:
    source = tmp_path / f"users-{batch}.parquet"
    users.to_parquet(source, index=False)
    events = tmp_path / f"events-{batch}.parquet"
    make_events([(int(users["user_id"].iloc[0]), utc(2026, 1, 11), "login", None)]).to_parquet(events)
    return validate(
        settings.paths,
        catalog=ELEARNING,
        now=NOW,
        max_quarantine_share=1.0,
        users_source=source,
        events_source=events,
        batch=batch,
    )


def test_users_are_upserted_and_users_absent_from_a_run_are_kept(settings: Settings, tmp_path: Path) -> None:
    _validate_users(settings, make_users(3), "2026-01-05", tmp_path)
    changed = pd.concat([make_users(1, first_id=2, plan="pro"), make_users(1, first_id=4, plan="pro")])
    bad_row = pd.DataFrame({"user_id": ["3"], "signup_at": ["not a date"]})
    second = pd.concat([changed.astype({"user_id": str, "signup_at": str}), bad_row], ignore_index=True)
    report = _validate_users(settings, second, "2026-01-06", tmp_path)
    assert report.users.by_reason["unparseable_signup"] == 1
    users = pd.read_parquet(settings.paths.users)
    assert users["user_id"].tolist() == [1, 2, 3, 4]
    assert users["plan"].tolist() == ["free", "pro", "free", "pro"]
    assert [(f.name, f.type) for f in pq.read_schema(settings.paths.users)] == [
        ("user_id", pa.int64()),
        ("signup_at", TS),
        ("country", pa.string()),
        ("plan", pa.string()),
        ("acquisition_channel", pa.string()),
        ("closed_at", TS),
    ]

    # Events of a user absent from this run's input are judged against the kept row.
    events = tmp_path / "late.parquet"
    make_events([(1, utc(2026, 1, 12), "login", None), (3, utc(2025, 12, 1), "login", None)]).to_parquet(events)
    only_four = tmp_path / "only_four.parquet"
    make_users(1, first_id=4).to_parquet(only_four)
    report = validate(
        settings.paths,
        catalog=ELEARNING,
        now=NOW,
        max_quarantine_share=1.0,
        users_source=only_four,
        events_source=events,
    )
    assert (report.events.rows_accepted, report.events.by_reason["before_signup"]) == (1, 1)
    assert pd.read_parquet(settings.paths.users)["plan"].tolist() == ["free", "pro", "free", "free"]


def _history(settings: Settings, batch: str) -> list[tuple]:
    frame = pd.read_parquet(settings.paths.user_history / f"batch={batch}.parquet")
    return list(frame.itertuples(index=False, name=None))


def test_user_history_records_signups_changes_closures_and_reopenings(settings: Settings, tmp_path: Path) -> None:
    s, closed_3, closed_5 = utc(2026, 1, 1), utc(2026, 1, 3), utc(2026, 1, 4)
    first = make_users(7, closed_at=[None, closed_3, None, None, closed_5, None, None])
    _validate_users(settings, first, "2026-01-05", tmp_path)
    attrs = ("free", "DE", "organic")
    assert _history(settings, "2026-01-05") == [
        (1, s, s, *attrs, "open"),
        (2, s, s, *attrs, "open"),
        (2, closed_3, closed_3, *attrs, "closed"),
        (3, s, s, *attrs, "open"),
        (4, s, s, *attrs, "open"),
        (5, s, s, *attrs, "open"),
        (5, closed_5, closed_5, *attrs, "closed"),
        (6, s, s, *attrs, "open"),
        (7, s, s, *attrs, "open"),
    ]
    table = pq.read_table(settings.paths.user_history / "batch=2026-01-05.parquet")
    assert [(f.name, f.type) for f in table.schema] == HISTORY_COLUMNS

    closed_3b, signup_8 = utc(2026, 1, 20), utc(2026, 1, 10)
    second = first[first["user_id"] != 5].copy()  # user 5 absent: no row
    second.loc[second["user_id"] == 1, "plan"] = "pro"  # attribute change
    second.loc[second["user_id"] == 2, "closed_at"] = pd.NaT  # reopened
    second.loc[second["user_id"] == 3, "closed_at"] = closed_3b  # closed
    second.loc[second["user_id"] == 6, "country"] = None  # attribute change to null
    second.loc[second["user_id"] == 7, "acquisition_channel"] = "paid"  # both a change and a closure
    second.loc[second["user_id"] == 7, "closed_at"] = closed_3b
    eight = make_users(1, first_id=8, signup=signup_8)
    second = pd.concat([second, eight], ignore_index=True)
    _validate_users(settings, second, "2026-01-06", tmp_path)
    assert _history(settings, "2026-01-06") == [
        (1, NOW, NOW, "pro", "DE", "organic", "open"),
        (2, NOW, NOW, *attrs, "open"),
        (3, closed_3b, closed_3b, *attrs, "closed"),
        (6, NOW, NOW, "free", None, "organic", "open"),
        (7, closed_3b, closed_3b, "free", "DE", "paid", "closed"),
        (7, NOW, NOW, "free", "DE", "paid", "closed"),
        (8, signup_8, signup_8, *attrs, "open"),
    ]
    history = _files(settings.paths.user_history)

    # Re-running a batch compares with the batches before it only: the same rows, byte-identical.
    _validate_users(settings, second, "2026-01-06", tmp_path)
    assert _files(settings.paths.user_history) == history
    # Nothing changed since: an empty file with the schema, which still replaces an older file of that batch.
    _validate_users(settings, second, "2026-01-07", tmp_path)
    table = pq.read_table(settings.paths.user_history / "batch=2026-01-07.parquet")
    assert table.num_rows == 0
    assert [(f.name, f.type) for f in table.schema] == HISTORY_COLUMNS
