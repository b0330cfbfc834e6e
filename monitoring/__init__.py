"""The platform watching itself: batch scoring and the prediction log, drift, performance once labels mature and
before, and the daily report. Reads the feature store and the model registry; never imports training/ or serving/."""
