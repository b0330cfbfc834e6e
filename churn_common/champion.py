"""Finding and loading a registered model version: what serving, batch scoring and monitoring share (training keeps
the registry's write side). MLflow's errors become ours here."""

from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from pydantic import SecretStr

from churn_common.errors import ConfigurationError, ModelNotFound, TrackingServerUnavailable
from churn_common.model import ChurnModel
from churn_common.names import FEATURE_SERVICE_TAG, REGISTERED_MODEL
from churn_common.signing import verify

_NOT_FOUND_CODES = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}


def registry_client(tracking_uri: str) -> MlflowClient:
    # Both URIs explicitly: MlflowClient otherwise takes the registry URI last set anywhere in the process.
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def version_by_alias(client: MlflowClient, alias: str) -> ModelVersion:
    try:
        return client.get_model_version_by_alias(REGISTERED_MODEL, alias)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND_CODES:
            raise ModelNotFound(f"no version of model {REGISTERED_MODEL!r} has alias {alias!r}") from exc
        raise TrackingServerUnavailable(f"MLflow failed: {exc.message}") from exc


def all_versions(client: MlflowClient) -> list[ModelVersion]:
    """Every version of the registered model, newest first (none when it was never registered)."""
    try:
        versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    except MlflowException as exc:
        raise TrackingServerUnavailable(f"MLflow failed: {exc.message}") from exc
    return sorted(versions, key=lambda version: int(version.version), reverse=True)


def version_by_number(client: MlflowClient, number: str) -> ModelVersion:
    try:
        return client.get_model_version(REGISTERED_MODEL, number)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND_CODES:
            raise ModelNotFound(f"model {REGISTERED_MODEL!r} has no version {number!r}") from exc
        raise TrackingServerUnavailable(f"MLflow failed: {exc.message}") from exc


def feature_service_of(version: ModelVersion) -> str:
    service = version.tags.get(FEATURE_SERVICE_TAG)
    if not service:
        raise ConfigurationError(f"model version {version.version} has no {FEATURE_SERVICE_TAG!r} tag")
    return service


def download_version(client: MlflowClient, version: ModelVersion) -> Path:
    """The version's model artifacts in a local directory (MLflow's download cache)."""
    uri = f"models:/{version.name}/{version.version}"
    try:
        source = client.get_model_version_download_uri(version.name, version.version)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=client.tracking_uri))
    except MlflowException as exc:
        raise ModelNotFound(f"cannot download {uri}: {exc.message}") from exc
    except OSError as exc:
        raise ModelNotFound(f"cannot read the artifacts of {uri}: {exc}") from exc


def load_version(client: MlflowClient, version: ModelVersion, signing_key: SecretStr | None = None) -> ChurnModel:
    """The version's ChurnModel, through ``client``'s URIs (the process-wide MLflow defaults may point elsewhere).
    With ``signing_key``, the downloaded files are verified against the version's signature before they are
    unpickled (churn_common.signing)."""
    uri = f"models:/{version.name}/{version.version}"
    local = download_version(client, version)
    verify(version, local, signing_key)
    try:
        model = mlflow.pyfunc.load_model(str(local)).unwrap_python_model()
    except MlflowException as exc:
        raise ModelNotFound(f"cannot load {uri}: {exc.message}") from exc
    except OSError as exc:
        raise ModelNotFound(f"cannot read the artifacts of {uri}: {exc}") from exc
    if not isinstance(model, ChurnModel):
        raise ConfigurationError(f"{uri} holds a {type(model).__name__}, not a ChurnModel")
    return model
