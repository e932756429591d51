"""The data dictionary in the catalog, the analyst views, and the README's table list."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from hybridrec.config.loader import load_config
from hybridrec.store import catalog
from hybridrec.store.tables import Warehouse

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def warehouse(spark, tmp_path):
    cfg = load_config([], [f"run.work_dir={tmp_path / 'work'}"])
    return Warehouse.from_config(spark, cfg, "r1")


def _run(spark, warehouse, run_id: str, status: str, hour: int) -> None:
    row = spark.createDataFrame(
        [(status, datetime(2026, 11, 24, hour))], "status string, started_at timestamp"
    )
    warehouse.write(row, catalog.RUNS, run_id=run_id)


def _metrics(spark, value: float):
    return spark.createDataFrame(
        [("hybrid", "ndcg", 10, value, "all")],
        "model string, metric string, k int, value double, segment string",
    )


def test_latest_views_follow_the_newest_complete_run(spark, warehouse):
    _run(spark, warehouse, "r1", "complete", 1)
    warehouse.write(_metrics(spark, 0.1), "metrics", run_id="r1")
    _run(spark, warehouse, "r2", "running", 2)
    warehouse.write(_metrics(spark, 0.2), "metrics", run_id="r2")

    latest = spark.table("hybridrec.metrics_latest")
    assert [(r.run_id, r.value) for r in latest.collect()] == [("r1", 0.1)]

    _run(spark, warehouse, "r2", "complete", 2)
    assert [r.run_id for r in spark.table("hybridrec.metrics_latest").collect()] == ["r2"]
    assert [r.run_id for r in spark.table("hybridrec.runs_latest").collect()] == ["r2"]


def test_describe_table_shows_every_columns_meaning(spark, warehouse):
    _run(spark, warehouse, "r1", "complete", 1)
    folded = spark.createDataFrame(
        [("i1", [0.1, 0.2], "test")], "item_id string, factors array<float>, fold string"
    )
    warehouse.write(folded, "als_item_factors", partition_by=["fold"])

    described = spark.sql("DESCRIBE TABLE EXTENDED hybridrec.als_item_factors").collect()
    comments = {r.col_name: r.comment for r in described if r.comment}
    expected = catalog.TABLES["als_item_factors"].columns
    assert {c: comments[c] for c in expected} == expected  # partition columns included
    details = {r.col_name: r.data_type for r in described}
    assert details["Comment"] == catalog.table_comment("als_item_factors")
    assert spark.table("hybridrec.als_item_factors").where(F.col("fold") == "test").count() == 1


def test_recommendations_explained_names_both_titles(spark, warehouse):
    _run(spark, warehouse, "r1", "complete", 1)
    items = spark.createDataFrame(
        [("a", "Alpha", None, True), ("b", "Beta", None, True)],
        "item_id string, title string, description string, has_metadata boolean",
    )
    warehouse.write(items, "items")
    recs = spark.createDataFrame(
        [("u", 1, "b", 0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, "similar to a", "a"),
         ("u", 2, "a", 0.5, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, "popular", None)],
        "user_id string, rank int, item_id string, score double, cf_score double, "
        "cooc_score double, text_score double, recent_score double, pop_score double, "
        "next_score double, reason string, reason_item_id string",
    )  # fmt: skip
    warehouse.write(recs, "recommendations")

    rows = spark.table("hybridrec.recommendations_explained").orderBy("rank").collect()
    assert [(r.title, r.reason, r.reason_item_title) for r in rows] == [
        ("Beta", "similar to a", "Alpha"),
        ("Alpha", "popular", None),
    ]


def test_every_column_meaning_fits_the_metastore():
    too_long = {
        (table, column): len(meaning)
        for table, doc in catalog.TABLES.items()
        for column, meaning in doc.columns.items()
        if len(meaning) > catalog.COLUMN_MAX
    }
    assert not too_long


def test_the_readme_lists_the_dictionarys_tables():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- tables:begin -->\n(.*?)<!-- tables:end -->", text, re.S)
    assert block, "README.md lost its generated table list markers"
    assert block.group(1) == catalog.markdown(), "regenerate: python -m hybridrec.store.catalog"


def test_a_changed_dictionary_reaches_a_registered_table(spark, warehouse, monkeypatch):
    _run(spark, warehouse, "r1", "complete", 1)
    warehouse.write(_metrics(spark, 0.1), "metrics")
    doc = catalog.TABLES["metrics"]
    changed = catalog.TableDoc(doc.description, {**doc.columns, "value": "the new meaning"})
    monkeypatch.setitem(catalog.TABLES, "metrics", changed)

    warehouse.write(_metrics(spark, 0.2), "metrics")

    columns = spark.catalog.listColumns("hybridrec.metrics")
    assert {c.name: c.description for c in columns}["value"] == "the new meaning"
    assert [r.value for r in spark.table("hybridrec.metrics_latest").collect()] == [0.2]
