"""``churn forget USER_ID``: the right to be forgotten.

Removes the user from every store the platform keeps: the online store (the configured profile's, and the embedded
SQLite file when there is one), every Parquet table under the data directory that has a ``user_id`` column (raw and
validated events and users, the account history, the feature snapshots and today tables, quarantine, the prediction
log, the scored features), the high-risk lists, the feature build's rolling-state checkpoints (deleted: the next
build starts over), and the MLflow runs' artifacts that hold user rows (``evaluation/test_set.parquet``).
Then it adds the user to the erasure register (churn_common.privacy), which the validation gate consults, so the
next drop cannot bring them back, and appends what was removed — counts, never data — to the audit trail.
"""

import csv
import logging
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pyarrow as pa
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from churn_common import privacy
from churn_common.champion import registry_client
from churn_common.errors import FeatureStoreUnavailable
from churn_common.files import replace_atomically
from churn_common.names import JOIN_KEY
from churn_common.privacy import OneUser
from churn_common.settings import Settings
from churn_common.store import feature_store
from transformations import checkpoints
from transformations.validation import parse_ids, scrub

logger = logging.getLogger(__name__)

TEST_SET_ARTIFACT = "evaluation/test_set.parquet"
# Not user data: the registry, the online store (cleared through its own API), the erasure register itself.
_SKIPPED = {"feast", "privacy", "mlflow"}


@dataclass
class Erasure:
    user_id: int
    files: dict[str, int] = field(default_factory=dict)
    """Per file rewritten (relative to the data directory): rows removed."""
    online_entries: int = 0
    artifacts: int = 0
    checkpoints: int = 0
    """The feature build's rolling-state checkpoints deleted (they hold per-user sums; the next build starts over)."""

    def summary(self) -> dict[str, object]:
        """What was removed, as counts (the audit trail's record; no user data)."""
        return {
            "files": len(self.files),
            "rows": sum(self.files.values()),
            "online_entries": self.online_entries,
            "mlflow_artifacts": self.artifacts,
            "checkpoints": self.checkpoints,
        }


def _replace(path: Path, write) -> None:
    replace_atomically(path, write, suffix=".forget.tmp")


def _csv_without_user(path: Path, user_id: int) -> int:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = pa.chunked_array([pa.array([row.get(JOIN_KEY) for row in rows], pa.string())])
    hit = OneUser(user_id).mask(parse_ids(ids, JOIN_KEY))
    kept = [row for row, erased in zip(rows, hit, strict=True) if not erased]
    if len(kept) == len(rows):
        return 0
    fields = list(rows[0]) if rows else []

    def write(target: Path) -> None:
        with target.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)

    _replace(path, write)
    return len(rows) - len(kept)


def _data_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and relative.parts[0] not in _SKIPPED and not path.name.startswith("."):
            yield path


def _forget_files(settings: Settings, erasure: Erasure) -> None:
    root = settings.paths.root
    for path in _data_files(root):
        if path.suffix == ".parquet":
            removed = scrub(path, OneUser(erasure.user_id))
        elif path.suffix == ".csv":
            removed = _csv_without_user(path, erasure.user_id)
        else:
            continue
        if removed:
            erasure.files[str(path.relative_to(root))] = removed


def _entity_key(user_id: int, version: int) -> bytes:
    entity = EntityKeyProto(join_keys=[JOIN_KEY], entity_values=[ValueProto(int64_val=user_id)])
    return serialize_entity_key(entity, entity_key_serialization_version=version)


def _forget_online(settings: Settings, erasure: Erasure) -> None:
    """The user's entry in the online store: one Redis hash, or their rows of every SQLite table."""
    store = feature_store(settings)
    config = store.config.online_store
    key = _entity_key(erasure.user_id, store.config.entity_key_serialization_version)
    if isinstance(config, RedisOnlineStoreConfig):
        client = RedisOnlineStore()._get_client(config)
        try:
            erasure.online_entries += int(client.delete(key + store.project.encode()))
        except Exception as exc:  # noqa: BLE001 - redis-py raises several unrelated types; all mean "unreachable"
            raise FeatureStoreUnavailable(f"online store (Redis) failed: {type(exc).__name__}") from exc
    sqlite_file = settings.paths.feast / "embedded" / "online.db"
    if isinstance(config, SqliteOnlineStoreConfig) or sqlite_file.exists():
        erasure.online_entries += _forget_sqlite(sqlite_file, key)


def _forget_sqlite(path: Path, key: bytes) -> int:
    if not path.exists():
        return 0
    with closing(sqlite3.connect(path)) as con, con:
        tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        removed = 0
        for table in tables:
            columns = {row[1] for row in con.execute(f'PRAGMA table_info("{table}")')}
            if "entity_key" in columns:
                removed += con.execute(f'DELETE FROM "{table}" WHERE entity_key = ?', [key]).rowcount
    return removed


def _forget_artifacts(settings: Settings, erasure: Erasure) -> None:
    """Every run's test set, rewritten without the user's rows (other artifacts hold aggregates or no ids)."""
    client = registry_client(settings.tracking_uri)
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            if not any(a.path == TEST_SET_ARTIFACT for a in client.list_artifacts(run.info.run_id, "evaluation")):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=run.info.run_id,
                        artifact_path=TEST_SET_ARTIFACT,
                        dst_path=tmp,
                        tracking_uri=settings.tracking_uri,
                    )
                )
                if scrub(local, OneUser(erasure.user_id)):
                    client.log_artifact(run.info.run_id, str(local), "evaluation")
                    erasure.artifacts += 1


def forget(settings: Settings, user_id: int, requested_by: str, reason: str) -> Erasure:
    """Erase the user everywhere, register the erasure and audit it; idempotent (a second run removes nothing)."""
    erasure = Erasure(user_id)
    _forget_online(settings, erasure)
    _forget_files(settings, erasure)
    erasure.checkpoints = checkpoints.forget(settings.paths)
    _forget_artifacts(settings, erasure)
    token = privacy.register(settings, user_id)
    record = {
        "erasure_id": uuid.uuid4().hex,
        "at": settings.clock().isoformat(),
        "requested_by": requested_by,
        "reason": reason,
        "subject": token,
        **erasure.summary(),
    }
    privacy.audit(settings, record)
    logger.info("forgot a user: %s", erasure.summary())
    return erasure
