"""The warehouse: run snapshots written to staging (by Spark, or by the driver for rows it
holds) and published atomically, the persistent
catalog with its views and comments, the ``runs`` table, and the run lock. May import ``config``,
``constants``, ``views`` and ``safety``."""
