"""The one place a SparkSession is built."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hybridrec.config.loader import Config, ConfigError, work_path

if TYPE_CHECKING:  # pyspark loads in seconds: paths and settings are needed without it
    from pyspark.sql import SparkSession

GPU_TASK_AMOUNT = "spark.task.resource.gpu.amount"
# Java options for a driver JVM that lives for small jobs only (the quick profile, tests): the
# client compiler alone (no C2) spends a fraction of the CPU on compiling that both tiers do, the
# cost that dominates such a JVM on 2 cores; alone it gets a small code cache, which then fills
# and is swept, hence its size. conf/quick.yaml spells the same value.
SHORT_JOB_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m"
# Spark settings for a run of small jobs (the quick profile, the test suite's runs): on a few
# thousand rows, compiling Java for each query costs more CPU than it saves, and a short run needs
# no UI. A tiny pipeline run (60 users) measured 177 s -> 160 s with them on 2 cores
# (2026-12-07). conf/quick.yaml spells the same values; the default profile keeps Spark's code
# generation, which long jobs need.
SHORT_RUN_SPARK_CONF = {
    "spark.driver.extraJavaOptions": SHORT_JOB_JAVA_OPTIONS,
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    "spark.ui.enabled": "false",
}
# The same as ``--set`` values, for the runs the test suite launches.
SHORT_RUN_SETTINGS = tuple(
    f"spark.conf.{key}={value}" for key, value in SHORT_RUN_SPARK_CONF.items()
)
GPU_RESOURCE = re.compile(r"^spark\.(task|executor|driver|worker)\.resource\.gpu\.")
log = logging.getLogger(__name__)


def under_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands its gateway port to the Python driver."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def metastore_home(cfg: Config) -> str:
    return str((Path(cfg.run.work_dir) / "metastore").resolve())


def metastore_settings(cfg: Config) -> dict[str, str]:
    """The persistent catalog: an external Hive metastore (thrift URI or JDBC URL) from
    ``run.metastore``, else embedded Derby under ``run.work_dir`` (one process at a time)."""
    uri = cfg.run.metastore
    if uri and uri.startswith("thrift://"):
        return {"spark.hadoop.hive.metastore.uris": uri}
    if not uri:
        home = Path(metastore_home(cfg))
        home.mkdir(parents=True, exist_ok=True)
        uri = f"jdbc:derby:;databaseName={home / 'metastore_db'};create=true"
    return {"spark.hadoop.javax.jdo.option.ConnectionURL": uri}


def get_spark(cfg: Config) -> SparkSession:
    """Build or join the session.

    Outside spark-submit this is the embedded default: ``spark.master`` from config, workers on
    this interpreter (or they start the system python without our packages), shuffle partitions
    sized for small data. Under spark-submit the cluster's settings win and only app-level
    settings are added.
    """
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(cfg.spark.app_name)
    builder = builder.config("spark.sql.catalogImplementation", "hive")
    for key, value in metastore_settings(cfg).items():
        builder = builder.config(key, value)
    if not under_spark_submit():
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            builder.master(cfg.spark.master)
            .config("spark.driver.memory", cfg.spark.driver_memory)
            .config("spark.pyspark.python", sys.executable)
            .config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.session.timeZone", "UTC")
        )
    warehouse = work_path(cfg, "warehouse_dir", "warehouse")
    builder = (
        builder.config("spark.sql.warehouse.dir", warehouse)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.spark.arrow_batch_rows))
        # The encoder is cached per Python worker: reuse keeps it loaded across tasks.
        .config("spark.python.worker.reuse", "true")
        # Run ids such as 20261123 must stay strings, not become partition integers.
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
    )
    local = not under_spark_submit() and str(cfg.spark.master).startswith("local")
    for key, value in cfg.spark.conf.items():
        if local and GPU_RESOURCE.match(key):
            # Local mode gives tasks no GPU: a task asking for one would wait forever. The
            # encoder still uses a GPU torch sees (embed.device auto or cuda).
            log.warning("%s ignored: local Spark (%s) schedules no GPUs", key, cfg.spark.master)
            continue
        builder = builder.config(key, str(value))
    _start_jvm_apart(builder)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    _refuse_gpu_tasks_in_local_mode(spark)
    if not cfg.run.metastore:
        # Derby writes derby.log into the JVM's working folder (the checkout) unless told where;
        # it reads this when it boots, at the first catalog call, so setting it now is in time.
        spark.sparkContext._jvm.java.lang.System.setProperty(
            "derby.system.home", metastore_home(cfg)
        )
    # ALS ignores checkpointInterval without a checkpoint dir, and long lineage overflows the stack.
    spark.sparkContext.setCheckpointDir(work_path(cfg, "checkpoint_dir", "checkpoints"))
    log.info("spark %s master=%s warehouse=%s", spark.version, spark.sparkContext.master, warehouse)
    return spark


def _start_jvm_apart(builder: SparkSession.Builder) -> None:
    """Start the driver's JVM (as getOrCreate would) in a session of its own.

    ``timeout``, Airflow and a terminal send SIGTERM or SIGINT to the whole process group; in
    ours, the JVM would die with the driver's first signal, and the run could neither be marked
    failed in ``runs`` nor stop without a flood of py4j errors. Apart, it outlives the signal
    long enough for that, and still ends with this process: it exits when its stdin, a pipe from
    here, closes. Under spark-submit the JVM came first; nothing to do.
    """
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    options = getattr(builder, "_options", None)  # what getOrCreate turns into a SparkConf
    if under_spark_submit() or SparkContext._gateway is not None or options is None:
        return
    conf = SparkConf()
    for key, value in options.items():
        conf.set(key, value)
    with SparkContext._lock:
        if SparkContext._gateway is None:
            SparkContext._gateway = launch_gateway(conf, popen_kwargs={"start_new_session": True})
            SparkContext._jvm = SparkContext._gateway.jvm


def _refuse_gpu_tasks_in_local_mode(spark: SparkSession) -> None:
    """Local mode schedules no GPUs: a task that asks for one would wait forever, silently."""
    amount = spark.sparkContext.getConf().get(GPU_TASK_AMOUNT)
    master = spark.sparkContext.master
    if amount and master.startswith("local"):
        raise ConfigError(
            f"{GPU_TASK_AMOUNT}={amount} with master {master}: Spark's local mode gives tasks "
            "no GPU, so every task would wait forever; submit to a cluster whose workers have "
            "GPUs, or leave the GPU resource settings out"
        )
