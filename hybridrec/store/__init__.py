"""The warehouse: run snapshots written to staging and published atomically, the persistent
catalog with its views and comments, the ``runs`` table, and the run lock. May import ``config``,
``constants``, ``views`` and ``safety``."""
