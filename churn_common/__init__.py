"""The one small shared home: settings, logging setup, names, errors and the feature-store handle.

It imports nothing else of this project; every stage imports it.

``prometheus_client.values`` is imported here, before any of our modules can import Feast: ``import feast`` sets
PROMETHEUS_MULTIPROC_DIR, and prometheus_client then picks mmap-backed values for every metric, which cost ~10 µs
per update on the API's request path and warn on ``clear()``. Our processes (one API worker per pod, one job per
run) export their own metrics, so in-memory values are the right choice.
"""

import prometheus_client.values  # noqa: F401  (must precede `import feast`)
