"""The one table reader/writer: Parquet folders in the warehouse, registered in the catalog."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybridrec.config import Config
from hybridrec.session import work_path

log = logging.getLogger(__name__)


class MissingTableError(RuntimeError):
    """An input table has not been written yet: the job that writes it has to run first."""


@dataclass
class Warehouse:
    spark: SparkSession
    root: str
    database: str

    @classmethod
    def from_config(cls, spark: SparkSession, cfg: Config) -> Warehouse:
        warehouse = cls(spark, work_path(cfg, "warehouse_dir", "warehouse"), cfg.run.database)
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {warehouse.database}")
        return warehouse

    def path(self, name: str) -> str:
        return f"{self.root}/{self.database}.db/{name}"

    def exists(self, name: str) -> bool:
        """A table exists once a write to it has left data files or partition folders."""
        jvm = self.spark.sparkContext._jvm
        path = jvm.org.apache.hadoop.fs.Path(self.path(name))
        fs = path.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration())
        if not fs.exists(path):
            return False
        names = [status.getPath().getName() for status in fs.listStatus(path)]
        return any(not n.startswith(("_", ".")) for n in names)

    def read(self, name: str) -> DataFrame:
        if not self.exists(name):
            raise MissingTableError(
                f"table {self.database}.{name} not found at {self.path(name)}: "
                "run the job that writes it first (see README, 'Tables')"
            )
        # mergeSchema: partitions written before a column was added still read (as null).
        return self.spark.read.option("mergeSchema", "true").parquet(self.path(name))

    def write(
        self,
        df: DataFrame,
        name: str,
        *,
        mode: str = "overwrite",
        partition_by: list[str] | None = None,
        run_id: str | None = None,
    ) -> int:
        """Write ``df`` as Parquet, register it in the catalog, and return the rows written.

        With ``run_id`` the rows get a ``run_id`` column and replace only that run's partition
        (dynamic partition overwrite), so earlier runs stay queryable. With ``partition_by``
        only the partitions present in ``df`` are replaced. Rows written are counted from the
        stored files (this run's partition, or the whole table), not by recomputing ``df``.
        """
        started = time.perf_counter()
        if run_id is not None:
            df = df.withColumn("run_id", F.lit(run_id))
            partition_by = [*(partition_by or []), "run_id"]
        writer = df.write.mode(mode)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(self.path(name))
        rows = 0  # a partitioned write of no rows leaves no file: nothing to register yet
        if self.exists(name):
            self.register(name)
            stored = self.spark.read.parquet(self.path(name))
            if run_id is not None:
                stored = stored.where(F.col("run_id") == run_id)
            rows = stored.count()
        log.info(
            "wrote %s.%s: %d rows in %.1fs -> %s",
            self.database,
            name,
            rows,
            time.perf_counter() - started,
            self.path(name),
        )
        return rows

    def register(self, name: str) -> None:
        table = f"{self.database}.{name}"
        self.spark.sql(
            f"CREATE TABLE IF NOT EXISTS {table} USING parquet LOCATION '{self.path(name)}'"
        )
        # Partitions and files written after registration (a later run's) become visible to SQL.
        if any(c.isPartition for c in self.spark.catalog.listColumns(table)):
            self.spark.sql(f"ALTER TABLE {table} RECOVER PARTITIONS")
        self.spark.sql(f"REFRESH TABLE {table}")

    def register_all(self, names: list[str]) -> list[str]:
        """Register every table of ``names`` that exists, so that SQL works in a fresh session."""
        present = [name for name in names if self.exists(name)]
        for name in present:
            self.register(name)
        return present
