"""What every entry point shares: arguments, config, logging, session, the MLflow run, timing."""

from __future__ import annotations

import argparse
import contextlib
import logging
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone

from pyspark.sql import SparkSession

from hybridrec import progress, redaction, summary, tracking
from hybridrec.config import (
    Config,
    ConfigError,
    check_run_id,
    error_line,
    load_config,
    one_line,
)
from hybridrec.constants import STAGE_NAMES
from hybridrec.ingest import EmptyInputError
from hybridrec.locking import RunLock, WarehouseBusyError
from hybridrec.runs import COMPLETE, FAILED, INCOMPLETE, RunLog
from hybridrec.session import get_spark
from hybridrec.tables import Warehouse

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
    redaction.quiet_mlflow_urls()
    redaction.install_log_redaction()


def protect_secrets(cfg: Config) -> None:
    """From here on, the config's secrets (and the environment's) are masked in every log line."""
    redaction.install_log_redaction(redaction.secret_values(cfg.flat()))


def run_stage(
    name: str, job: JobFn, spark: SparkSession, cfg: Config, run_id: str
) -> dict[str, float]:
    """Run one job inside its nested MLflow run and log its results and seconds."""
    log.info("stage %s: starting (run %s)", name, run_id)
    started = time.perf_counter()
    try:
        with progress.in_stage(name), tracking.job_run(cfg, run_id, name):
            results = dict(job(spark, cfg, run_id))
            results["seconds"] = time.perf_counter() - started
            tracking.log_job_metrics(results)
            tracking.log_job_metrics({f"{name}.seconds": results["seconds"]}, parent_too=True)
    finally:
        # A stage's cached frames are keyed by their plans: a retry in this process reading a
        # corrected input file under the same path would otherwise get the old rows back.
        spark.catalog.clearCache()
    summary = ", ".join(f"{k}={_fmt(v)}" for k, v in results.items())
    log.info("stage %s: done in %.1fs: %s", name, results["seconds"], summary)
    return results


def run_stages(
    spark: SparkSession, cfg: Config, run_id: str, stages: Mapping[str, JobFn]
) -> dict[str, dict[str, float]]:
    """Run ``stages`` of ``run_id`` in order while holding the warehouse lock, keeping the
    ``runs`` table and MLflow in step: ``complete`` once every stage of the run has succeeded,
    ``failed`` if one raises (or the process dies: the next lock holder says so)."""
    started = time.perf_counter()
    log.info("run %s, config: %s", run_id, redaction.mask_text(" + ".join(cfg.sources)))
    lock = RunLock(
        tracking.warehouse_folder(cfg),
        run_id,
        wait_seconds=cfg.run.lock_wait_seconds,
        stale_seconds=cfg.run.lock_stale_seconds,
        spark=spark,
    )
    with progress.heartbeat(spark.sparkContext, f"run {run_id}"), lock:
        warehouse = Warehouse.from_config(spark, cfg, run_id)
        history = RunLog(warehouse)
        history.fail_abandoned()
        tracking.fail_abandoned_runs(cfg)
        history.begin(run_id, cfg)
        results: dict[str, dict[str, float]] = {}
        try:
            for name, job in stages.items():
                results[name] = run_stage(name, job, spark, cfg, run_id)
                record = history.stage_done(run_id, name, results[name], STAGE_NAMES)
        except BaseException as exc:
            _record_failure(history, run_id, exc)
            raise
        done = set((record.get("stages_done") or "").split(","))
        status = COMPLETE if done >= set(STAGE_NAMES) else INCOMPLETE
        history.end(run_id, status)
        if status == COMPLETE:
            history.apply_retention(cfg.run.keep_runs)
    lines = [
        f"run {run_id} {status} in {time.perf_counter() - started:.1f}s "
        f"(stages done: {record.get('stages_done')})"
    ]
    try:
        if status == COMPLETE:
            metrics, gaps = summary.headline_tables(warehouse, run_id)
            lines += summary.format_headline(metrics, gaps, cfg.evaluate.confidence)
        lines += summary.where_things_are(
            cfg, warehouse, tracking.tracking_uri(cfg), tracking.pipeline_run_id(cfg, run_id)
        )
    except Exception:  # the run itself succeeded: a summary that cannot be made is no failure
        log.warning("could not summarise run %s", run_id, exc_info=True)
    log.info("%s", "\n".join(lines))
    return results


def _record_failure(history: RunLog, run_id: str, exc: BaseException) -> None:
    message = redaction.mask_text(f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
    try:
        history.end(run_id, FAILED, message)
    except Exception:  # the session may be gone (a kill); the next lock holder marks it
        log.warning("could not mark run %s failed", run_id, exc_info=True)


def job_main(name: str, job: JobFn, argv: Sequence[str] | None = None) -> dict[str, float]:
    """Entry point of ``spark-submit jobs/<name>.py`` and ``python -m jobs.<name>``: exits 2 on
    a config error and 3 when another run holds the warehouse, with one line on stderr."""
    args = argument_parser(f"hybridrec {name} job").parse_args(argv)
    setup_logging()
    with exit_on_known_errors():
        cfg = load_config(args.conf, args.set)
        run_id = check_run_id(args.run_id) if args.run_id is not None else new_run_id()
        protect_secrets(cfg)
        spark = get_spark(cfg)
        return run_stages(spark, cfg, run_id, {name: job})[name]


@contextlib.contextmanager
def exit_on_known_errors() -> Iterator[None]:
    """One line and an exit status an operator (or Airflow) can act on, not a traceback: 2 a
    setting, 3 a busy warehouse, 4 an input with no valid row.
    SIGTERM (Airflow's kill) becomes an exception, so the run is marked failed on the way out."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    except ConfigError as exc:
        print(error_line(exc), file=sys.stderr)
        sys.exit(2)
    except WarehouseBusyError as exc:
        print(f"hybridrec: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(3)
    except EmptyInputError as exc:
        print(f"hybridrec: input error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(4)


def _terminated(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
