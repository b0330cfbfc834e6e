"""The platform's exception hierarchy. Third-party errors are mapped to these at the boundary
(``raise FeatureStoreUnavailable(...) from exc``) so callers handle our names, never a library's.

ChurnError
├── ConfigurationError        settings or feature_store.yaml cannot be used
├── DataError                 input data is unusable
│   ├── SchemaError           a table misses a column or has a wrong type
│   ├── QuarantineThresholdExceeded   too many bad rows to trust the batch
│   └── EmptyInput            an input has no rows; nothing is published
├── FeatureStoreError
│   ├── FeatureServiceNotFound        the registry has no such FeatureService
│   └── FeatureStoreUnavailable       the online store (Redis) cannot be reached in time
├── TrainingError             the training set cannot produce a model (empty, single class, ...)
└── ModelRegistryError
    ├── ModelNotFound         no model version behind the alias
    └── TrackingServerUnavailable     MLflow cannot be reached
"""


class ChurnError(Exception):
    """Base class of every error the platform raises on purpose."""


class ConfigurationError(ChurnError):
    pass


class DataError(ChurnError):
    pass


class SchemaError(DataError):
    pass


class QuarantineThresholdExceeded(DataError):
    pass


class EmptyInput(DataError):
    pass


class FeatureStoreError(ChurnError):
    pass


class FeatureServiceNotFound(FeatureStoreError):
    pass


class FeatureStoreUnavailable(FeatureStoreError):
    pass


class TrainingError(ChurnError):
    pass


class ModelRegistryError(ChurnError):
    pass


class ModelNotFound(ModelRegistryError):
    pass


class TrackingServerUnavailable(ModelRegistryError):
    pass


class ModelSignatureInvalid(ModelRegistryError):
    """A version's artifacts do not verify against its signature: loading them would run code nobody signed."""
