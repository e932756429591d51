"""What every entry point shares: arguments, config, logging, session, the MLflow run, timing."""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone

from pyspark.sql import SparkSession

from hybridrec import tracking
from hybridrec.config import Config, load_config
from hybridrec.session import get_spark

log = logging.getLogger("hybridrec")

JobFn = Callable[[SparkSession, Config, str], Mapping[str, float]]


def new_run_id() -> str:
    """Sortable and unique: the UTC start time plus a random suffix."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


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


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(
    name: str, job: JobFn, spark: SparkSession, cfg: Config, run_id: str
) -> dict[str, float]:
    """Run one job inside its nested MLflow run and log its results and seconds."""
    log.info("stage %s: starting (run %s)", name, run_id)
    started = time.perf_counter()
    with tracking.job_run(cfg, run_id, name):
        results = dict(job(spark, cfg, run_id))
        results["seconds"] = time.perf_counter() - started
        tracking.log_job_metrics(results)
        tracking.log_job_metrics({f"{name}.seconds": results["seconds"]}, parent_too=True)
    summary = ", ".join(f"{k}={_fmt(v)}" for k, v in results.items())
    log.info("stage %s: done in %.1fs: %s", name, results["seconds"], summary)
    return results


def job_main(name: str, job: JobFn, argv: Sequence[str] | None = None) -> dict[str, float]:
    """Entry point of ``spark-submit jobs/<name>.py`` and ``python -m jobs.<name>``."""
    args = argument_parser(f"hybridrec {name} job").parse_args(argv)
    setup_logging()
    cfg = load_config(args.conf, args.set)
    spark = get_spark(cfg)
    return run_stage(name, job, spark, cfg, args.run_id or new_run_id())


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
