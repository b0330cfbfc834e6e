"""Names that training, serving and the feature repo must agree on. Changing one is a contract change."""

ENTITY_NAME = "user"
JOIN_KEY = "user_id"

# The FeatureService, the only contract between training and serving, is named by the event catalogue
# (churn_common.catalog.EventCatalog.feature_service).

SNAPSHOT_TABLE = "user_daily_snapshots"
ACCOUNT_TABLE = "user_account"
# Today's activity per user: the push path writes it online as events arrive, the nightly build writes the same rows
# offline (transformations.today). Not an input of any model.
TODAY_TABLE = "user_activity_today"
TODAY_PUSH_SOURCE = "user_activity_today_push"
TIMESTAMP_FIELD = "event_timestamp"
CREATED_TIMESTAMP_FIELD = "created"
VALID_FROM_FIELD = "valid_from"
ACCOUNT_STATUS = "account_status"

REGISTERED_MODEL = "churn"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
# Tag on a registered model version naming the FeatureService it was trained on; serving reads it back.
FEATURE_SERVICE_TAG = "feature_service"

# Snapshot features that do not come from a window of the catalogue's events.
RECENCY = "days_since_last_activity"
TENURE = "tenure_days"


def trend_column(stem: str) -> str:
    """The last 7 days of a stem minus the 7 days before."""
    return f"{stem}_trend_7d"
