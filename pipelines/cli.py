"""``hybridrec`` console script.

hybridrec run [--conf conf/local.yaml] [--set key=value ...] [--stages ingest,embed] [--run-id R]
hybridrec job <ingest|embed|als|score|evaluate> [--conf ...] [--set ...] --run-id R
hybridrec sql "SELECT ..." [--conf ...] [--set ...] [--max-rows 100] [--format table|csv|json]
hybridrec sql-server [--conf ...] [--set ...] [--host 127.0.0.1] [--port 10000]
hybridrec spark-conf [--conf ...] [--set ...]    (a --properties-file for spark-sql / pyspark)

A wrong setting, stage name or run id fails before Spark starts: one line on stderr naming the
key and where it was set, exit status 2. A SQL statement Spark refuses exits 5 with one line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hybridrec import sql_access
from hybridrec.config import ConfigError, check_run_id, check_stages, error_line, load_config
from hybridrec.runner import (
    argument_parser,
    exit_on_known_errors,
    job_main,
    new_run_id,
    protect_secrets,
    setup_logging,
)
from hybridrec.session import get_spark
from pipelines.end_to_end import STAGES, run_pipeline

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
            # Everything the run needs is checked before get_spark: a typo costs no JVM start.
            stages = check_stages(args.stages, list(STAGES))
            run_id = check_run_id(args.run_id) if args.run_id is not None else new_run_id()
            cfg = load_config(args.conf or [DEFAULT_CONF], args.set)
            setup_logging()
            protect_secrets(cfg)
            # A busy warehouse exits 3 with one line; SIGTERM marks the run failed.
            with exit_on_known_errors():
                spark = get_spark(cfg)
                run_pipeline(spark, cfg, run_id, stages)
            return 0
        if command in SQL_COMMANDS:
            return SQL_COMMANDS[command](rest)
        if command == "job" and rest and rest[0] in STAGES:
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
            f"hybridrec: unknown job {given}; jobs are {', '.join(STAGES)} (hybridrec --help)",
            file=sys.stderr,
        )
    else:
        print(f"hybridrec: unknown command {command!r} (hybridrec --help)", file=sys.stderr)
    return 2


def _sql(rest: list[str]) -> int:
    parser = argument_parser("run one SQL statement on the pipeline's tables")
    parser.add_argument("statement", help='e.g. "SELECT * FROM hybridrec.metrics_latest"')
    parser.add_argument("--max-rows", type=int, default=100)
    parser.add_argument("--format", choices=sql_access.FORMATS, default="table")
    args = parser.parse_args(rest)
    cfg = load_config(args.conf or [DEFAULT_CONF], args.set)
    setup_logging()
    protect_secrets(cfg)
    try:
        sql_access.query(
            cfg, args.statement, max_rows=args.max_rows, fmt=args.format, out=sys.stdout
        )
    except sql_access.SqlError as exc:
        print(f"hybridrec: sql error: {exc}", file=sys.stderr)
        return 5
    return 0


def _sql_server(rest: list[str]) -> int:
    parser = argument_parser("serve the pipeline's tables over JDBC/ODBC (HiveServer2 protocol)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=10000)
    args = parser.parse_args(rest)
    cfg = load_config(args.conf or [DEFAULT_CONF], args.set)
    setup_logging()
    protect_secrets(cfg)
    try:
        sql_access.serve(cfg, args.host, args.port)
    except sql_access.SqlError as exc:
        print(f"hybridrec: sql-server: {exc}", file=sys.stderr)
        return 5
    return 0


def _spark_conf(rest: list[str]) -> int:
    args = argument_parser(
        "print a Spark properties file opening the pipeline's catalog"
    ).parse_args(rest)
    cfg = load_config(args.conf or [DEFAULT_CONF], args.set)
    sys.stdout.write(sql_access.properties_text(cfg))
    return 0


SQL_COMMANDS = {"sql": _sql, "sql-server": _sql_server, "spark-conf": _spark_conf}


if __name__ == "__main__":
    sys.exit(main())
