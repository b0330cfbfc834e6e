"""The online prediction API.

``prometheus_client`` is imported here, before anything imports Feast: ``import feast`` sets
PROMETHEUS_MULTIPROC_DIR, and prometheus_client picks mmap-backed values for every metric created after that,
which are slower on the request path and warn on ``clear()``. The API runs one process per pod, so in-memory
values are the right choice.
"""

import prometheus_client.values  # noqa: F401  (must precede `import feast`)
