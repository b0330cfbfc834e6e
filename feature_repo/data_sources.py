from feast import FileSource
from feast.data_format import ParquetFormat

from churn_common.names import CREATED_TIMESTAMP_FIELD, SNAPSHOT_TABLE, TIMESTAMP_FIELD
from churn_common.settings import Settings

# DuckDB resolves a relative FileSource path against the *working directory*, not the repo, so the registered
# path is always absolute: Settings().paths follows $CHURN_DATA_DIR, default <project>/data.
user_daily_snapshots = FileSource(
    name=SNAPSHOT_TABLE,
    path=str(Settings().paths.snapshots / "*" / "*.parquet"),
    file_format=ParquetFormat(),
    timestamp_field=TIMESTAMP_FIELD,
    created_timestamp_column=CREATED_TIMESTAMP_FIELD,
    description="One row per customer per day: rolling engagement windows as of the end of that day.",
    owner="ml-platform@example.com",
)
