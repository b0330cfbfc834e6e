from feast import FeatureService
from feature_views import CATALOG, activity_views, user_account, user_status_daily

# The model contract, named by the catalogue (e-learning: churn_model_v2; v1 read the account attributes from the
# daily snapshots). A model records this name on its registered version and serving reads exactly these features
# back. A catalogue whose features change must bump the version: `churn features apply` refuses to redefine a
# registered service.
model_service = FeatureService(
    name=CATALOG.feature_service,
    features=[*activity_views, user_status_daily, user_account],
    description="Features of the churn model and the account status that decides who is scored.",
    owner="ml-platform@example.com",
    tags={"model": "churn", "version": CATALOG.feature_service.rsplit("_v", 1)[1]},
)
