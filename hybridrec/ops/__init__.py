"""Running it: the Spark session, MLflow tracking, progress lines, the job runner and its
command-line base, the end-of-run summary, and the executor environment: ``packaging`` (the
``hybridrec pack`` command) over ``code_archive``, ``env_requirements`` and ``executor_env``. May
import ``store``, ``safety``, ``config``, ``constants`` and ``ingest``; never ``jobs``."""
