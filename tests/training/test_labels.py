"""Label timing, the candidates (customers at t) and horizon censoring on hand-built events, under both label
definitions. Who of the candidates is in the population is decided after the point-in-time join
(tests/training/test_training_set.py).

Grid used throughout: the first event is 2026-01-01 00:00, the active window 30 days, so observation times
start at 2026-01-31 and step by 7 days. The last event is 2026-04-01 12:00; with a 30-day horizon the last
observation time whose label is known is 2026-02-28 (2026-03-07 + 30 d would end after the data).
"""

from datetime import timedelta

import pandas as pd
import pytest

from churn_common.errors import DataError, TrainingError
from churn_common.settings import Settings
from tests.factories import make_events, make_users, utc
from training.labels import build_labels

T = utc(2026, 2, 7)
H = timedelta(days=30)
DAY, SECOND, MICROSECOND = timedelta(days=1), timedelta(seconds=1), timedelta(microseconds=1)
EXPECTED_GRID = [utc(2026, 1, 31) + timedelta(days=7 * k) for k in range(5)]
ANCHOR = 99


def write_inputs(settings: Settings, events: pd.DataFrame, users: pd.DataFrame) -> None:
    for day, part in events.groupby(events["event_timestamp"].dt.strftime("%Y-%m-%d")):
        out = settings.paths.events / f"date={day}"
        out.mkdir(parents=True, exist_ok=True)
        part.to_parquet(out / "part-0.parquet", index=False)
    settings.paths.users.parent.mkdir(parents=True, exist_ok=True)
    users.to_parquet(settings.paths.users, index=False)


def scenario_events() -> list[tuple]:
    return [
        (ANCHOR, utc(2026, 1, 1), "login", None),
        (ANCHOR, utc(2026, 2, 27), "login", None),
        (ANCHOR, utc(2026, 3, 20), "login", None),
        (ANCHOR, utc(2026, 4, 1, 12), "login", None),
        # 1: its only later event is exactly at t, which is not "after t".
        (1, T - DAY, "login", None),
        (1, T, "login", None),
        # 2: activity exactly at t + horizon is inside (t, t + horizon].
        (2, T - DAY, "login", None),
        (2, T + H, "video_watch", 10.0),
        # 3: one second past the horizon is outside it.
        (3, T - DAY, "login", None),
        (3, T + H + SECOND, "login", None),
        # 4: signs up after T (see users), active from then on.
        (4, T + DAY, "login", None),
        # 5: closed one second before T (see users).
        (5, T - 2 * DAY, "login", None),
        # 6: last activity exactly 30 days before T.
        (6, T - timedelta(days=30), "quiz_attempt", 80.0),
        # 7: last activity one second earlier than that: inactive for the trailing window.
        (7, T - timedelta(days=30) - SECOND, "login", None),
        # 8: only non-activity events (a renewal is not engagement).
        (8, T - DAY, "payment_success", 19.0),
        # 9: active before T; afterwards only a payment and a support ticket, which are not activity.
        (9, T - DAY, "login", None),
        (9, T + 5 * DAY, "payment_success", 19.0),
        (9, T + 6 * DAY, "support_ticket", None),
        # 10: signs up exactly at T (see users).
        (10, T + DAY, "login", None),
        # 11: active until the account closes exactly at T (see users).
        (11, T - DAY, "login", None),
        # 12: active until the account closes one microsecond after T.
        (12, T - DAY, "login", None),
        # 13: the account closes exactly at T + horizon; 14: one microsecond later. Both active up to then.
        *[(user, T + k * 7 * DAY, "login", None) for user in (13, 14) for k in range(-1, 5)],
    ]


def scenario_users() -> pd.DataFrame:
    users = make_users(10, signup=utc(2026, 1, 1))
    users.loc[users["user_id"] == 4, "signup_at"] = T + timedelta(hours=1)
    users.loc[users["user_id"] == 5, "closed_at"] = T - SECOND
    users.loc[users["user_id"] == 10, "signup_at"] = T
    closes = pd.concat(
        [
            make_users(2, signup=utc(2026, 1, 1), first_id=11, closed_at=[T, T + MICROSECOND]),
            make_users(2, signup=utc(2026, 1, 1), first_id=13, closed_at=[T + H, T + H + MICROSECOND]),
        ]
    )
    anchor = make_users(1, signup=utc(2025, 12, 1), first_id=ANCHOR)
    return pd.concat([users, closes, anchor], ignore_index=True)


def labels_of(settings: Settings) -> pd.Series:
    write_inputs(settings, make_events(scenario_events()), scenario_users())
    return build_labels(settings).set_index(["user_id", "event_timestamp"])["label"]


@pytest.fixture
def labels(settings: Settings) -> pd.Series:
    """Inactivity labels: the e-learning catalogue's."""
    return labels_of(settings)


@pytest.fixture
def closure_labels(settings: Settings) -> pd.Series:
    return labels_of(settings.model_copy(update={"label": "closure"}))


def label_at(labels: pd.Series, user_id: int, t: pd.Timestamp) -> int | None:
    return labels.get((user_id, t))


def test_event_exactly_at_t_is_not_future_activity(labels: pd.Series) -> None:
    assert label_at(labels, 1, T) == 1


def test_event_exactly_at_horizon_end_counts(labels: pd.Series) -> None:
    assert label_at(labels, 2, T) == 0


def test_event_one_second_past_horizon_does_not_count(labels: pd.Series) -> None:
    assert label_at(labels, 3, T) == 1


def test_non_activity_events_do_not_prevent_churn(labels: pd.Series) -> None:
    assert label_at(labels, 9, T) == 1


def test_user_not_signed_up_before_t_is_excluded_then_included(labels: pd.Series) -> None:
    assert label_at(labels, 4, T) is None
    assert label_at(labels, 4, T + timedelta(days=7)) == 1


def test_signup_exactly_at_t_is_not_a_candidate(labels: pd.Series) -> None:
    assert label_at(labels, 10, T) is None
    assert label_at(labels, 10, T + timedelta(days=7)) == 1


def test_inactivity_in_the_trailing_window_is_left_to_the_population_rule(labels: pd.Series) -> None:
    # Inactive for the trailing window, never active: still candidates at T, with the inactivity label; the
    # population rule removes them after the point-in-time join.
    assert label_at(labels, 7, T) == 1
    assert label_at(labels, 6, T) == 1
    assert label_at(labels, 8, T) == 1


@pytest.mark.parametrize("kind", ["inactivity", "closure"])
def test_an_account_closed_exactly_at_t_is_no_churner_at_t(settings: Settings, kind: str) -> None:
    labels = labels_of(settings.model_copy(update={"label": kind}))
    # A week earlier both are customers, active the day before T: churning by closure, not by inactivity.
    week_before = {"inactivity": 0, "closure": 1}[kind]
    # Closed at T: not a customer at T, so no row at all, under either label.
    assert label_at(labels, 11, T) is None
    assert label_at(labels, 11, T - 7 * DAY) == week_before
    # Closed one microsecond after T: a customer at T, churning within the horizon under either label.
    assert label_at(labels, 12, T) == 1
    assert label_at(labels, 12, T + 7 * DAY) is None
    # Closed one second before T: gone.
    assert label_at(labels, 5, T) is None
    assert label_at(labels, 5, T - 7 * DAY) == week_before


def test_every_customer_at_t_is_a_candidate_at_every_grid_time(labels: pd.Series, closure_labels) -> None:
    users = scenario_users()
    for t in EXPECTED_GRID:
        customers = (users["signup_at"] < t) & (users["closed_at"].isna() | (users["closed_at"] > t))
        expected = sorted(users.loc[customers, "user_id"])
        assert sorted(labels.xs(t, level="event_timestamp").index) == expected
        assert sorted(closure_labels.xs(t, level="event_timestamp").index) == expected


def test_closure_label_counts_a_closure_inside_the_horizon_only(closure_labels: pd.Series) -> None:
    assert label_at(closure_labels, 13, T) == 1  # closes exactly at T + horizon: inside (T, T + horizon]
    assert label_at(closure_labels, 14, T) == 0  # one microsecond later: outside
    assert label_at(closure_labels, 14, T + 7 * DAY) == 1


def test_closure_label_ignores_activity(labels: pd.Series, closure_labels: pd.Series) -> None:
    # Inactive after T but the account stays open: an inactivity churner, not a closure one.
    for user in (1, 3, 6, 7, 8, 9):
        assert (label_at(labels, user, T), label_at(closure_labels, user, T)) == (1, 0)
    # Active in the horizon, yet closing within it: the other way round.
    assert (label_at(labels, 13, T), label_at(closure_labels, 13, T)) == (0, 1)


def test_the_label_is_the_catalogues_unless_the_settings_choose(settings: Settings) -> None:
    social = settings.model_copy(update={"catalog": "products.social:CATALOG"})
    # User 1 opens the app every day until the account closes on 2026-03-08; user 2 stays, and ends the data.
    events = make_events(
        [(1, utc(2026, 1, 1) + k * DAY, "app_open", None) for k in range(66)]
        + [(2, utc(2026, 1, 1) + k * DAY, "app_open", None) for k in range(70)]
    )
    users = make_users(2, signup=utc(2025, 12, 1), closed_at=[utc(2026, 3, 8), None])
    write_inputs(settings, events, users)

    def by_row(frame: pd.DataFrame) -> dict:
        return frame.set_index(["user_id", "event_timestamp"])["label"].to_dict()

    jan31, feb7 = utc(2026, 1, 31), utc(2026, 2, 7)
    # The catalogue's closure label: the closure is in (Feb 7, Mar 9], not in (Jan 31, Mar 2].
    assert by_row(build_labels(social)) == {(1, jan31): 0, (2, jan31): 0, (1, feb7): 1, (2, feb7): 0}
    # Inactivity marks nobody: both users are active up to the end.
    inactivity = social.model_copy(update={"label": "inactivity"})
    assert by_row(build_labels(inactivity)) == {(1, jan31): 0, (2, jan31): 0, (1, feb7): 0, (2, feb7): 0}
    assert by_row(build_labels(social.model_copy(update={"label_horizon_days": 37}))) == {(1, jan31): 1, (2, jan31): 0}


def test_grid_is_weekly_at_midnight_and_censored_at_the_horizon(labels: pd.Series) -> None:
    times = sorted(labels.index.get_level_values("event_timestamp").unique())
    assert times == EXPECTED_GRID
    # The anchor is active before and after 2026-03-07 too, yet that time is censored: its horizon ends
    # 2026-04-06, after the last event.
    assert label_at(labels, ANCHOR, EXPECTED_GRID[-1]) == 0
    assert label_at(labels, ANCHOR, EXPECTED_GRID[-1] + timedelta(days=7)) is None


def test_output_types(settings: Settings) -> None:
    write_inputs(settings, make_events(scenario_events()), scenario_users())
    frame = build_labels(settings)
    assert list(frame.columns) == ["user_id", "event_timestamp", "label"]
    assert str(frame["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert frame["user_id"].dtype == "int64" and set(frame["label"]) <= {0, 1}


def test_too_short_a_span_is_a_training_error(settings: Settings) -> None:
    events = make_events([(1, utc(2026, 1, 1), "login", None), (1, utc(2026, 2, 15), "login", None)])
    write_inputs(settings, events, make_users(1))
    with pytest.raises(TrainingError, match="shorter than the active window"):
        build_labels(settings)


def test_missing_events_is_a_data_error(settings: Settings) -> None:
    with pytest.raises(DataError, match="no validated events"):
        build_labels(settings)
