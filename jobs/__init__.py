"""Entry points: the ``churn`` CLI and the jobs the CronJobs run. Composes stages; nothing imports it."""
