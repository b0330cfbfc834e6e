"""Model signatures: loading an MLflow pyfunc model unpickles it, and unpickling runs code. Whoever can move the
``champion`` alias (or write the artifact store) could run code in every API pod within one poll. So training
signs each version: an HMAC (key from a Secret, ``model_signing_key``) of the digest of the version's artifact
files, recorded as a version tag; every loader verifies the downloaded files against it before unpickling, and
refuses a version that is unsigned or whose files changed. The key never leaves the Secret; the tag alone cannot be
forged without it."""

import hashlib
import hmac
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from pydantic import SecretStr

from churn_common.errors import ModelSignatureInvalid

SIGNATURE_TAG = "model_signature"
DIGEST_TAG = "model_digest"


def artifact_digest(directory: Path) -> str:
    """SHA-256 over every file under ``directory``: its path relative to it and its content's own digest, in path
    order (a renamed, added or removed file changes it too)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def signature(key: SecretStr, digest: str) -> str:
    return hmac.new(key.get_secret_value().encode(), digest.encode(), hashlib.sha256).hexdigest()


def sign_version(client: MlflowClient, version: ModelVersion, directory: Path, key: SecretStr) -> str:
    """Tag ``version`` with the digest of its downloaded artifacts and their signature; returns the digest."""
    digest = artifact_digest(directory)
    client.set_model_version_tag(version.name, version.version, DIGEST_TAG, digest)
    client.set_model_version_tag(version.name, version.version, SIGNATURE_TAG, signature(key, digest))
    return digest


def verify(version: ModelVersion, directory: Path, key: SecretStr | None) -> None:
    """Raise unless ``directory`` holds exactly what was signed for ``version`` (nothing to check without a key)."""
    if key is None:
        return
    claimed = version.tags.get(SIGNATURE_TAG)
    if not claimed:
        raise ModelSignatureInvalid(f"version {version.version} is not signed: refusing to load it")
    digest = artifact_digest(directory)
    if not hmac.compare_digest(signature(key, digest), claimed):
        raise ModelSignatureInvalid(
            f"version {version.version}: its artifacts (digest {digest[:12]}) do not match its signature: refusing "
            "to load them (unpickling runs their code)"
        )
