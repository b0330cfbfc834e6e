import logging

from feast import FileSource
from feast.data_format import ParquetFormat

from churn_common.names import ACCOUNT_TABLE, CREATED_TIMESTAMP_FIELD, SNAPSHOT_TABLE, TIMESTAMP_FIELD, VALID_FROM_FIELD
from churn_common.settings import Settings


class _GlobPathWarnings(logging.Filter):
    """Feast checks a FileSource path as one file: our glob paths draw a "Could not validate FileSource path"
    warning on every plain `feast` command, files present or not. `churn features apply` skips that check and says
    plainly when a source has no files yet (churn_common.store); here the plain CLI stays quiet about globs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg.startswith("Could not validate FileSource path") and "*" in str(record.args[0]))


logging.getLogger("feast.infra.offline_stores.file_source").addFilter(_GlobPathWarnings())

# DuckDB resolves a relative FileSource path against the *working directory*, not the repo, so the registered
# path is always absolute: Settings().paths follows $CHURN_DATA_DIR, default <project>/data.
_features = Settings().paths.features

user_daily_snapshots = FileSource(
    name=SNAPSHOT_TABLE,
    path=str(_features / SNAPSHOT_TABLE / "*" / "*.parquet"),
    file_format=ParquetFormat(),
    timestamp_field=TIMESTAMP_FIELD,
    # A day's snapshot is versioned: a version per day of late arrivals, `created` at the end of that day.
    created_timestamp_column=CREATED_TIMESTAMP_FIELD,
    description="One row per customer, day and version: rolling engagement windows as of the end of that day.",
    owner="ml-platform@example.com",
)

user_account = FileSource(
    name=ACCOUNT_TABLE,
    path=str(_features / ACCOUNT_TABLE / "*.parquet"),
    file_format=ParquetFormat(),
    timestamp_field=VALID_FROM_FIELD,
    created_timestamp_column=CREATED_TIMESTAMP_FIELD,
    description="The account's attributes and status, one row per change, valid from `valid_from` on.",
    owner="ml-platform@example.com",
)
