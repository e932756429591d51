"""What every entry point shares: arguments, config, logging, session, the MLflow run, timing."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TextIO

from pyspark.sql import SparkSession

from hybridrec import views
from hybridrec.config.loader import (
    Config,
    ConfigError,
    check_run_id,
    error_line,
    load_config,
    one_line,
)
from hybridrec.constants import STAGE_NAMES
from hybridrec.ingest import EmptyInputError
from hybridrec.ops import progress, summary, tracking
from hybridrec.ops.cli_base import argument_parser, protect_secrets, setup_logging  # noqa: F401
from hybridrec.ops.session import get_spark
from hybridrec.safety import redaction
from hybridrec.store.locking import RunLock, WarehouseBusyError
from hybridrec.store.runs import COMPLETE, FAILED, INCOMPLETE, RunLog
from hybridrec.store.tables import Warehouse

log = logging.getLogger("hybridrec")

JobFn = Callable[[SparkSession, Config, str], Mapping[str, float]]

# Exit statuses besides 0, 1 (an unexpected error, with its traceback) and 128 + a signal.
EXIT_CONFIG = 2
EXIT_BUSY = 3
EXIT_EMPTY_INPUT = 4
EXIT_TRACKING = 6  # 5 is hybridrec sql's: a statement Spark refuses
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def new_run_id() -> str:
    """Sortable and unique: the UTC start time plus a random suffix."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


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
        _cleanup(spark.catalog.clearCache)
    summary = ", ".join(f"{k}={_fmt(v)}" for k, v in results.items())
    log.info("stage %s: done in %.1fs: %s", name, results["seconds"], summary)
    return results


def run_stages(
    spark: SparkSession, cfg: Config, run_id: str, stages: Mapping[str, JobFn]
) -> dict[str, dict[str, float]]:
    """Run ``stages`` of ``run_id`` in order while holding the warehouse lock, keeping the
    ``runs`` table and MLflow in step: ``complete`` once every stage of the run has succeeded,
    ``failed`` if one raises or a stop signal arrives (or the process dies: the next lock
    holder says so). A tracking server lost on the way raises TrackingUnreachableError."""
    _STOP.run_id = run_id
    if _STOP.armed:
        catch_stop_signals()  # again: Spark's context put its own SIGINT handler in their place
    with tracking.translate_unreachable(cfg):
        return _run_stages(spark, cfg, run_id, stages)


def _run_stages(
    spark: SparkSession, cfg: Config, run_id: str, stages: Mapping[str, JobFn]
) -> dict[str, dict[str, float]]:
    started = time.perf_counter()
    log.info("run %s, config: %s", run_id, redaction.mask_text(" + ".join(cfg.sources)))
    lock = RunLock(
        tracking.warehouse_folder(cfg),
        run_id,
        wait_seconds=cfg.run.lock_wait_seconds,
        stale_seconds=cfg.run.lock_stale_seconds,
        spark=spark,
    )
    with progress.heartbeat(spark.sparkContext, f"run {run_id}"), _held(lock):
        # The catalog's first call boots the metastore (seconds on a new warehouse) while the
        # MLflow store opens (its schema checked or created): the two side by side.
        with ThreadPoolExecutor(1, thread_name_prefix="mlflow-open") as aside:
            abandoned = aside.submit(tracking.fail_abandoned_runs, cfg)
            warehouse = Warehouse.from_config(spark, cfg, run_id)
            history = RunLog(warehouse)
            history.fail_abandoned()
            abandoned.result()
        history.begin(run_id, cfg)
        # The stream publishes its snapshots as files (it leaves the catalog to the batch, see
        # Warehouse.catalog_writes): they join the catalog here.
        warehouse.register_all(views.STREAM_TABLES)
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
        mlflow_run_id = tracking.pipeline_run_id(cfg, run_id)
        model = mlflow_run_id and tracking.logged_artifact_uri(mlflow_run_id, "als_model")
        served = mlflow_run_id and tracking.served_model_uri(cfg, run_id)
        lines += summary.where_things_are(
            cfg,
            warehouse,
            tracking.tracking_uri(cfg),
            mlflow_run_id,
            als_model_uri=model,
            served_model_uri=served,
        )
    except Exception:  # the run itself succeeded: a summary that cannot be made is no failure
        log.warning("could not summarise run %s", run_id, exc_info=True)
    log.info("%s", "\n".join(lines))
    return results


def _record_failure(history: RunLog, run_id: str, exc: BaseException) -> None:
    if stopping():
        sc = history.warehouse.spark.sparkContext
        # Spark's log has nothing to add after a stop (it would warn of each task cancelled
        # here); and the stage's jobs go first, or the runs row would wait behind them.
        _cleanup(lambda: sc.setLogLevel("OFF"))
        _cleanup(sc.cancelAllJobs)
        message = stop_description()
    else:
        message = redaction.mask_message(f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
    try:
        history.end(run_id, FAILED, message)
    except Exception:  # the session may be gone (a kill); the next lock holder marks it
        log.warning("could not mark run %s failed", run_id, exc_info=True)


@contextlib.contextmanager
def _held(lock: RunLock) -> Iterator[None]:
    lock.acquire()
    try:
        yield
    finally:
        _cleanup(lock.release)  # on HDFS the release needs the JVM


def _cleanup(action: Callable[[], object]) -> None:
    """Run a cleanup step. After a stop signal a failing one is skipped, quietly: the JVM may
    have been killed along with the driver, and the stop line says what happened."""
    try:
        action()
    except Exception:
        if not stopping():
            raise


def job_main(name: str, job: JobFn, argv: Sequence[str] | None = None) -> dict[str, float]:
    """Entry point of ``spark-submit jobs/<name>.py`` and ``python -m jobs.<name>``: one line on
    stderr and the exit status of :func:`exit_on_known_errors` for what an operator can fix."""
    args = argument_parser(f"hybridrec {name} job").parse_args(argv)
    setup_logging()
    with exit_on_known_errors():
        cfg = load_config(args.conf, args.set)
        run_id = check_run_id(args.run_id) if args.run_id is not None else new_run_id()
        protect_secrets(cfg)
        tracking.check_reachable(cfg)
        spark = get_spark(cfg)
        return run_stages(spark, cfg, run_id, {name: job})[name]


@contextlib.contextmanager
def exit_on_known_errors(run_id: str | None = None) -> Iterator[None]:
    """One line on stderr (secrets masked) and an exit status an operator (or Airflow) can act
    on, not a traceback: 2 a setting, 3 a busy warehouse, 4 an input with no valid row, 6 an
    MLflow tracking server that cannot be reached.

    SIGTERM (Airflow's kill, ``timeout``) and SIGINT (Ctrl-C) stop the run: it is marked failed
    on the way out where that can still be written, and the process ends with
    ``hybridrec: run R stopped by signal N in stage S`` and status 128 + N (143, 130).

    Args:
        run_id: the run, for the stop line (``run_stages`` names it too).
    """
    catch_stop_signals(run_id)
    try:
        yield
    except BaseException as exc:
        line, status = _known_error(exc)
        if status is None:
            raise
        _say(line)
        sys.exit(status)


def _known_error(exc: BaseException) -> tuple[str, int | None]:
    """The line and exit status for ``exc``; status None for an error to raise as it is."""
    if isinstance(exc, KeyboardInterrupt) and not stopping():
        note_stop(signal.SIGINT)  # Spark's SIGINT handler, or Ctrl-C before ours was in place
    if stopping():
        # Whatever the way out raised (py4j errors once the JVM is gone): the stop says it all.
        return _stop_line(), 128 + _STOP.signum
    if isinstance(exc, ConfigError):
        line, status = error_line(exc), EXIT_CONFIG
    elif isinstance(exc, WarehouseBusyError):
        line, status = f"hybridrec: {one_line(str(exc))}", EXIT_BUSY
    elif isinstance(exc, EmptyInputError):
        line, status = f"hybridrec: input error: {one_line(str(exc))}", EXIT_EMPTY_INPUT
    elif isinstance(exc, tracking.TrackingUnreachableError):
        line, status = f"hybridrec: {one_line(str(exc))}", EXIT_TRACKING
    else:
        return "", None
    return redaction.mask_message(line), status


class StopRequested(KeyboardInterrupt):
    """A stop signal, raised in the main thread wherever it is. A KeyboardInterrupt because that
    is what py4j cleans up after when it interrupts a call: it drops the connection whose answer
    is still due, where any other exception leaves that answer for the next call to read."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@dataclass
class _Stop:
    signum: int | None = None
    stage: str | None = None
    run_id: str | None = None
    # What the stop line calls the process and its steps: "run R" in "stage S" by default; the
    # stream says "stream I" in "micro-batch N" (``name_the_stop``).
    subject: str | None = None
    step_word: str = "stage "
    idle: str = "while no stage was running"
    console: TextIO | None = None  # stderr as it was before the stop muted it
    muted: TextIO | None = None  # the null device that stands in for it
    armed: bool = False  # an entry point (exit_on_known_errors) catches the stop signals
    said: bool = False  # the stop line is out


_STOP = _Stop()


def catch_stop_signals(run_id: str | None = None) -> None:
    """Stop the run on SIGTERM and SIGINT (see :func:`exit_on_known_errors`); ``run_id`` names
    it in the stop line. Only the main thread can set signal handlers; elsewhere a no-op."""
    if run_id is not None:
        _STOP.run_id = run_id
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, on_stop_signal)
        _STOP.armed = True


def on_stop_signal(signum: int, frame) -> None:
    """The handler: the first signal stops the run (:class:`StopRequested` in the main thread);
    another one while the way out is still cleaning up ends the process at once."""
    if stopping():
        if not _STOP.said:
            _say(_stop_line())
        os._exit(128 + _STOP.signum)
    note_stop(signum)
    raise StopRequested(signum)


def note_stop(signum: int) -> None:
    """Record a stop by ``signum`` in the stage running now, and mute logging and stderr.

    What the way out meets after a kill of the process group (py4j errors in ``finally``
    clauses, threads and exit handlers, once the JVM is gone) is no news to the operator: the
    stop line, written to the stderr saved here, is the process's last word.
    """
    if stopping():
        return
    _STOP.signum = signum
    _STOP.stage = progress.current_stage()
    _STOP.console = sys.stderr
    logging.disable(logging.CRITICAL)
    _STOP.muted = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (stderr until the end)


def forget_stop() -> None:
    """Undo :func:`note_stop`: stderr and logging back, no stop recorded (for tests)."""
    if _STOP.muted is not None:
        if sys.stderr is _STOP.muted:
            sys.stderr = _STOP.console
        _STOP.muted.close()
        logging.disable(logging.NOTSET)
    _STOP.signum = _STOP.stage = _STOP.run_id = _STOP.console = _STOP.muted = None
    _STOP.subject = None
    _STOP.step_word, _STOP.idle = _Stop.step_word, _Stop.idle
    _STOP.armed = _STOP.said = False


def name_the_stop(subject: str, *, step_word: str, idle: str) -> None:
    """Let the stop line name a process that is no batch run, e.g. ``stream I stopped by signal
    15 in micro-batch 7`` (``progress.in_stage`` names the step)."""
    _STOP.subject, _STOP.step_word, _STOP.idle = subject, step_word, idle


def stopping() -> bool:
    """Whether a stop signal has arrived."""
    return _STOP.signum is not None


def stop_description() -> str:
    """``stopped by signal 15 in stage embed``: the ``runs`` table's message for a stopped run."""
    where = f"in {_STOP.step_word}{_STOP.stage}" if _STOP.stage else _STOP.idle
    return f"stopped by signal {_STOP.signum} {where}"


def _stop_line() -> str:
    subject = _STOP.subject or (f"run {_STOP.run_id}" if _STOP.run_id else "the run")
    return f"hybridrec: {subject} {stop_description()}"


def _say(line: str) -> None:
    """``line`` on stderr: the real one, also after a stop muted ``sys.stderr``."""
    console = _STOP.console or sys.stderr
    console.write(f"{line}\n")
    console.flush()
    _STOP.said = stopping()


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
