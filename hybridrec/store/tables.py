"""The one table reader/writer: every table is a set of run snapshots, each published whole.

Layout under ``<run.warehouse_dir>/<run.database>.db``::

    <table>/run_id=<run>/[fold=<fold>/]part-*.parquet   a published snapshot (one per run)
    _staging/<table>/<run>.<token>/                     a snapshot being written
    _trash/<table>/<run>.<token>/                       a replaced snapshot, removed right after

A write goes to a fresh staging folder, then is renamed to ``run_id=<run>``: a reader sees a
run's snapshot whole or not at all (a directory rename is atomic on local disks and HDFS). A retry
of the run moves the old snapshot aside first (a retry of 0 rows leaves 0). Each table is
registered as ``<database>.<table>``, partitioned by ``run_id`` (and ``fold`` where it has folds):
a snapshot is a partition. No SQL text is built from names or paths: they travel as parameters.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from hybridrec import views
from hybridrec.config.loader import Config, work_path
from hybridrec.store import catalog
from hybridrec.store.small_files import SmallFrame

log = logging.getLogger(__name__)

RUN_COL = views.RUN_COL
STAGING = "_staging"
TRASH = "_trash"
REPORTS = "_reports"  # per-run files beside the tables (plots), removed with the run's snapshots

# Tables this Spark application has checked against the dictionary and their folder, with their
# registered and partition columns: a later snapshot only adds its own partitions (listing every
# run's folder grows with history). The warehouse lock keeps other writers from re-creating one.
_CHECKED: dict[tuple[str, str, str], tuple[frozenset[str], tuple[str, ...], object]] = {}


class MissingTableError(RuntimeError):
    """An input snapshot has not been written yet: the job that writes it has to run first."""


@dataclass
class Warehouse:
    """Tables of one database. ``run_id`` is the run whose snapshots ``read``/``write`` use when
    they are not given one."""

    spark: SparkSession
    root: str
    database: str
    run_id: str | None = None
    # False: snapshots are published as files only, for a process that must not open the
    # catalog (the stream beside the batch on one embedded Derby metastore, which admits one
    # process); the next batch run registers them, and hybridrec sql reads the files at once.
    catalog_writes: bool = True

    @classmethod
    def from_config(
        cls,
        spark: SparkSession,
        cfg: Config,
        run_id: str | None = None,
        *,
        catalog_writes: bool = True,
    ) -> Warehouse:
        warehouse = cls(
            spark,
            work_path(cfg, "warehouse_dir", "warehouse"),
            cfg.run.database,
            run_id,
            catalog_writes,
        )
        if catalog_writes and not spark.catalog.databaseExists(warehouse.database):
            spark.sql(
                "CREATE DATABASE IF NOT EXISTS IDENTIFIER(:db)", args={"db": warehouse.database}
            )
        return warehouse

    @property
    def db_root(self) -> str:
        return f"{self.root}/{self.database}.db"

    def path(self, name: str) -> str:
        return f"{self.db_root}/{name}"

    def snapshot_path(self, name: str, run_id: str) -> str:
        return f"{self.path(name)}/{RUN_COL}={run_id}"

    def staging_path(self) -> str:
        """The folder snapshots are staged in, on the warehouse's own (shared) storage: also where
        a model goes on its way to MLflow, since executors and driver see the same files there.
        A killed run's leftovers here go with :meth:`clear_leftovers`."""
        return f"{self.db_root}/{STAGING}"

    def report_path(self, run_id: str) -> str:
        return f"{self.db_root}/{REPORTS}/{RUN_COL}={run_id}"

    def qualified(self, name: str) -> str:
        return f"{self.database}.{name}"

    # -- file system -------------------------------------------------------------------------

    @cached_property
    def _hadoop(self):
        """Hadoop's Path class and configuration, looked up once: each dotted step of a py4j name
        is a failed class lookup over every jar (0.7 s of a quick-profile run's driver)."""
        context = self.spark.sparkContext
        return context._jvm.org.apache.hadoop.fs.Path, context._jsc.hadoopConfiguration()

    def _hpath(self, path: str):
        path_class, conf = self._hadoop
        hpath = path_class(path)
        return hpath.getFileSystem(conf), hpath

    def _exists(self, path: str) -> bool:
        fs, hpath = self._hpath(path)
        return fs.exists(hpath)

    def _children(self, path: str) -> list[str]:
        fs, hpath = self._hpath(path)
        if not fs.exists(hpath):
            return []
        return [status.getPath().getName() for status in fs.listStatus(hpath)]

    def _has_data(self, path: str) -> bool:
        """Data files or partition folders, not only ``_SUCCESS`` and checksums."""
        return any(not n.startswith(("_", ".")) for n in self._children(path))

    def _delete(self, path: str) -> None:
        fs, hpath = self._hpath(path)
        fs.delete(hpath, True)

    def _rename(self, source: str, target: str) -> None:
        fs, src = self._hpath(source)
        _, dst = self._hpath(target)
        fs.mkdirs(dst.getParent())
        if not fs.rename(src, dst):
            raise OSError(f"could not rename {source} to {target}")

    # -- reading -----------------------------------------------------------------------------

    def tables(self) -> list[str]:
        """Tables with a folder in the warehouse."""
        return sorted(n for n in self._children(self.db_root) if not n.startswith(("_", ".")))

    def runs(self, name: str) -> list[str]:
        """Run ids with a published snapshot of ``name``."""
        prefix = f"{RUN_COL}="
        return sorted(
            n[len(prefix) :] for n in self._children(self.path(name)) if n.startswith(prefix)
        )

    def files_stamp(self, name: str, *, run_id: str | None = None) -> tuple:
        """Names one and two levels under ``name``, or under its snapshot of ``run_id``: every
        write names its files anew, so an equal stamp is the same data."""
        root = self.path(name) if run_id is None else self.snapshot_path(name, run_id)
        ls = self._children
        return tuple((c, tuple(sorted(ls(f"{root}/{c}")))) for c in sorted(ls(root)))

    def exists(self, name: str, *, run_id: str | None = None) -> bool:
        return self._exists(self.snapshot_path(name, self._run(run_id)))

    def read(self, name: str, *, run_id: str | None = None) -> DataFrame:
        """One run's snapshot of ``name``, with its ``run_id`` column."""
        run_id = self._run(run_id)
        snapshot = self.snapshot_path(name, run_id)
        if not self._exists(snapshot):
            raise MissingTableError(
                f"table {self.qualified(name)} has no snapshot of run {run_id!r} at {snapshot}: "
                "run the job that writes it first, with the same --run-id (see README, 'Runs')"
            )
        if not self._has_data(snapshot):
            return self._empty(name, run_id)
        # basePath keeps run_id (and fold) as columns. One snapshot is one write, whose files
        # share a schema: nothing to merge (schema inference reads one footer, not all).
        return self.spark.read.option("basePath", self.path(name)).parquet(snapshot)

    def read_all(self, name: str) -> DataFrame | None:
        """Every published snapshot of ``name`` (a cache shared across runs), or None."""
        if not self.runs(name):
            return None
        return self.spark.read.option("mergeSchema", "true").parquet(self.path(name))

    def _empty(self, name: str, run_id: str) -> DataFrame:
        """A 0-row snapshot with partition columns has no file to take a schema from: ask the
        catalog."""
        if not self.spark.catalog.tableExists(self.qualified(name)):
            raise MissingTableError(
                f"table {self.qualified(name)} has an empty snapshot of run {run_id!r} and no "
                "schema in the catalog"
            )
        return self.spark.table(self.qualified(name)).where(F.lit(False))

    def _run(self, run_id: str | None) -> str:
        run_id = run_id or self.run_id
        if not run_id:
            raise ValueError("no run id: pass run_id or use Warehouse.from_config(..., run_id)")
        return run_id

    # -- writing -----------------------------------------------------------------------------

    def write(
        self,
        df: DataFrame | SmallFrame,
        name: str,
        *,
        run_id: str | None = None,
        partition_by: list[str] | None = None,
    ) -> int:
        """Write ``df`` as run ``run_id``'s snapshot of ``name``, replacing an earlier attempt's
        whole, and return the rows written: counted by the write itself (an observed metric of
        its successful tasks), not by reading the files back, one Spark job less per table."""
        rows = self.write_together({name: df}, run_id=self._run(run_id), partition_by=partition_by)
        return rows[name]

    def write_together(
        self,
        frames: Mapping[str, DataFrame | SmallFrame],
        *,
        run_id: str,
        partition_by: list[str] | None = None,
    ) -> dict[str, int]:
        """``write`` several snapshots of run ``run_id`` side by side (a ``SmallFrame``: by the
        driver), each published once all are staged, in ``frames``' order (a snapshot that marks
        the others complete goes last). Returns the rows of each."""
        started = time.perf_counter()
        items = list(frames.items())
        stage = lambda item: self._stage(item[1], item[0], run_id, partition_by)  # noqa: E731
        if len(items) == 1:
            staged = [stage(items[0])]
        else:
            with ThreadPoolExecutor(len(items), thread_name_prefix="write") as pool:
                staged = list(pool.map(stage, items))
        for (name, _), (staging, rows, columns) in zip(items, staged, strict=True):
            self.publish(name, run_id, staging, columns=columns)
            log.info(
                "wrote %s run %s: %d rows in %.1fs -> %s",
                self.qualified(name),
                run_id,
                rows,
                time.perf_counter() - started,
                self.snapshot_path(name, run_id),
            )
        return {name: rows for (name, _), (_, rows, _) in zip(items, staged, strict=True)}

    def _stage(
        self, df: DataFrame, name: str, run_id: str, partition_by: list[str] | None
    ) -> tuple[str, int, set[str]]:
        staging = f"{self.db_root}/{STAGING}/{name}/{run_id}.{secrets.token_hex(4)}"
        if isinstance(df, SmallFrame):  # rows in the driver: one file, no Spark job
            rows = df.write_to(*self._hpath(f"{staging}/part-00000-{secrets.token_hex(8)}.parquet"))
            return staging, rows, {*df.schema.fieldNames(), RUN_COL}
        if RUN_COL in df.columns:
            df = df.drop(RUN_COL)  # the folder carries it
        written = Observation()
        writer = df.observe(written, F.count(F.lit(1)).alias("rows")).write.mode("errorifexists")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(staging)
        return staging, int(written.get["rows"]), {*df.columns, *(partition_by or []), RUN_COL}

    def publish(
        self, name: str, run_id: str, staging: str, *, columns: set[str] | None = None
    ) -> None:
        """Make ``staging`` run ``run_id``'s snapshot: two renames, never a partial folder."""
        target = self.snapshot_path(name, run_id)
        if self._exists(target):
            trash = f"{self.db_root}/{TRASH}/{name}/{run_id}.{secrets.token_hex(4)}"
            self._rename(target, trash)
            self._rename(staging, target)
            self._delete(trash)
        else:
            self._rename(staging, target)
        if self.catalog_writes:
            self.register(name, columns=columns, run_id=run_id)

    def drop_runs(self, name: str, run_ids: Iterable[str]) -> None:
        """Remove snapshots (retention): the catalog partition first, then the files."""
        registered = self.catalog_writes and self.spark.catalog.tableExists(self.qualified(name))
        for run_id in run_ids:
            if registered:
                self.spark.sql(
                    "ALTER TABLE IDENTIFIER(:t) DROP IF EXISTS PARTITION (run_id = :r)",
                    args={"t": self.qualified(name), "r": run_id},
                )
            self._delete(self.snapshot_path(name, run_id))

    def drop_reports(self, run_ids: Iterable[str]) -> None:
        for run_id in run_ids:
            self._delete(self.report_path(run_id))

    def clear_leftovers(self) -> list[str]:
        """Staging and trash folders of killed writes (call only while holding the run lock)."""
        left = [
            f"{folder}/{name}"
            for folder in (STAGING, TRASH)
            for name in self._children(f"{self.db_root}/{folder}")
        ]
        for path in left:
            self._delete(f"{self.db_root}/{path}")
        return left

    # -- catalog -----------------------------------------------------------------------------

    def register(
        self, name: str, *, columns: set[str] | None = None, run_id: str | None = None
    ) -> None:
        """Register ``name`` (partitioned by run) in the catalog and add new snapshots to it.

        ``columns``: those of the snapshot just written; a catalog entry that lacks one of them
        (a column added since), points at another folder or has another description is
        re-created with the dictionary's comments (``hybridrec.store.catalog``), and so are its
        analyst views. It is metadata only (an external table): no data moves. ``run_id``: the
        snapshot just written; once this application has checked the table, only that
        snapshot's partitions are added.
        """
        table = self.qualified(name)
        key = (self.spark.sparkContext.applicationId, table, self.path(name))
        checked = _CHECKED.pop(key, None)
        if (
            run_id is not None
            and checked is not None
            and (columns is None or columns <= checked[0])
            and checked[2] == catalog.TABLES.get(name)  # the dictionary it was checked against
            and self._add_partitions(name, run_id, checked[1])
        ):
            self.spark.catalog.refreshTable(table)
            _CHECKED[key] = checked
            return
        runs = self.runs(name)
        if not any(self._has_data(self.snapshot_path(name, r)) for r in runs):
            return  # no file to take a schema from yet
        if self.spark.catalog.tableExists(table) and not self._registered_here(name, columns):
            self.spark.sql("DROP TABLE IF EXISTS IDENTIFIER(:t)", args={"t": table})
        created = not self.spark.catalog.tableExists(table)
        layout = self._create_table(name, merge_schemas=len(runs) > 1) if created else None
        # A table created for its first snapshot (a new warehouse: every table of the first run)
        # adds that one partition; otherwise every run's folder is found by a full recovery.
        if not (layout and runs == [run_id] and self._add_partitions(name, run_id, layout[1])):
            self.spark.catalog.recoverPartitions(table)
        self.spark.catalog.refreshTable(table)
        if created:
            self._create_views(name)
        else:  # registered by another application: ask the catalog (created here: known)
            registered = self.spark.catalog.listColumns(table)
            layout = (
                frozenset(c.name for c in registered),
                tuple(c.name for c in registered if c.isPartition),
            )
        for elsewhere in [k for k in _CHECKED if k[:2] == key[:2]]:
            del _CHECKED[elsewhere]  # the entry now points here
        _CHECKED[key] = (*layout, catalog.TABLES.get(name))

    def _add_partitions(self, name: str, run_id: str, partitions: tuple[str, ...]) -> bool:
        """Add run ``run_id``'s snapshot to the catalog as its partitions; False where its
        folders do not have the table's partition layout (then a full recovery decides)."""
        snapshot = self.snapshot_path(name, run_id)
        inner = partitions[1:]
        if partitions[:1] != (RUN_COL,) or len(inner) > 1:
            return False
        if not self.spark.catalog.tableExists(self.qualified(name)):
            return False  # dropped since (by hand): register it again
        if not inner:
            specs = [({RUN_COL: run_id}, snapshot)]
        else:
            prefix = f"{inner[0]}="
            children = [c for c in self._children(snapshot) if not c.startswith(("_", "."))]
            if any(not c.startswith(prefix) for c in children):
                return False
            specs = [
                ({RUN_COL: run_id, inner[0]: c[len(prefix) :]}, f"{snapshot}/{c}") for c in children
            ]
        # One statement for all folds: each is a metastore round trip and a Spark analysis.
        clauses, args = [], {"t": self.qualified(name)}
        for p, (values, location) in enumerate(specs):
            spec = ", ".join(f"{_quoted(n)} = :p{p}v{i}" for i, n in enumerate(values))
            clauses.append(f"PARTITION ({spec}) LOCATION :p{p}loc")
            args |= {f"p{p}v{i}": v for i, v in enumerate(values.values())}
            args[f"p{p}loc"] = location
        if clauses:  # an empty snapshot has no partition folder to add
            self.spark.sql(
                f"ALTER TABLE IDENTIFIER(:t) ADD IF NOT EXISTS {' '.join(clauses)}", args
            )
        return True

    def _create_table(
        self, name: str, *, merge_schemas: bool = True
    ) -> tuple[frozenset[str], tuple[str, ...]]:
        """Create ``name``'s catalog entry and return its columns (partition columns included)
        and its partition columns, outermost first. ``merge_schemas``:
        the table's snapshots may differ (a column added since); merging reads every file's
        footer, pointless for one snapshot (one write)."""
        schema = (
            self.spark.read.option("basePath", self.path(name))
            .option("mergeSchema", str(merge_schemas).lower())
            .parquet(self.path(name))
            .schema
        )
        partitions = [RUN_COL, *self._inner_partitions(name)]
        described = catalog.with_comments(name, schema)
        # The column list is Spark's own DDL of the data's schema (types and comments escaped
        # by Spark); names and values from config or paths travel as parameters.
        ddl = self.spark._jvm.org.apache.spark.sql.types.DataType.fromJson(described.json()).toDDL()
        self.spark.sql(
            f"CREATE TABLE IDENTIFIER(:t) ({ddl}) USING parquet "
            f"PARTITIONED BY ({', '.join(_quoted(c) for c in partitions)}) "
            "LOCATION :location COMMENT :comment OPTIONS ('mergeSchema' = 'true')",
            args={
                "t": self.qualified(name),
                "location": self.path(name),
                "comment": catalog.table_comment(name) or "",
            },
        )
        return frozenset(schema.fieldNames()), tuple(partitions)

    def _inner_partitions(self, name: str) -> list[str]:
        """Partition columns below run_id (``fold``), from the folder names of a snapshot."""
        for run_id in self.runs(name):
            children = self._children(self.snapshot_path(name, run_id))
            keys = [c.split("=", 1)[0] for c in children if "=" in c and not c.startswith("_")]
            if keys:
                return sorted(set(keys))
        return []

    def _registered_here(self, name: str, columns: set[str] | None) -> bool:
        table = self.qualified(name)
        details = self.spark.sql("DESCRIBE TABLE EXTENDED IDENTIFIER(:t)", args={"t": table})
        described = {r.col_name: r.data_type for r in details.collect()}
        if _local(described.get("Location", "")) != _local(self.path(name)):
            return False
        if described.get("Comment", "") != (catalog.table_comment(name) or ""):
            return False
        registered = {c.name: c.description for c in self.spark.catalog.listColumns(table)}
        documented = catalog.TABLES[name].columns if name in catalog.TABLES else {}
        if any(registered.get(c, comment) != comment for c, comment in documented.items()):
            return False  # the dictionary changed since
        return columns is None or columns <= set(registered)

    # -- analyst views -----------------------------------------------------------------------

    def _create_views(self, name: str) -> None:
        """``<name>_latest`` (and ``recommendations_explained``); registering ``runs`` first
        gives every table registered before it its view."""
        if not self.spark.catalog.tableExists(self.qualified(views.RUNS)):
            return  # the views select the newest complete run from runs
        names = [name]
        if name == views.RUNS:
            names = [t for t in self.tables() if self.spark.catalog.tableExists(self.qualified(t))]
        quoted_db = _quoted(self.database)
        for table in filter(views.has_latest_view, names):
            comment = f"{catalog.table_comment(table) or table}: the newest complete run"
            body = views.latest_view_body(quoted_db, table, _quoted)
            self._create_view(table + views.LATEST_SUFFIX, body, comment)
        present = {
            t for t in views.VIEWED_TABLES if self.spark.catalog.tableExists(self.qualified(t))
        }
        for view, readers, body in views.analyst_views(quoted_db, _quoted, present):
            if readers & set(names):
                self._create_view(view, body, catalog.VIEW_DESCRIPTIONS[view])

    def _create_view(self, view: str, body: str, comment: str) -> None:
        self.spark.sql(
            "CREATE OR REPLACE VIEW IDENTIFIER(:v) COMMENT :comment AS " + body,
            args={"v": self.qualified(view), "comment": comment},
        )

    def register_all(self, names: Iterable[str]) -> list[str]:
        """Register every table of ``names`` that has a snapshot."""
        present = [name for name in names if self.runs(name)]
        for name in present:
            self.register(name)
        return present


def _quoted(identifier: str) -> str:
    """A backquoted identifier. View bodies cannot take parameters; the names quoted here are
    the validated ``run.database`` and the table names of this package."""
    return "`" + identifier.replace("`", "``") + "`"


def _local(path: str) -> str:
    return path.removeprefix("file:").rstrip("/")
