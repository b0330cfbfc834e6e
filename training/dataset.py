"""Point-in-time-correct training sets, read through the model's FeatureService and nothing else."""

import logging

import pandas as pd
import pandera.pandas as pa
from feast import FeatureStore
from pandera.errors import SchemaError as PanderaSchemaError
from pandera.errors import SchemaErrors

from churn_common.errors import SchemaError
from churn_common.feature_frame import ServiceSchema, normalize, service_schema
from churn_common.names import JOIN_KEY, TIMESTAMP_FIELD
from churn_common.store import get_feature_service

logger = logging.getLogger(__name__)

_ROW = "_entity_row"


def _is_utc(series: pd.Series) -> bool:
    return isinstance(series.dtype, pd.DatetimeTZDtype) and str(series.dtype.tz) == "UTC"


def entity_schema(allow_duplicates: bool = False) -> pa.DataFrameSchema:
    """An entity frame: positive user ids and UTC timestamps, one row per (user, time) unless told otherwise."""
    return pa.DataFrameSchema(
        {
            JOIN_KEY: pa.Column("int64", pa.Check.gt(0), nullable=False),
            TIMESTAMP_FIELD: pa.Column(
                checks=pa.Check(_is_utc, error="event_timestamp must be a timezone-aware UTC datetime"),
                nullable=False,
            ),
            "label": pa.Column("int64", pa.Check.isin([0, 1]), required=False, nullable=False),
        },
        unique=None if allow_duplicates else [JOIN_KEY, TIMESTAMP_FIELD],
        strict=False,
    )


def validate_entity_frame(entity_df: pd.DataFrame, allow_duplicates: bool = False) -> pd.DataFrame:
    try:
        return entity_schema(allow_duplicates).validate(entity_df, lazy=True)
    except (SchemaErrors, PanderaSchemaError) as exc:
        raise SchemaError(f"entity frame rejected: {exc}") from exc


def get_training_frame(
    store: FeatureStore,
    entity_df: pd.DataFrame,
    feature_service_name: str,
    *,
    filter_by_created_timestamp: bool = True,
    allow_duplicates: bool = False,
) -> pd.DataFrame:
    """The entity frame's rows, in their order, with the service's features as of each row's timestamp.

    ``filter_by_created_timestamp`` (default on) ignores snapshot rows created after the row's timestamp, so a
    backfilled snapshot cannot leak into a training row that predates the backfill.
    """
    validated = validate_entity_frame(entity_df, allow_duplicates)
    service = get_feature_service(store, feature_service_name)
    schema = service_schema(service)
    joined = store.get_historical_features(
        entity_df=validated.assign(**{_ROW: range(len(validated))}),
        features=service,
        filter_by_created_timestamp=filter_by_created_timestamp,
    ).to_df()
    joined = joined.sort_values(_ROW).set_index(validated.index)
    logger.info("training frame: %d rows x %d features via %s", len(joined), len(schema.features), service.name)
    return _with_normalized_features(validated, joined, schema)


def _with_normalized_features(entities: pd.DataFrame, joined: pd.DataFrame, schema: ServiceSchema) -> pd.DataFrame:
    features = normalize(joined, schema)
    return pd.concat([entities, features], axis=1)
