"""A file registry store whose writes are atomic.

Feast's FileRegistryStore rewrites registry.db in place. Every materialisation writes the registry (view state,
materialisation intervals), so a server refreshing its registry cache at that moment can parse a half-written
file and find no feature views or services at all. Writing a temp file beside it and renaming it over the old
one means readers see either the old registry or the new one, never a torn one.
"""

import os
import tempfile
import uuid

from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now


class AtomicFileRegistryStore(FileRegistryStore):
    def _write_registry(self, registry_proto: RegistryProto) -> None:
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        directory = self._filepath.parent
        directory.mkdir(parents=True, exist_ok=True)
        handle, temp_path = tempfile.mkstemp(dir=directory, prefix=f".{self._filepath.name}.")
        try:
            with os.fdopen(handle, "wb") as temp:
                temp.write(registry_proto.SerializeToString())
                temp.flush()
                os.fsync(temp.fileno())
            os.replace(temp_path, self._filepath)
        except BaseException:
            os.unlink(temp_path)
            raise
