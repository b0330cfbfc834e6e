"""The feature views, derived from the event catalogue (``CHURN_CATALOG``, default the e-learning portal's): one
view per window of the catalogue's engagement measures, one of recency, tenure and trends, and the account view."""

from datetime import timedelta

from data_sources import user_account, user_activity_today_push, user_daily_snapshots
from entities import user
from feast import FeatureView, Field
from feast.types import Bool, Float64, Int64, String

from churn_common.catalog import feature_descriptions
from churn_common.names import ACCOUNT_STATUS, RECENCY, TENURE, TODAY_TABLE, trend_column
from churn_common.settings import Settings
from transformations.snapshot_schema import integer_stems
from transformations.today import today_fields, today_tags

OWNER = "ml-platform@example.com"
CATALOG = Settings().event_catalog()

# Snapshots are built daily; a value may be one build late before it is treated as missing. The same ttl
# governs the offline point-in-time join and (through churn_common.online) online reads.
SNAPSHOT_TTL = timedelta(days=2)
# A today row speaks for the UTC day of its newest event only; the ttl bounds how far back a point-in-time read looks.
TODAY_TTL = timedelta(days=1)

_INTEGERS = integer_stems(CATALOG)
_TEXTS = feature_descriptions(CATALOG)


def _activity_view(window_days: int) -> FeatureView:
    return FeatureView(
        name=f"user_activity_{window_days}d",
        entities=[user],
        ttl=SNAPSHOT_TTL,
        schema=[
            Field(
                name=f"{stem}_{window_days}d",
                dtype=Int64 if stem in _INTEGERS else Float64,
                description=_TEXTS[f"{stem}_{window_days}d"],
            )
            for stem in CATALOG.window_stems()
        ],
        source=user_daily_snapshots,
        online=True,
        description=f"Engagement over the {window_days} days ending at the snapshot time, per user.",
        owner=OWNER,
        tags={"grain": "user-day", "window": f"{window_days}d", "team": "retention"},
    )


activity_views = [_activity_view(window) for window in CATALOG.windows]
# `feast apply` finds definitions among a module's attributes: one per window, named as the view is.
globals().update({view.name: view for view in activity_views})

user_status_daily = FeatureView(
    name="user_status_daily",
    entities=[user],
    ttl=SNAPSHOT_TTL,
    schema=[
        Field(name=RECENCY, dtype=Int64, description=_TEXTS[RECENCY]),
        Field(name=TENURE, dtype=Int64, description=_TEXTS[TENURE]),
        *(
            Field(
                name=trend_column(stem),
                dtype=Int64 if stem in _INTEGERS else Float64,
                description=_TEXTS[trend_column(stem)],
            )
            for stem in CATALOG.trend_features
        ),
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
        *(Field(name=name, dtype=String, description=_TEXTS[name]) for name in CATALOG.account_attributes),
        Field(name=ACCOUNT_STATUS, dtype=String, description=_TEXTS[ACCOUNT_STATUS], tags={"role": "population"}),
    ],
    source=user_account,
    online=True,
    description="Account attributes and status, valid from each change on.",
    owner=OWNER,
    tags={"grain": "user-change", "window": "point", "team": "retention"},
)

_TODAY_TYPES = {"count": Int64, "value": Float64, "flag": Bool}

# Fed by a PushSource: online by the push path as the day's events arrive, offline by the nightly build from the same
# validated events with the same computation (transformations.today). Context for people and tools reading
# /predict, not a model input: no FeatureService of a model reads it, so the models' trained inputs are unchanged.
user_activity_today = FeatureView(
    name=TODAY_TABLE,
    entities=[user],
    ttl=TODAY_TTL,
    # Each field says what it measures of which event type: serving reads the view's definition to present it.
    schema=[
        Field(name=f.name, dtype=_TODAY_TYPES[f.kind], description=f.description, tags=today_tags(f))
        for f in today_fields(CATALOG)
    ],
    source=user_activity_today_push,
    online=False,
    description="Today's events per type and their value sums, as of the newest event (UTC day); pushed online.",
    owner=OWNER,
    tags={"grain": "user-day", "window": "today", "team": "retention", "feed": "push"},
)
