"""SQL over the tables for analysts and BI tools, on the pipeline's own catalog.

- ``query``: one statement through the project's session, the result on stdout (logs on stderr).
- ``serve``: the Spark Thrift JDBC/ODBC server (HiveServer2 protocol; its jar ships with
  pyspark) inside the project's session, so ``beeline`` and BI tools see the same metastore and
  warehouse.
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
from typing import TextIO

import pandas as pd

from hybridrec.config import Config, ConfigError
from hybridrec.session import get_spark, metastore_home, metastore_settings, work_path

log = logging.getLogger("hybridrec.sql")

FORMATS = ("table", "csv", "json")
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


def query(cfg: Config, statement: str, *, max_rows: int, fmt: str, out: TextIO) -> int:
    """Run ``statement`` and write at most ``max_rows`` rows to ``out``; returns rows written."""
    from pyspark.errors import PySparkException

    # PySpark logs every refused statement with its JVM stack trace; the caller gets one line.
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    # A one-statement session has no use for the web UI, nor its port-taken warnings.
    spark = get_spark(_with_spark_conf(cfg, {"spark.ui.enabled": "false"}))
    try:
        df = spark.sql(statement)
        # One row past the cut tells whether there was more, without bringing the rest over.
        rows = df.limit(max_rows + 1).collect()
    except PySparkException as exc:
        raise _refusal(exc) from exc
    shown = rows[:max_rows]
    write_rows(df.columns, [row.asDict(recursive=True) for row in shown], fmt, out)
    if len(rows) > max_rows:
        print(f"hybridrec sql: showing the first {max_rows} rows (--max-rows)", file=sys.stderr)
    return len(shown)


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
        frame = pd.DataFrame.from_records(rows, columns=columns)
        out.write(frame.to_string(index=False, max_colwidth=80) + "\n")


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
            },
        )
    )
    database = cfg.run.database
    if not _database_exists(spark, database):
        raise ConfigError(
            f"run.database {database!r} is not in the catalog {_catalog_name(cfg)}: "
            "run the pipeline first, or pass the run's --conf / --set"
        )
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
