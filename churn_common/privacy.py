"""Who has been forgotten: the erasure register `churn forget` keeps and the validation gate consults, so a user's
data removed today does not come back with tomorrow's drop.

The register holds no user id: each erased user is a keyed hash (HMAC-SHA256) of the id, with a key of the
installation (``CHURN_ERASURE_KEY``, else one generated once in the data directory). Each erasure is also recorded in
an audit trail (who, when, what was removed — never the data).
"""

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churn_common.settings import Settings

_SUBJECTS = pa.schema([("subject", pa.string())])


def _privacy_dir(settings: Settings) -> Path:
    return settings.paths.root / "privacy"


def register_file(settings: Settings) -> Path:
    return _privacy_dir(settings) / "erasures.parquet"


def audit_file(settings: Settings) -> Path:
    return _privacy_dir(settings) / "audit.jsonl"


def _key(settings: Settings, *, create: bool) -> bytes | None:
    if settings.erasure_key is not None:
        return settings.erasure_key.get_secret_value().encode()
    path = _privacy_dir(settings) / "key"
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()


def subject(key: bytes, user_id: int) -> str:
    return hmac.new(key, str(int(user_id)).encode(), hashlib.sha256).hexdigest()


class Forgotten(Protocol):
    """Which rows to forget, by their (parsed, nullable) user ids."""

    def mask(self, user_ids: pd.Series) -> np.ndarray: ...


@dataclass(frozen=True)
class OneUser:
    """The user ``churn forget`` is erasing now."""

    user_id: int

    def mask(self, user_ids: pd.Series) -> np.ndarray:
        return user_ids.eq(self.user_id).fillna(False).to_numpy(dtype=bool)


@dataclass(frozen=True)
class Erased:
    """The register as read: which of some user ids were erased."""

    key: bytes | None
    subjects: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.subjects)

    def mask(self, user_ids: pd.Series) -> np.ndarray:
        """True where the (nullable) id belongs to an erased user; all false with an empty register."""
        if not self.subjects or self.key is None or user_ids.empty:
            return np.zeros(len(user_ids), dtype=bool)
        known = user_ids.notna().to_numpy()
        unique, inverse = np.unique(user_ids.to_numpy(dtype=np.int64, na_value=-1), return_inverse=True)
        key = self.key
        erased_ids = np.array([subject(key, user) in self.subjects for user in unique.tolist()], dtype=bool)
        return erased_ids[inverse] & known


NOBODY = Erased(None, frozenset())


def erased(settings: Settings) -> Erased:
    path = register_file(settings)
    if not path.exists():
        return NOBODY
    subjects = frozenset(pq.read_table(path)["subject"].to_pylist())
    return Erased(_key(settings, create=False), subjects)


def register(settings: Settings, user_id: int) -> str:
    """Add the user to the register (idempotent); the subject recorded for them."""
    key = _key(settings, create=True)
    token = subject(key, user_id)
    current = erased(settings).subjects
    path = register_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.table({"subject": sorted(current | {token})}, schema=_SUBJECTS), temporary)
    os.replace(temporary, path)
    return token


def audit(settings: Settings, record: dict) -> None:
    path = audit_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
