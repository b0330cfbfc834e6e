"""The one place where feature values from Feast are given their model-facing types.

Offline, Feast returns integer features as float64 (NaN where the join found nothing); online it returns Python
ints and None. Training and serving both pass their frames through :func:`normalize`, so the model sees the
same dtypes, column order and missing-value marker on both paths.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from feast import FeatureService
from feast.types import String

# A field tagged {"role": "population"} decides who is scored (churn_common.population), never a model input.
ROLE_TAG, POPULATION_ROLE = "role", "population"


@dataclass(frozen=True)
class ServiceSchema:
    """A FeatureService's features in the service's order, with their view and kind."""

    features: tuple[str, ...]
    view_of: Mapping[str, str]
    string_features: frozenset[str]
    population_features: frozenset[str] = frozenset()

    @property
    def numeric_features(self) -> tuple[str, ...]:
        return tuple(f for f in self.features if f not in self.string_features)

    @property
    def model_features(self) -> tuple[str, ...]:
        """The features a model trained on the service takes as inputs, in the service's order."""
        return tuple(f for f in self.features if f not in self.population_features)


def service_schema(service: FeatureService) -> ServiceSchema:
    features: list[str] = []
    view_of: dict[str, str] = {}
    strings: set[str] = set()
    population: set[str] = set()
    for projection in service.feature_view_projections:
        for field in projection.features:
            features.append(field.name)
            view_of[field.name] = projection.name_to_use()
            if field.dtype == String:
                strings.add(field.name)
            if field.tags.get(ROLE_TAG) == POPULATION_ROLE:
                population.add(field.name)
    if len(set(features)) != len(features):
        raise ValueError(f"FeatureService {service.name} has duplicate feature names; names must be unique")
    return ServiceSchema(tuple(features), view_of, frozenset(strings), frozenset(population))


def normalize(frame: pd.DataFrame, schema: ServiceSchema) -> pd.DataFrame:
    """Exactly the schema's columns, in order: numbers as float64 with NaN, strings as object with None."""
    missing = [f for f in schema.features if f not in frame.columns]
    if missing:
        raise KeyError(f"frame lacks features {missing}")
    out = pd.DataFrame(index=frame.index)
    for feature in schema.features:
        column = frame[feature]
        if feature in schema.string_features:
            out[feature] = column.astype(object).where(column.notna(), None)
        else:
            out[feature] = pd.to_numeric(column, errors="raise").astype(np.float64)
    return out
