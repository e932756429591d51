"""Running it: the Spark session, MLflow tracking, progress lines, the job runner and its
command-line base, the end-of-run summary, and the executor environment (``packaging``). May
import ``store``, ``safety``, ``config``, ``constants`` and ``ingest``; never ``jobs``."""
