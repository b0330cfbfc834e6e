"""The online prediction API."""

import churn_common  # noqa: F401  (first: it pins prometheus_client's in-memory values before Feast is imported)
