"""SQL over the tables for analysts and BI tools, on the pipeline's own catalog.

- ``query``: one read-only statement, the result on stdout (logs on stderr): DuckDB over the
  published snapshots when it can answer (``hybridrec.analyst.sql_duckdb``), else Spark on the
  catalog; a statement that would write is refused from its parsed form before anything runs.
- ``serve``: the Spark Thrift JDBC/ODBC server (HiveServer2 protocol; its jar ships with
  pyspark) inside the project's session, so ``beeline`` and BI tools see the same metastore and
  warehouse; each connection's session refuses writes from inside Spark's analyzer
  (``hybridrec.analyst.sql_guard``).
- ``conf_flags`` / ``properties_text``: the settings that point stock ``spark-sql`` /
  ``pyspark`` / ``spark-submit`` at the same catalog, as ``--conf`` flags or a properties file.

Embedded Derby (the default catalog) serves one process at a time: while ``sql-server`` (or a
``sql`` query, or stock ``spark-sql``) has it open, a pipeline on the same ``run.work_dir``
cannot open the catalog, and the other way round. An external metastore (``run.metastore``)
lifts that.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import TextIO

from hybridrec.analyst import sql_duckdb, sql_guard
from hybridrec.config.loader import Config, ConfigError, work_path
from hybridrec.ops.session import get_spark, metastore_home, metastore_settings

log = logging.getLogger("hybridrec.sql")

FORMATS = ("table", "csv", "json")
ENGINES = ("auto", "duckdb", "spark")
CONF_FORMATS = ("flags", "properties")

# The Thrift server reads these environment variables before its configuration: one exported
# in the shell would silently win over --host / --port.
_BIND_ENV = ("HIVE_SERVER2_THRIFT_BIND_HOST", "HIVE_SERVER2_THRIFT_PORT")
_DERBY_BUSY = "Another instance of Derby may have already booted the database"


class SqlError(RuntimeError):
    """A statement Spark refused (no such table, a parse error): the analyst's to fix."""


class BusyError(RuntimeError):
    """What sql or sql-server needs is held by another process: the port, or the Derby catalog."""


def spark_properties(cfg: Config) -> dict[str, str]:
    """What a Spark session needs to open this project's tables."""
    properties = {
        "spark.sql.catalogImplementation": "hive",
        **metastore_settings(cfg),
        "spark.sql.warehouse.dir": work_path(cfg, "warehouse_dir", "warehouse"),
        "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    }
    if not cfg.run.metastore:
        # Derby writes derby.log into the working folder unless told where.
        properties["spark.driver.extraJavaOptions"] = _java_option(
            f"-Dderby.system.home={metastore_home(cfg)}"
        )
    return properties


def _java_option(option: str) -> str:
    """Spark's launcher splits extraJavaOptions on whitespace unless it is in double quotes."""
    return f'"{option}"' if any(c.isspace() for c in option) else option


def properties_text(cfg: Config) -> str:
    """A ``--properties-file`` for spark-sql / pyspark / spark-submit (``key=value`` lines)."""
    return "".join(f"{key}={value}\n" for key, value in spark_properties(cfg).items())


def conf_flags(cfg: Config) -> str:
    """``--conf key=value`` lines for ``spark-sql $(hybridrec spark-conf)``.

    The words are printed bare, not shell-quoted: ``$(...)`` splits on whitespace but removes no
    quotes, so quotes would reach Spark inside the values. A ``;`` (Derby's URL) is safe there;
    whitespace cannot be carried at all, so such a value is refused in favour of the file form.
    """
    lines = []
    for key, value in spark_properties(cfg).items():
        if any(c.isspace() for c in value):
            raise ConfigError(
                f"{key}={value!r} holds whitespace, which $(...) would split: use "
                "'hybridrec spark-conf --format properties > catalog.properties' and "
                "'spark-sql --properties-file catalog.properties'"
            )
        lines.append(f"--conf {key}={value}\n")
    return "".join(lines)


def query(
    cfg: Config, statement: str, *, max_rows: int, fmt: str, out: TextIO, engine: str = "auto"
) -> str:
    """Answer ``statement`` (read-only) with at most ``max_rows`` rows on ``out``; returns the
    engine that answered.

    ``auto``: DuckDB over the published snapshots when the warehouse is a local folder and the
    statement is one plain SELECT (seconds, no catalog lock), else Spark on the catalog.
    ``duckdb`` / ``spark``: that engine only. A statement that would change anything is refused
    from its parsed form before either engine runs it (ReadOnlyError)."""
    started = time.perf_counter()
    kind = sql_duckdb.statement_kind(statement) if sql_duckdb.available() else "other"
    if kind == "write":
        raise sql_guard.ReadOnlyError(
            f"{sql_guard.RULE}: refused before it ran (it parses as a statement that writes)"
        )
    columns, rows, answered = None, None, engine
    if engine in {"auto", "duckdb"}:
        columns, rows = _duckdb_rows(cfg, statement, max_rows, kind, required=engine == "duckdb")
        answered = "duckdb"
    if rows is None:
        columns, rows = _spark_rows(cfg, statement, max_rows)
        answered = "spark"
    write_rows(columns, rows[:max_rows], fmt, out)
    if len(rows) > max_rows:
        print(f"hybridrec sql: showing the first {max_rows} rows (--max-rows)", file=sys.stderr)
    print(
        f"hybridrec sql: answered by {answered} in {time.perf_counter() - started:.1f}s",
        file=sys.stderr,
    )
    return answered


def _duckdb_rows(
    cfg: Config, statement: str, max_rows: int, kind: str, *, required: bool
) -> tuple[list[str] | None, list[dict] | None]:
    """DuckDB's answer, or (None, None) when Spark should answer instead."""
    folder = sql_duckdb.local_folder(work_path(cfg, "warehouse_dir", "warehouse"))
    if not sql_duckdb.available() or folder is None or kind != "query":
        if required:
            raise SqlError(
                "--engine duckdb answers one plain SELECT over a warehouse on a local file "
                "system (with duckdb installed); leave --engine at auto for the rest"
            )
        return None, None
    try:
        return sql_duckdb.query(
            folder / f"{cfg.run.database}.db", cfg.run.database, statement, max_rows
        )
    except sql_duckdb.QueryError as exc:
        raise SqlError(f"duckdb: {exc}") from exc
    except sql_duckdb.NotForDuckDB as exc:
        if required:
            raise SqlError(f"duckdb: {exc}") from exc
        print(f"hybridrec sql: duckdb cannot answer ({exc}); asking spark", file=sys.stderr)
        return None, None


def _spark_rows(cfg: Config, statement: str, max_rows: int) -> tuple[list[str], list[dict]]:
    """Spark's answer on the catalog, in a session whose analyzer refuses writes too."""
    from pyspark.errors import PySparkException

    # PySpark logs every refused statement with its JVM stack trace; the caller gets one line.
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    # A one-statement session has no use for the web UI, nor its port-taken warnings.
    spark = get_spark(_with_spark_conf(cfg, {"spark.ui.enabled": "false"}))
    sql_guard.check(spark, statement)
    sql_guard.install_check_rule(spark)
    try:
        df = spark.newSession().sql(statement)
        # One row past the cut tells whether there was more, without bringing the rest over.
        rows = df.limit(max_rows + 1).collect()
    except PySparkException as exc:
        raise _refusal(exc) from exc
    return df.columns, [row.asDict(recursive=True) for row in rows]


def _refusal(exc: Exception) -> Exception:
    """Spark's error as one line; busy when another process holds the Derby catalog, which only
    the JVM stack trace's innermost cause says (the message names a failed Hive client)."""
    if _DERBY_BUSY in (getattr(exc, "_stackTrace", None) or ""):
        return BusyError(
            "the catalog (embedded Derby) is open in another process, a pipeline run or a "
            "sql-server on the same run.work_dir: wait for it, or stop it"
        )
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return SqlError(lines[0].strip() if lines else type(exc).__name__)


def write_rows(columns: list[str], rows: list[dict], fmt: str, out: TextIO) -> None:
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows([[row[c] for c in columns] for row in rows])
    elif fmt == "json":
        for row in rows:
            out.write(json.dumps(row, default=str) + "\n")
    else:
        out.write(table_text(columns, rows))


def table_text(columns: list[str], rows: list[dict]) -> str:
    """Aligned columns with every value whole (a data dictionary's comments included): numbers
    right-aligned, the rest left; a line break inside a value is shown as ``\\n``."""
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    numeric = [
        bool(rows) and all(isinstance(row[c], (int, float)) or row[c] is None for row in rows)
        for c in columns
    ]

    def line(values: list[str]) -> str:
        padded = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(padded).rstrip() + "\n"

    return line(list(columns)) + "".join(line(values) for values in cells)


def _cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, (list, dict)):
        value = json.dumps(value, default=str)
    return str(value).replace("\r", "\\r").replace("\n", "\\n")


def serve(cfg: Config, host: str, port: int) -> None:
    """Serve the catalog over JDBC on ``host:port`` until SIGTERM or SIGINT, then stop.

    The Thrift server runs in the project's own session (``startWithSparkSession``), so it sees
    the pipeline's metastore and warehouse. Its bind address goes in as
    ``spark.hadoop.hive.server2.thrift.*`` when the session is built: set later, after the
    catalog has started, the server ignores it and takes 10000.
    """
    _check_port(host, port)
    for name in _BIND_ENV:
        os.environ.pop(name, None)
    spark = get_spark(
        _with_spark_conf(
            cfg,
            {
                "spark.hadoop.hive.server2.thrift.bind.host": host,
                "spark.hadoop.hive.server2.thrift.port": str(port),
                # Every connection gets a session of its own, created after the read-only
                # check rule is installed: one shared session would be the unguarded one.
                "spark.sql.hive.thriftServer.singleSession": "false",
            },
        )
    )
    database = cfg.run.database
    if not _database_exists(spark, database):
        raise ConfigError(
            f"run.database {database!r} is not in the catalog {_catalog_name(cfg)}: "
            "run the pipeline first, or pass the run's --conf / --set"
        )
    sql_guard.install_check_rule(spark)
    server = _start_thrift_server(spark, host, port)
    url = f"jdbc:hive2://{_url_host(host)}:{port}/{database}"
    log.info("sql-server: listening on %s (beeline -u %s); stop with Ctrl-C", url, url)
    _wait_for_stop_signal()
    log.info("sql-server: stopping")
    server.stop()
    spark.stop()


def _check_port(host: str, port: int) -> None:
    """Fail before Spark starts (seconds, not a minute) when the address cannot be had."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the JVM's server socket does, so a port left in TIME_WAIT still counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            problem = f"cannot listen on {host}:{port}: {exc.strerror}"
            if exc.errno == errno.EADDRINUSE:
                raise BusyError(f"{problem} (pass another --port)") from exc
            raise ConfigError(f"--host {host}: {problem}") from exc


def _database_exists(spark, database: str) -> bool:
    from pyspark.errors import PySparkException

    try:
        return spark.catalog.databaseExists(database)
    except PySparkException as exc:
        raise _refusal(exc) from exc


def _start_thrift_server(spark, host: str, port: int):
    """Start the server, and check that it listens where it was asked to."""
    from py4j.java_gateway import is_instance_of
    from py4j.protocol import Py4JJavaError

    thrift_server = spark._jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2
    try:
        # exitOnError=false: a failure surfaces here, not as System.exit under this process.
        server = thrift_server.startWithSparkSession(spark._jsparkSession, False)
    except Py4JJavaError as exc:
        bind_error = _cause(exc.java_exception, "java.net.BindException")
        if bind_error is None:
            raise
        raise BusyError(f"cannot listen on {host}:{port}: {bind_error.getMessage()}") from exc
    gateway = spark.sparkContext._gateway
    thrift_class = "org.apache.hive.service.cli.thrift.ThriftCLIService"
    ports = [
        s.getPortNumber() for s in server.getServices() if is_instance_of(gateway, s, thrift_class)
    ]
    if ports != [port]:
        server.stop()
        raise BusyError(f"the SQL server listens on port(s) {ports}, not {port}")
    return server


def _cause(java_exception, class_name: str):
    """The first exception of ``class_name`` in a Java exception's cause chain, if any."""
    cause = java_exception
    while cause is not None and cause.getClass().getName() != class_name:
        cause = cause.getCause()
    return cause


def _catalog_name(cfg: Config) -> str:
    # Not the URL itself: a JDBC URL may carry a password.
    return "at run.metastore" if cfg.run.metastore else f"under {metastore_home(cfg)}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _wait_for_stop_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # A timed wait: the handler runs between bytecodes, so the loop must come back to Python.
    while not stop.wait(1.0):
        pass


def _with_spark_conf(cfg: Config, settings: dict[str, str]) -> Config:
    """``cfg`` with extra ``spark.conf`` entries, which get_spark applies when it builds."""
    data = cfg.to_dict()
    data["spark"]["conf"] = {**data["spark"]["conf"], **settings}
    return Config(data, cfg.sources)
