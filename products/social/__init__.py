"""A second product, shaped unlike the e-learning portal: a subscription social app. Eight event types, user ids
from 0, no ``plan`` column, and behaviour that stays steady until the subscription is cancelled, which the accounts
export records as ``closed_at``: the ``closure`` label fits it, an inactivity label would mark almost nobody.
``CHURN_CATALOG=products.social:CATALOG``; ``generator`` writes its raw data."""

from churn_common.catalog import EventCatalog, EventType, Ratio

CATALOG = EventCatalog(
    event_types=(
        EventType("app_open", "opens", True, description="app opens"),
        EventType("post", "posts", True, description="posts written"),
        EventType("comment", "comments", True, description="comments written"),
        EventType("like", "likes", True, description="likes given"),
        EventType("message", "messages", True, description="messages sent"),
        EventType(
            "story_view",
            "story_views",
            True,
            "story_seconds",
            "sum",
            0.0,
            3_600.0,
            description="stories viewed",
            value_description="seconds of stories watched",
        ),
        # The subscription renews without the user doing anything: not engagement.
        EventType(
            "renewal",
            "renewals",
            False,
            "amount_renewed",
            "sum",
            0.0,
            100.0,
            description="subscription renewals",
            value_description="amount renewed",
        ),
        EventType("renewal_failed", "renewal_failures", False, description="failed renewals"),
    ),
    ratios=(
        Ratio(
            "renewal_fail_rate",
            "renewal_failed",
            ("renewal", "renewal_failed"),
            description="failed share of renewal attempts (null without attempts)",
        ),
    ),
    trend_features=("active_days", "story_seconds"),
    feature_service="social_churn_v1",
    account_attributes=("country", "acquisition_channel"),
    label="closure",
)
FEATURE_SERVICE = CATALOG.feature_service
