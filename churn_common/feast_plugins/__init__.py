"""Our Feast plugins, named by ``type:`` in feature_repo/feature_store*.yaml.

- ``offline_store.FastDuckDBOfflineStore``: DuckDB, one point-in-time join per source;
- ``engine.RedisBatchEngine``: materialises every view over a source into Redis in one pass;
- ``registry_store.AtomicFileRegistryStore``: a file registry written atomically.
"""
