"""``hybridrec`` console script.

hybridrec run [--conf conf/local.yaml] [--set key=value ...] [--stages ingest,embed] [--run-id R]
hybridrec job <ingest|embed|topics|als|score|evaluate> [--conf ...] [--set ...] --run-id R
hybridrec stream [--conf ...] [--set ...] [--available-now]
    new events landed in stream.landing_dir folded into recommendations_live (README, Streaming)
hybridrec sql "SELECT ..." | -f FILE|- [--conf ...] [--set ...] [--max-rows 100]
              [--format table|csv|json] [--engine auto|duckdb|spark]
hybridrec sql-server [--conf ...] [--set ...] [--host 127.0.0.1] [--port 10000]
hybridrec spark-conf [--conf ...] [--set ...] [--format flags|properties]
    spark-sql $(hybridrec spark-conf) -e "SELECT * FROM hybridrec.metrics_latest"
hybridrec pack [--out dist] [--torch cpu|cuda|SPEC] [--pip-arg ARG ...] [--python-prefix P]
               [--rebuild] [--print-flags]
    spark-submit $(hybridrec pack --out dist --print-flags) --master spark://... jobs/ingest.py

A wrong setting, stage name or run id fails before Spark starts: one line on stderr naming the
key and where it was set, exit status 2. SQL is read-only: a statement that would change a
table, the catalog or a catalog setting, and one Spark refuses, exit 5 with one line;
sql and sql-server exit 3 when the port or the (embedded Derby) catalog is held elsewhere.
run and job exit 3 when another run holds the warehouse, 4 when an input has no valid row and
6 when the MLflow tracking server cannot be reached (one line: the URI, credentials masked, and
mlflow.tracking_uri); SIGTERM or SIGINT stops a run with one line, `hybridrec: run R stopped
by signal N in stage S`, and status 143 or 130.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from hybridrec.analyst import sql_access, sql_guard
from hybridrec.config.loader import (
    ConfigError,
    check_run_id,
    check_stages,
    error_line,
    load_config,
    one_line,
)
from hybridrec.ops import packaging

# Only light modules here: --help, argument errors and DuckDB-answered queries need no Spark,
# MLflow or pandas; each command imports what it runs.
from hybridrec.ops.cli_base import argument_parser, protect_secrets, setup_logging

DEFAULT_CONF = "conf/local.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hybridrec`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            parser = argument_parser("run the whole hybridrec pipeline")
            parser.add_argument("--stages", default=None, help="comma-separated subset, in order")
            args = parser.parse_args(rest)
            from hybridrec.ops import tracking
            from hybridrec.ops.runner import exit_on_known_errors, new_run_id
            from hybridrec.ops.session import get_spark
            from pipelines.end_to_end import STAGES, run_pipeline

            # Everything the run needs is checked before get_spark: a typo costs no JVM start.
            stages = check_stages(args.stages, list(STAGES))
            run_id = check_run_id(args.run_id) if args.run_id is not None else new_run_id()
            cfg = load_config(args.conf or [DEFAULT_CONF], args.set)
            setup_logging()
            protect_secrets(cfg)
            # A busy warehouse exits 3 with one line, an MLflow server out of reach 6 (asked
            # before the JVM starts); SIGTERM and SIGINT stop the run with one line, 143 or 130.
            with exit_on_known_errors(run_id):
                tracking.check_reachable(cfg)
                spark = get_spark(cfg)
                run_pipeline(spark, cfg, run_id, stages)
            return 0
        if command == "stream":
            parser = argument_parser("fold landed events into the touched users' lists")
            parser.add_argument("--available-now", action="store_true")
            args = parser.parse_args(rest)
            cfg = load_config(args.conf or [DEFAULT_CONF], args.set)
            from jobs import stream

            stream.main(
                [*[f"--conf={c}" for c in args.conf or [DEFAULT_CONF]]]
                + [f"--set={s}" for s in args.set]
                + (["--available-now"] if args.available_now else [])
            )
            return 0
        if command == "pack":
            # Builds the executor environment; exits 3 when --print-flags finds it not built.
            return packaging.main(rest, setup_logging=setup_logging)
        if command in SQL_COMMANDS:
            return SQL_COMMANDS[command](rest)
        if command == "job" and rest and rest[0] in _stage_names():
            from hybridrec.ops.runner import job_main
            from pipelines.end_to_end import STAGES

            # job_main checks these too, then exits; checked here first so that main() returns
            # 2 like the run command does, and an empty --run-id is refused here as well.
            args = argument_parser(f"hybridrec {rest[0]} job").parse_args(rest[1:])
            if args.run_id is not None:
                check_run_id(args.run_id)
            load_config(args.conf, args.set)
            job_main(rest[0], STAGES[rest[0]], rest[1:])
            return 0
    except ConfigError as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    if command == "job":
        given = repr(rest[0]) if rest else "none"
        print(
            f"hybridrec: unknown job {given}; jobs are {', '.join(_stage_names())} "
            "(hybridrec --help)",
            file=sys.stderr,
        )
    else:
        print(f"hybridrec: unknown command {command!r} (hybridrec --help)", file=sys.stderr)
    return 2


def _sql(rest: list[str]) -> int:
    parser = argument_parser("answer one read-only SQL statement on the pipeline's tables")
    parser.add_argument(
        "statement", nargs="?", help='e.g. "SELECT * FROM hybridrec.metrics_latest"'
    )
    parser.add_argument(
        "-f", "--file", help="read the statement from this file ('-': standard input)"
    )
    parser.add_argument("--max-rows", type=_int_in(1, None), default=100)
    parser.add_argument("--format", choices=sql_access.FORMATS, default="table")
    parser.add_argument(
        "--engine",
        choices=sql_access.ENGINES,
        default="auto",
        help="auto: DuckDB over the published snapshots for a plain SELECT, else Spark",
    )
    args = parser.parse_args(rest)
    statement = _statement(parser, args.statement, args.file)
    cfg = load_config(args.conf or [DEFAULT_CONF], args.set)
    setup_logging(mlflow=False)
    protect_secrets(cfg, mlflow=False)
    with _sql_errors("sql"):
        sql_access.query(
            cfg,
            statement,
            max_rows=args.max_rows,
            fmt=args.format,
            out=sys.stdout,
            engine=args.engine,
        )
    return 0


def _statement(parser: argparse.ArgumentParser, text: str | None, file: str | None) -> str:
    """The statement from the command line, a file or standard input: exactly one of them."""
    if (text is None) == (file is None):
        parser.error("give the statement, or -f FILE (-f - reads standard input), not both")
    if file is not None:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"cannot read the statement from {file}: {exc}")
    # A file's statement usually ends with ';', which Spark's parser does not take.
    text = text.strip().removesuffix(";").rstrip()
    if not text:
        parser.error("the statement is empty")
    return text


def _sql_server(rest: list[str]) -> int:
    parser = argument_parser("serve the pipeline's tables over JDBC/ODBC (HiveServer2 protocol)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=_int_in(1, 65535), default=10000)
    args = parser.parse_args(rest)
    cfg = load_config(args.conf or [DEFAULT_CONF], args.set)
    setup_logging()
    protect_secrets(cfg)
    with _sql_errors("sql-server"):
        sql_access.serve(cfg, args.host, args.port)
    return 0


def _spark_conf(rest: list[str]) -> int:
    parser = argument_parser("print the Spark settings that open the pipeline's catalog")
    parser.add_argument(
        "--format",
        choices=sql_access.CONF_FORMATS,
        default="flags",
        help="--conf flags for $(...), or a file for spark-sql --properties-file",
    )
    args = parser.parse_args(rest)
    cfg = load_config(args.conf or [DEFAULT_CONF], args.set)
    text = sql_access.conf_flags(cfg) if args.format == "flags" else sql_access.properties_text(cfg)
    sys.stdout.write(text)
    return 0


def _int_in(low: int, high: int | None):
    """An argparse type: an integer from ``low`` to ``high`` (no bound if None)."""
    bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"want an integer {bounds}, got {text!r}")
        return value

    return parse


@contextlib.contextmanager
def _sql_errors(command: str) -> Iterator[None]:
    """One line and a status instead of a traceback: 5 a refused statement, 3 a busy resource."""
    try:
        yield
    except sql_access.SqlError as exc:
        print(f"hybridrec: sql error: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(5)
    except sql_guard.ReadOnlyError as exc:
        print(f"hybridrec: sql refused: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(5)
    except sql_access.BusyError as exc:
        print(f"hybridrec: {command}: {one_line(str(exc))}", file=sys.stderr)
        sys.exit(3)


def _stage_names() -> tuple[str, ...]:
    from hybridrec.constants import STAGE_NAMES

    return STAGE_NAMES


SQL_COMMANDS = {"sql": _sql, "sql-server": _sql_server, "spark-conf": _spark_conf}


if __name__ == "__main__":
    sys.exit(main())
