"""The prediction log's shape, shared by batch scoring (monitoring.scoring) and the API (serving.prediction_log):
one row per scored user and instant, partitioned by the UTC day scored, ``predictions/date=D/source=<who>.parquet``.
Monitoring joins it with labels once they mature and compares its distribution with the training reference."""

from pathlib import Path

import pyarrow as pa

from churn_common.names import JOIN_KEY

TS = pa.timestamp("us", tz="UTC")
PREDICTION_LOG_SCHEMA = pa.schema(
    [
        ("scored_at", TS),
        (JOIN_KEY, pa.int64()),
        ("features_as_of", TS),
        ("churn_probability", pa.float64()),
        ("risk_band", pa.string()),
        ("reasons", pa.string()),  # JSON: the reasons as /predict answers them
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("feature_service", pa.string()),
        ("source", pa.string()),  # batch, or api
    ]
)


def log_file(root: Path, day: str, source: str) -> Path:
    """``root/date=<day>/source=<source>.parquet``: batch scoring writes ``batch``, each API process its own names."""
    return root / f"date={day}" / f"source={source}.parquet"
