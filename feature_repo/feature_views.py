from datetime import timedelta

from data_sources import user_account, user_daily_snapshots
from entities import user
from feast import FeatureView, Field
from feast.types import Float64, Int64, PrimitiveFeastType, String

OWNER = "ml-platform@example.com"

# Snapshots are built daily; a value may be one build late before it is treated as missing. The same ttl
# governs the offline point-in-time join and (through churn_common.online) online reads.
SNAPSHOT_TTL = timedelta(days=2)

# Per-window engagement measures, in the snapshot table's column order (`{stem}_{window}d`).
WINDOW_MEASURES: tuple[tuple[str, PrimitiveFeastType, str], ...] = (
    ("active_days", Int64, "days with at least one activity event"),
    ("sessions", Int64, "logins"),
    ("videos_watched", Int64, "video watch events"),
    ("watch_minutes", Float64, "minutes of video watched"),
    ("quiz_attempts", Int64, "quiz attempts"),
    ("quiz_score_mean", Float64, "mean quiz score; null without attempts"),
    ("enrolls", Int64, "course enrolments"),
    ("completions", Int64, "course completions"),
    ("payments", Int64, "successful payments"),
    ("amount_paid", Float64, "amount paid"),
    ("payment_failures", Int64, "failed payments"),
    ("support_tickets", Int64, "support tickets opened"),
    ("payment_fail_rate", Float64, "failed / all payment attempts; null without attempts"),
)


def _activity_view(window_days: int) -> FeatureView:
    return FeatureView(
        name=f"user_activity_{window_days}d",
        entities=[user],
        ttl=SNAPSHOT_TTL,
        schema=[
            Field(name=f"{stem}_{window_days}d", dtype=dtype, description=f"{text}, last {window_days} days")
            for stem, dtype, text in WINDOW_MEASURES
        ],
        source=user_daily_snapshots,
        online=True,
        description=f"Engagement over the {window_days} days ending at the snapshot time, per user.",
        owner=OWNER,
        tags={"grain": "user-day", "window": f"{window_days}d", "team": "retention"},
    )


user_activity_7d = _activity_view(7)
user_activity_14d = _activity_view(14)
user_activity_30d = _activity_view(30)
user_activity_90d = _activity_view(90)

user_status_daily = FeatureView(
    name="user_status_daily",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name="days_since_last_activity", dtype=Int64, description="days since the last activity event"),
        Field(name="tenure_days", dtype=Int64, description="days since signup"),
        Field(name="active_days_trend_7d", dtype=Int64, description="active days: last 7 minus the 7 before"),
        Field(name="watch_minutes_trend_7d", dtype=Float64, description="watch minutes: last 7 minus 7 before"),
    ],
    source=user_daily_snapshots,
    online=True,
    description="Recency, tenure and short-term trends at the snapshot time.",
    owner=OWNER,
    tags={"grain": "user-day", "window": "point", "team": "retention"},
)

# No ttl: an attribute holds until the account changes. Its history keeps past values where they were, so a change
# is never rewritten into earlier training rows.
user_account = FeatureView(
    name="user_account",
    entities=[user],
    schema=[
        Field(name="plan", dtype=String, description="free or paid"),
        Field(name="country", dtype=String, description="country of the account"),
        Field(name="acquisition_channel", dtype=String, description="how the user was acquired"),
        Field(
            name="account_status",
            dtype=String,
            description="open or closed; decides who is scored (churn_common.population), not a model input",
            tags={"role": "population"},
        ),
    ],
    source=user_account,
    online=True,
    description="Account attributes and status, valid from each change on.",
    owner=OWNER,
    tags={"grain": "user-change", "window": "point", "team": "retention"},
)
