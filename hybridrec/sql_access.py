"""SQL over the tables for analysts and BI tools, on the pipeline's own catalog.

- ``query``: one statement through the project's session, the result on stdout (logs on stderr).
- ``serve``: the Spark Thrift JDBC/ODBC server (HiveServer2 protocol; its jar ships with
  pyspark) inside the project's session, so ``beeline`` and BI tools see the same metastore and
  warehouse. Embedded Derby serves one process at a time: while it runs, a pipeline on the same
  ``run.work_dir`` cannot open the catalog (an external metastore, ``run.metastore``, lifts that).
- ``spark_properties``: the settings that point stock ``spark-sql`` / ``pyspark`` /
  ``spark-submit`` at the same catalog, as a properties file.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import TextIO

import pandas as pd

from hybridrec.config import Config
from hybridrec.session import get_spark, metastore_home, metastore_settings, work_path

log = logging.getLogger("hybridrec.sql")

FORMATS = ("table", "csv", "json")


class SqlError(RuntimeError):
    """A statement Spark refused (no such table, a parse error): the analyst's to fix."""


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
        properties["spark.driver.extraJavaOptions"] = f"-Dderby.system.home={metastore_home(cfg)}"
    return properties


def properties_text(cfg: Config) -> str:
    """A ``--properties-file`` for spark-sql / pyspark / spark-submit (``key=value`` lines)."""
    return "".join(f"{key}={value}\n" for key, value in spark_properties(cfg).items())


def query(cfg: Config, statement: str, *, max_rows: int, fmt: str, out: TextIO) -> int:
    """Run ``statement`` and write at most ``max_rows`` rows to ``out``; returns rows written."""
    from pyspark.errors import PySparkException

    # PySpark logs every refused statement with its JVM stack trace; the caller gets one line.
    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    spark = get_spark(cfg)
    try:
        df = spark.sql(statement)
        rows = df.limit(max_rows + 1).collect()
    except PySparkException as exc:
        raise SqlError(str(exc).strip().splitlines()[0]) from exc
    shown = rows[:max_rows]
    write_rows(df.columns, [r.asDict(recursive=True) for r in shown], fmt, out)
    if len(rows) > max_rows:
        print(f"hybridrec sql: showing the first {max_rows} rows (--max-rows)", file=sys.stderr)
    return len(shown)


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


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _wait_for_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.5)
    return False


def serve(cfg: Config, host: str, port: int, *, ready_timeout: float = 120.0) -> None:
    """Start the Thrift server on ``host:port`` and block until SIGTERM or SIGINT."""
    if not port_is_free(host, port):
        raise SqlError(f"cannot listen on {host}:{port}: the port is in use (pass --port)")
    # HiveServer2 reads its bind address from these before its own config: set before the JVM.
    os.environ["HIVE_SERVER2_THRIFT_BIND_HOST"] = host
    os.environ["HIVE_SERVER2_THRIFT_PORT"] = str(port)
    started = time.perf_counter()
    spark = get_spark(cfg)
    database = cfg.run.database
    if not spark.catalog.databaseExists(database):
        raise SqlError(f"the catalog has no database {database}: run the pipeline first")
    server = spark._jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2
    server.startWithContext(spark._jsparkSession.sqlContext())
    if not _wait_for_port(host, port, ready_timeout):
        raise SqlError(f"the SQL server did not open {host}:{port} in {ready_timeout:.0f}s")
    url = f"jdbc:hive2://{host}:{port}/{database}"
    log.info(
        "sql-server: listening on %s after %.1fs (beeline -u %s); stop with Ctrl-C or SIGTERM",
        url,
        time.perf_counter() - started,
        url,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    log.info("sql-server: stopping")
    spark.stop()
