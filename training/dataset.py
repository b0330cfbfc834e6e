"""Point-in-time-correct training sets, read through the model's FeatureService and nothing else.

:func:`get_training_frame` is the join itself: every entity row, in order, with the service's features as of its
timestamp. :func:`get_training_set` keeps what a model may learn from: the rows the population rule scores, with the
service's model features (never a population field such as ``account_status``).
"""

import logging
from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa
from feast import FeatureStore
from pandera.errors import SchemaError as PanderaSchemaError
from pandera.errors import SchemaErrors

from churn_common.errors import SchemaError
from churn_common.feature_frame import ServiceSchema, normalize, service_schema
from churn_common.names import JOIN_KEY, TIMESTAMP_FIELD
from churn_common.population import PopulationRule
from churn_common.store import get_feature_service
from training.labels import Population, apply_population_rule
from training.train import require_feature_vectors

logger = logging.getLogger(__name__)

_ROW = "_entity_row"


@dataclass(frozen=True)
class TrainingSet:
    frame: pd.DataFrame
    """The scored entity rows (their own columns) with the service's model features."""
    population: Population
    """Rows per status among all the entity rows."""


def _is_utc(series: pd.Series) -> bool:
    return isinstance(series.dtype, pd.DatetimeTZDtype) and str(series.dtype.tz) == "UTC"


def entity_schema(allow_duplicates: bool = False) -> pa.DataFrameSchema:
    """An entity frame: user ids >= 0 (0 is a valid id) and UTC timestamps, one row per (user, time) unless told
    otherwise."""
    return pa.DataFrameSchema(
        {
            JOIN_KEY: pa.Column("int64", pa.Check.ge(0), nullable=False),
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
    return _join(store, entity_df, feature_service_name, filter_by_created_timestamp, allow_duplicates)[1]


def get_training_set(
    store: FeatureStore,
    entity_df: pd.DataFrame,
    feature_service_name: str,
    rule: PopulationRule,
    *,
    filter_by_created_timestamp: bool = True,
) -> TrainingSet:
    """The point-in-time join of the entity rows, kept where ``rule`` scores them, with the model features only.

    Raises TrainingError if a kept row has every model feature missing: serving never scores such a vector."""
    schema, joined = _join(store, entity_df, feature_service_name, filter_by_created_timestamp, False)
    rule.require(schema.features)
    return scored_rows(joined, schema, rule)


def scored_rows(joined: pd.DataFrame, schema: ServiceSchema, rule: PopulationRule) -> TrainingSet:
    """``joined`` (entity columns + the service's features) cut to the rows ``rule`` scores and the model features."""
    scored, population = apply_population_rule(joined, rule)
    entity_columns = [column for column in joined.columns if column not in schema.features]
    frame = joined.loc[scored, [*entity_columns, *schema.model_features]]
    require_feature_vectors(frame, list(schema.model_features))
    logger.info("training set: %d of %d rows are scored", len(frame), len(joined))
    return TrainingSet(frame, population)


def _join(
    store: FeatureStore, entity_df: pd.DataFrame, service_name: str, filter_created: bool, allow_duplicates: bool
) -> tuple[ServiceSchema, pd.DataFrame]:
    validated = validate_entity_frame(entity_df, allow_duplicates)
    service = get_feature_service(store, service_name)
    schema = service_schema(service)
    joined = store.get_historical_features(
        entity_df=validated.assign(**{_ROW: range(len(validated))}),
        features=service,
        filter_by_created_timestamp=filter_created,
    ).to_df()
    joined = joined.sort_values(_ROW).set_index(validated.index)
    logger.info("point-in-time join: %d rows x %d features via %s", len(joined), len(schema.features), service.name)
    return schema, pd.concat([validated, normalize(joined, schema)], axis=1)
