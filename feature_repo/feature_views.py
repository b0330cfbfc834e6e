"""The feature views, derived from the event catalogue (``CHURN_CATALOG``, default the e-learning portal's): one
view per window of the catalogue's engagement measures, one of recency, tenure and trends, and the account view."""

from datetime import timedelta

from data_sources import user_account, user_daily_snapshots
from entities import user
from feast import FeatureView, Field
from feast.types import Float64, Int64, String

from churn_common.catalog import feature_descriptions
from churn_common.names import ACCOUNT_STATUS, RECENCY, TENURE, trend_column
from churn_common.settings import Settings
from transformations.snapshot_schema import integer_stems

OWNER = "ml-platform@example.com"
CATALOG = Settings().event_catalog()

# Snapshots are built daily; a value may be one build late before it is treated as missing. The same ttl
# governs the offline point-in-time join and (through churn_common.online) online reads.
SNAPSHOT_TTL = timedelta(days=2)

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
