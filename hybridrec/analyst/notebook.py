"""What the analyst notebook (``notebooks/explore_run.ipynb``) needs before its first query.

The notebook takes the same ``--conf``/``--set`` arguments as every ``hybridrec`` command, from
the environment variable ``HYBRIDREC_ARGS`` (default ``--conf conf/local.yaml``), because a
notebook has no command line; the end of each run prints the exact value to use.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from pyspark.sql import SparkSession

from hybridrec.analyst import sql_guard
from hybridrec.config.loader import Config, load_config
from hybridrec.ops.runner import argument_parser
from hybridrec.ops.session import get_spark
from hybridrec.store.runs import newest_complete_run
from hybridrec.store.tables import Warehouse

ARGS_ENV = "HYBRIDREC_ARGS"
DEFAULT_ARGS = "--conf conf/local.yaml"


class NoCompleteRun(RuntimeError):
    """The warehouse has no complete run yet: there is nothing to explore."""


def notebook_config() -> Config:
    args = argument_parser("notebook").parse_args(
        shlex.split(os.environ.get(ARGS_ENV) or DEFAULT_ARGS)
    )
    return load_config(args.conf, args.set)


def open_latest_run() -> tuple[SparkSession, Config, str]:
    """A read-only session (``hybridrec.analyst.sql_guard``: a query that would change the
    pipeline's tables or catalog fails, as over JDBC), the config and the newest complete run (what
    the
    ``_latest`` views show)."""
    cfg = notebook_config()
    spark = get_spark(cfg)
    warehouse = Warehouse.from_config(spark, cfg)
    run_id = newest_complete_run(warehouse)
    if run_id is None:
        raise NoCompleteRun(
            f"no complete run in {warehouse.db_root}: run `hybridrec run --conf conf/local.yaml` "
            f"first (or set {ARGS_ENV} to the --conf/--set of the run you want to explore)"
        )
    sql_guard.install_check_rule(spark)
    return spark.newSession(), cfg, run_id


def repository_root(start: Path) -> Path:
    """The checkout holding ``start`` (the notebook's folder), else the one this package was
    installed from: the first folder upwards with ``conf/base.yaml`` and ``hybridrec/``."""
    package_checkout = Path(__file__).resolve().parents[2]
    for folder in (start.resolve(), *start.resolve().parents, package_checkout):
        if (folder / "conf" / "base.yaml").is_file() and (folder / "hybridrec").is_dir():
            return folder
    raise FileNotFoundError(f"no hybridrec checkout above {start} or at {package_checkout}")
