"""Warehouse: run snapshots, atomic publish, retries that replace, the catalog."""

from __future__ import annotations

import os

import pytest
from pyspark.sql import functions as F

from hybridrec.config.loader import load_config
from hybridrec.store.tables import STAGING, MissingTableError, Warehouse


@pytest.fixture
def warehouse(spark, tmp_path):
    # A quote and a space in the path: nothing may paste it into SQL text.
    work = tmp_path / "it's here"
    cfg = load_config([], [f"run.work_dir={work}"])
    return Warehouse.from_config(spark, cfg, "R1")


def _rows(spark, n: int, fold: bool = False):
    df = spark.range(n).select(F.col("id").cast("string").alias("user_id"))
    return df.withColumn("fold", F.lit("test")) if fold else df


def test_each_run_has_its_own_snapshot(spark, warehouse):
    warehouse.write(_rows(spark, 3), "t")
    warehouse.write(_rows(spark, 5), "t", run_id="R2")

    assert warehouse.read("t").count() == 3
    assert warehouse.read("t", run_id="R2").count() == 5
    assert {r.run_id for r in warehouse.read("t").collect()} == {"R1"}
    assert warehouse.runs("t") == ["R1", "R2"]


@pytest.mark.parametrize("fold", [False, True])
def test_a_snapshot_stamp_changes_with_every_write_and_only_then(spark, warehouse, fold):
    partition_by = ["fold"] if fold else None
    warehouse.write(_rows(spark, 3, fold), "t", partition_by=partition_by)
    first = warehouse.files_stamp("t", run_id="R1")
    warehouse.write(_rows(spark, 4, fold), "other", partition_by=partition_by)

    assert warehouse.files_stamp("t", run_id="R1") == first
    assert any(c == "fold=test" and files for c, files in first) == fold  # with their files

    # The same rows again: new files, a new stamp; another run's snapshot is its own.
    warehouse.write(_rows(spark, 3, fold), "t", partition_by=partition_by)
    assert warehouse.files_stamp("t", run_id="R1") != first
    assert warehouse.files_stamp("t", run_id="R9") == ()


def test_a_retry_replaces_the_runs_rows_even_with_none(spark, warehouse):
    assert warehouse.write(_rows(spark, 51), "rejects_like") == 51
    assert warehouse.write(_rows(spark, 0), "rejects_like") == 0

    assert warehouse.read("rejects_like").count() == 0
    assert spark.table(warehouse.qualified("rejects_like")).where("run_id = 'R1'").count() == 0


def test_an_empty_partitioned_snapshot_reads_as_empty_with_its_schema(spark, warehouse):
    warehouse.write(_rows(spark, 4, fold=True), "folded", partition_by=["fold"])
    assert warehouse.write(_rows(spark, 0, fold=True), "folded", partition_by=["fold"]) == 0

    empty = warehouse.read("folded")
    assert empty.count() == 0
    assert {"user_id", "fold", "run_id"} <= set(empty.columns)


def test_snapshots_are_registered_in_the_catalog_by_run(spark, warehouse):
    warehouse.write(_rows(spark, 2, fold=True), "cat", partition_by=["fold"])
    warehouse.write(_rows(spark, 3, fold=True), "cat", run_id="R2", partition_by=["fold"])

    counts = dict(spark.table(warehouse.qualified("cat")).groupBy("run_id").count().collect())
    assert counts == {"R1": 2, "R2": 3}
    partitions = {
        c.name for c in spark.catalog.listColumns(warehouse.qualified("cat")) if c.isPartition
    }
    assert partitions == {"run_id", "fold"}


def test_a_new_column_re_registers_the_table(spark, warehouse):
    warehouse.write(_rows(spark, 2), "grows")
    warehouse.write(_rows(spark, 2).withColumn("extra", F.lit(1)), "grows", run_id="R2")

    assert "extra" in spark.table(warehouse.qualified("grows")).columns


def test_a_missing_snapshot_names_the_run(spark, warehouse):
    warehouse.write(_rows(spark, 1), "only_r1")

    with pytest.raises(MissingTableError, match="R9"):
        warehouse.read("only_r1", run_id="R9")


def test_a_killed_write_leaves_the_published_snapshot_alone(spark, warehouse):
    warehouse.write(_rows(spark, 7), "kept")
    # What a kill -9 mid-write leaves: a staging folder with a half-written job.
    leftover = f"{warehouse.db_root}/{STAGING}/kept/R1.dead"
    os.makedirs(f"{leftover}/_temporary/0")

    assert warehouse.read("kept").count() == 7
    assert spark.table(warehouse.qualified("kept")).count() == 7
    assert warehouse.clear_leftovers() == [f"{STAGING}/kept"]
    assert not os.path.exists(leftover)


def test_dropped_runs_leave_files_and_catalog(spark, warehouse):
    warehouse.write(_rows(spark, 1), "old")
    warehouse.write(_rows(spark, 2), "old", run_id="R2")

    warehouse.drop_runs("old", ["R1"])

    assert warehouse.runs("old") == ["R2"]
    assert spark.table(warehouse.qualified("old")).groupBy("run_id").count().collect()[0][0] == "R2"


def test_later_snapshots_of_a_checked_table_add_only_their_partitions(spark, warehouse):
    for run_id, n in (("R1", 2), ("R2", 3), ("R3", 4)):
        warehouse.write(_rows(spark, n, fold=True), "later", run_id=run_id, partition_by=["fold"])
    warehouse.write(_rows(spark, 1, fold=True), "later", run_id="R2", partition_by=["fold"])

    table = spark.table(warehouse.qualified("later"))
    assert dict(table.groupBy("run_id").count().collect()) == {"R1": 2, "R2": 1, "R3": 4}
    listed = spark.sql(f"SHOW PARTITIONS {warehouse.qualified('later')}").collect()
    assert sorted(r[0] for r in listed) == [f"run_id=R{i}/fold=test" for i in (1, 2, 3)]


def test_every_fold_of_a_snapshot_is_registered_by_its_first_and_later_writes(spark, warehouse):
    folds = ["early", "validation", "test"]

    def folded(n):
        rows = _rows(spark, n * len(folds))
        return rows.withColumn(
            "fold",
            F.element_at(F.array(*map(F.lit, folds)), (F.col("user_id").cast("int") % 3) + 1),
        )

    for run_id in ("R1", "R2"):
        warehouse.write(folded(2), "folds", run_id=run_id, partition_by=["fold"])

    table = spark.table(warehouse.qualified("folds"))
    counts = {
        (r["run_id"], r["fold"]): r["count"]
        for r in table.groupBy("run_id", "fold").count().collect()
    }
    assert counts == {(run, fold): 2 for run in ("R1", "R2") for fold in folds}
    listed = spark.sql(f"SHOW PARTITIONS {warehouse.qualified('folds')}").collect()
    assert len(listed) == 6


def test_a_table_registered_elsewhere_or_dropped_by_hand_is_registered_again(
    spark, warehouse, tmp_path
):
    other = Warehouse.from_config(
        spark, load_config([], [f"run.work_dir={tmp_path / 'other'}"]), "R1"
    )
    warehouse.write(_rows(spark, 2), "moved")
    other.write(_rows(spark, 5), "moved")
    warehouse.write(_rows(spark, 3), "moved", run_id="R2")

    table = spark.table(warehouse.qualified("moved"))
    assert dict(table.groupBy("run_id").count().collect()) == {"R1": 2, "R2": 3}

    spark.sql(f"DROP TABLE {warehouse.qualified('moved')}")
    warehouse.write(_rows(spark, 4), "moved", run_id="R3")
    table = spark.table(warehouse.qualified("moved"))
    assert dict(table.groupBy("run_id").count().collect()) == {"R1": 2, "R2": 3, "R3": 4}
