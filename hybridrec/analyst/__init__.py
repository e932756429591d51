"""What analysts reach: ``hybridrec sql`` (DuckDB over the snapshots, or Spark on the catalog),
the read-only guard every analyst session carries, and the notebook's helpers. May import
``ops``, ``store``, ``views`` and ``config``."""
