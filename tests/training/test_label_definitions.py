"""churn_common.labels on arbitrary (user, t) rows, as monitoring labels the rows a model scored: the same definitions
and boundaries the training grid gets (tests/training/test_labels.py)."""

from datetime import timedelta

import pandas as pd
import pytest

from churn_common.errors import ConfigurationError, DataError
from churn_common.labels import LabelSpec, label_entities, label_sql
from churn_common.settings import Settings
from products.social import CATALOG as SOCIAL
from tests.factories import make_events, make_users, utc, write_validated

T = utc(2026, 3, 1, 12)
DAY, MICROSECOND = timedelta(days=1), timedelta(microseconds=1)
OPEN_ACTIVE, OPEN_QUIET, CLOSES_AT_T, CLOSES_JUST_AFTER, SIGNS_UP_AT_T, CLOSES_AT_HORIZON, NOBODY = 0, 1, 2, 3, 4, 5, 77


@pytest.fixture
def social(settings: Settings) -> Settings:
    users = make_users(6, signup=utc(2026, 1, 1), first_id=0)
    users.loc[users["user_id"] == SIGNS_UP_AT_T, "signup_at"] = T
    closing = {CLOSES_AT_T: T, CLOSES_JUST_AFTER: T + MICROSECOND, CLOSES_AT_HORIZON: T + 30 * DAY}
    users["closed_at"] = users["user_id"].map(closing).astype("datetime64[us, UTC]")
    events = make_events(
        [
            (OPEN_ACTIVE, T + 30 * DAY, "post", None),  # exactly at t + horizon: inside
            (OPEN_QUIET, T - DAY, "like", None),
            (OPEN_QUIET, T + 10 * DAY, "renewal", 9.99),  # a renewal is not activity
            (CLOSES_AT_HORIZON, T + 29 * DAY, "app_open", None),
        ]
    )
    write_validated(settings.paths, users, events)
    return settings.model_copy(update={"catalog": "products.social:CATALOG"})


def entities(*user_ids: int) -> pd.DataFrame:
    frame = pd.DataFrame({"user_id": list(user_ids), "event_timestamp": T})
    return frame.astype({"user_id": "int64", "event_timestamp": "datetime64[us, UTC]"})


def labelled(settings: Settings, kind: str) -> dict[int, int]:
    spec = LabelSpec.of(settings.model_copy(update={"label": kind}))
    frame = label_entities(entities(*range(6), NOBODY), spec)
    assert frame.columns.tolist() == ["user_id", "event_timestamp", "label"]
    assert set(frame["event_timestamp"]) == {T}
    return dict(zip(frame["user_id"], frame["label"], strict=True))


def test_closure_labels_of_arbitrary_rows(social: Settings) -> None:
    # Closed at t, signed up at t, unknown: not customers at t, so not labelled.
    assert labelled(social, "closure") == {OPEN_ACTIVE: 0, OPEN_QUIET: 0, CLOSES_JUST_AFTER: 1, CLOSES_AT_HORIZON: 1}


def test_inactivity_labels_of_arbitrary_rows(social: Settings) -> None:
    assert labelled(social, "inactivity") == {OPEN_ACTIVE: 0, OPEN_QUIET: 1, CLOSES_JUST_AFTER: 1, CLOSES_AT_HORIZON: 0}


def test_the_spec_follows_the_settings_over_the_catalogue(social: Settings) -> None:
    spec = LabelSpec.of(social)
    assert (spec.kind, spec.horizon_days) == ("closure", 30)
    assert spec.activity_types == ("app_open", "post", "comment", "like", "message", "story_view")
    assert LabelSpec.of(social, SOCIAL).users == str(social.paths.users)
    inactivity = LabelSpec.of(social.model_copy(update={"label": "inactivity"}))
    assert inactivity.kind == "inactivity"
    # Only the inactivity label reads events.
    assert "events" not in spec.params() and inactivity.params()["activity_types"] == list(spec.activity_types)


def test_an_unknown_label_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown label 'tenure'"):
        label_sql("tenure", "SELECT 1 AS user_id, now() AS t")


def test_missing_validated_users_are_a_data_error(settings: Settings) -> None:
    with pytest.raises(DataError, match="cannot read the validated users or events for the closure label"):
        label_entities(entities(1), LabelSpec.of(settings.model_copy(update={"label": "closure"})))


def test_settings_refuse_an_unknown_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURN_LABEL", "tenure")
    with pytest.raises(ValueError, match="inactivity"):
        Settings()
    monkeypatch.setenv("CHURN_LABEL", "closure")
    assert Settings().label == "closure"
