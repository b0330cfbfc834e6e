from feast import FeatureService
from feature_views import (
    user_account,
    user_activity_7d,
    user_activity_14d,
    user_activity_30d,
    user_activity_90d,
    user_status_daily,
)

from churn_common.names import FEATURE_SERVICE

# Version 2 of the model contract (v1 read the account attributes from the daily snapshots, without history). A
# model records this name on its registered version and serving reads exactly these features back; a new feature
# set means a new service (churn_model_v3) beside this one.
churn_model_v2 = FeatureService(
    name=FEATURE_SERVICE,
    features=[
        user_activity_7d,
        user_activity_14d,
        user_activity_30d,
        user_activity_90d,
        user_status_daily,
        user_account,
    ],
    description="Features of the churn model, version 2, and the account status that decides who is scored.",
    owner="ml-platform@example.com",
    tags={"model": "churn", "version": "2"},
)
