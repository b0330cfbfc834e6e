from feast import FeatureService
from feature_views import (
    user_activity_7d,
    user_activity_14d,
    user_activity_30d,
    user_activity_90d,
    user_status_daily,
)

from churn_common.names import FEATURE_SERVICE

# Version 1 of the model contract. A model records this name on its registered version and serving reads
# exactly these features back; a new feature set means a new service (churn_model_v2) beside this one.
churn_model_v1 = FeatureService(
    name=FEATURE_SERVICE,
    features=[user_activity_7d, user_activity_14d, user_activity_30d, user_activity_90d, user_status_daily],
    description="Features of the churn model, version 1.",
    owner="ml-platform@example.com",
    tags={"model": "churn", "version": "1"},
)
