import logging

from feast import FileSource, PushSource
from feast.data_format import ParquetFormat

from churn_common.names import (
    ACCOUNT_TABLE,
    CREATED_TIMESTAMP_FIELD,
    SNAPSHOT_TABLE,
    TIMESTAMP_FIELD,
    TODAY_PUSH_SOURCE,
    TODAY_TABLE,
    VALID_FROM_FIELD,
)
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

# Today's activity: the nightly build writes each day's rows here (transformations.today.build_today_table) ...
user_activity_today_table = FileSource(
    name=TODAY_TABLE,
    path=str(_features / TODAY_TABLE / "*" / "*.parquet"),
    file_format=ParquetFormat(),
    timestamp_field=TIMESTAMP_FIELD,
    created_timestamp_column=CREATED_TIMESTAMP_FIELD,
    description="One row per customer and UTC day with events: counts and value sums of that day's events, as of "
    "its newest event.",
    owner="ml-platform@example.com",
)

# ... and the push path (POST /events, `churn push`) writes the same rows online as the day's events arrive.
user_activity_today_push = PushSource(
    name=TODAY_PUSH_SOURCE,
    batch_source=user_activity_today_table,
    description="Today's activity rows as events arrive, accumulated per user and day (serving.push).",
    owner="ml-platform@example.com",
)
