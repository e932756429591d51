"""What every command line shares before any heavy import: arguments and logging.

Kept free of Spark, MLflow and pandas so that ``hybridrec --help``, an argument error and a
DuckDB-answered ``hybridrec sql`` come back in well under a second of imports.
"""

from __future__ import annotations

import argparse
import logging

from hybridrec.config.loader import Config
from hybridrec.safety import redaction


def argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--conf",
        action="append",
        default=[],
        help="YAML overlay on conf/base.yaml (repeatable, applied in order)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set als.rank=32 (repeatable)",
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="pipeline run id shared by separately submitted jobs (default: a new one)",
    )
    return parser


def setup_logging(*, mlflow: bool = True) -> None:
    """Log lines on stderr with secrets masked; ``mlflow=False`` for commands that never load
    MLflow (``hybridrec sql``), which then start in a fraction of a second."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    redaction.quiet_mlflow_urls()
    redaction.install_log_redaction(load_mlflow=mlflow)


def protect_secrets(cfg: Config, *, mlflow: bool = True) -> None:
    """From here on, the config's secrets (and the environment's) are masked in every log line."""
    redaction.install_log_redaction(redaction.secret_values(cfg.flat()), load_mlflow=mlflow)
