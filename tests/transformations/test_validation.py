"""The validation gate: every bad-row class found with its exact count, reconciliation, failures, BYO events."""

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from churn_common.errors import QuarantineThresholdExceeded, SchemaError
from churn_common.settings import DataPaths, Settings
from jobs.cli import app
from tests.factories import make_events, make_users, utc, write_raw
from transformations.catalog import EventCatalog, EventType
from transformations.synthetic import GeneratorConfig, generate, read_manifest
from transformations.validation import EventReason, UserReason, parse_ids, validate

START = date(2026, 1, 1)
DAYS = 120
PERIOD_END = pd.Timestamp(START + timedelta(days=DAYS), tz="UTC")
TS = pa.timestamp("us", tz="UTC")
NOW = utc(2026, 3, 1)

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
    report = validate(paths, now=PERIOD_END, max_quarantine_share=0.05)
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
        quarantined = pd.read_parquet(paths.quarantine / f"{name}.parquet")
        counts = quarantined["reason"].value_counts().to_dict()
        assert counts == {k: v for k, v in report[name]["by_reason"].items() if v}
    on_disk = json.loads((paths.reports / "validation.json").read_text())
    assert on_disk == report
    assert on_disk["passed"] is True


def test_validated_events_are_typed_one_sorted_file_per_date(dirty: tuple[DataPaths, dict]) -> None:
    paths, _ = dirty
    date_dirs = sorted(paths.events.iterdir())
    assert len(date_dirs) == DAYS
    for date_dir in date_dirs:
        assert [p.name for p in date_dir.iterdir()] == ["part-0.parquet"]
        table = pq.read_table(date_dir / "part-0.parquet")
        assert [(f.name, f.type) for f in table.schema] == [
            ("user_id", pa.int64()),
            ("event_timestamp", TS),
            ("event_type", pa.string()),
            ("value", pa.float64()),
            ("ingested_at", TS),
        ]
        frame = table.to_pandas()
        assert (frame["event_timestamp"].dt.strftime("date=%Y-%m-%d") == date_dir.name).all()
        assert frame.equals(frame.sort_values(["user_id", "event_timestamp"], ignore_index=True))
    assert not list(paths.validated.glob(".*"))


def test_quarantine_keeps_original_values_and_origin(dirty: tuple[DataPaths, dict]) -> None:
    paths, _ = dirty
    quarantined = pd.read_parquet(paths.quarantine / "events.parquet")
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
    ("2", "2025-12-31T23:59:59Z", "login", None, "before_signup"),
    ("1", "2026-01-05T10:30:00Z", "video_watch", 12.5, "duplicate_event"),
    ("1", "2026-01-05T10:30:00Z", "video_watch", 12.5, "duplicate_event"),
]


def _string_events(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame([row[:4] for row in rows], columns=["user_id", "event_timestamp", "event_type", "value"])
    frame["value"] = frame["value"].astype("float64")
    frame["ingested_at"] = pd.Series([utc(2026, 1, 9)] * len(frame)).astype("datetime64[us, UTC]")
    return frame


def test_each_bad_event_class_is_quarantined_with_its_reason(settings: Settings) -> None:
    write_raw(settings.paths, make_users(3), _string_events(CLEAN + BAD))
    report = validate(settings.paths, now=NOW, max_quarantine_share=1.0)
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

    quarantined = pd.read_parquet(settings.paths.quarantine / "events.parquet").sort_values("source_row")
    assert quarantined["source_row"].tolist() == list(range(len(CLEAN), len(CLEAN) + len(BAD)))
    assert quarantined["reason"].tolist() == [row[4] for row in BAD]
    assert quarantined["user_id"].tolist()[:3] == [None, "x1", "1"]
    assert quarantined["event_timestamp"].tolist()[2] == "garbage"
    assert set(quarantined["source_file"]) == {"part-00000.parquet"}


def test_accepted_events_are_parsed_to_utc_and_sorted(settings: Settings) -> None:
    write_raw(settings.paths, make_users(3), _string_events(list(reversed(CLEAN))))
    validate(settings.paths, now=NOW, max_quarantine_share=0.0)
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
        report = validate(paths, now=NOW, max_quarantine_share=1.0)
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
    report = validate(settings.paths, now=NOW, max_quarantine_share=1.0)
    assert report.users.by_reason == {
        "invalid_user_id": 2,
        "unparseable_signup": 1,
        "unparseable_closed_at": 1,
        "duplicate_user_id": 1,
    }
    accepted = pd.read_parquet(settings.paths.users)
    assert accepted["user_id"].tolist() == [1, 5]
    assert accepted["signup_at"].tolist() == [utc(2026, 1, 1), utc(2026, 1, 3)]
    assert accepted["closed_at"].tolist()[1] == utc(2026, 2, 1, 12)
    quarantined = pd.read_parquet(settings.paths.quarantine / "users.parquet")
    assert quarantined["source_row"].tolist() == [1, 2, 3, 4, 5]
    assert quarantined["closed_at"].tolist()[4] == "never"


def test_rerun_removes_dates_no_longer_produced(settings: Settings) -> None:
    two_days = [(1, utc(2026, 1, 2), "login", None), (1, utc(2026, 1, 3), "login", None)]
    write_raw(settings.paths, make_users(1), make_events(two_days))
    validate(settings.paths, now=NOW, max_quarantine_share=0.0)
    write_raw(settings.paths, make_users(1), make_events(two_days[:1]))
    validate(settings.paths, now=NOW, max_quarantine_share=0.0)
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
    validate(settings.paths, now=NOW, max_quarantine_share=0.0)
    published = (settings.paths.events / "date=2026-01-02" / "part-0.parquet").read_bytes()

    # One unknown user in ten rows: 10 % > the 5 % default.
    write_raw(settings.paths, make_users(1), make_events([*good, (7, utc(2026, 1, 3), "login", None)]))
    result = CliRunner().invoke(app, ["data", "validate", "--now", "2026-03-01T00:00:00Z"])
    assert result.exit_code == 1
    assert "quarantined share above 5.00%" in result.output
    assert "events 10.00%" in result.output
    assert (settings.paths.events / "date=2026-01-02" / "part-0.parquet").read_bytes() == published
    assert not (settings.paths.events / "date=2026-01-03").exists()
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
        validate(settings.paths, now=NOW, max_quarantine_share=1.0)


def test_threshold_error_is_typed(settings: Settings) -> None:
    write_raw(settings.paths, make_users(1), make_events([(2, utc(2026, 1, 2), "login", None)]))
    with pytest.raises(QuarantineThresholdExceeded, match="events 100.00%"):
        validate(settings.paths, now=NOW, max_quarantine_share=0.5)


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
    result = CliRunner().invoke(app, ["data", "validate", "--catalog", "tests.transformations.test_validation:NOW"])
    assert result.exit_code != 0
    assert "not an EventCatalog" in result.output
