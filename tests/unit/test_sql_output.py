"""``hybridrec sql`` output formats and ``hybridrec spark-conf``'s properties."""

from __future__ import annotations

import csv
import io
import json

from hybridrec.analyst import sql_access
from hybridrec.config.loader import load_config

ROWS = [
    {"model": "hybrid", "value": 0.25, "note": "a, b"},
    {"model": "als", "value": None, "note": ""},
]


def _written(fmt: str) -> str:
    out = io.StringIO()
    sql_access.write_rows(["model", "value", "note"], ROWS, fmt, out)
    return out.getvalue()


def test_csv_quotes_what_needs_quoting_and_keeps_the_header():
    rows = list(csv.DictReader(io.StringIO(_written("csv"))))
    assert rows == [
        {"model": "hybrid", "value": "0.25", "note": "a, b"},
        {"model": "als", "value": "", "note": ""},
    ]


def test_json_is_one_object_per_line():
    assert [json.loads(line) for line in _written("json").splitlines()] == ROWS


def test_table_aligns_columns():
    lines = _written("table").splitlines()
    assert lines[0].split() == ["model", "value", "note"] and len(lines) == 3


def test_spark_conf_opens_the_same_catalog_and_warehouse(tmp_path):
    cfg = load_config([], [f"run.work_dir={tmp_path}"])

    properties = dict(line.split("=", 1) for line in sql_access.properties_text(cfg).splitlines())

    assert properties["spark.sql.catalogImplementation"] == "hive"
    assert properties["spark.sql.warehouse.dir"] == f"{tmp_path}/warehouse"
    assert (
        f"databaseName={tmp_path}/metastore/metastore_db"
        in properties["spark.hadoop.javax.jdo.option.ConnectionURL"]
    )
    assert (
        properties["spark.driver.extraJavaOptions"] == f"-Dderby.system.home={tmp_path}/metastore"
    )


def test_spark_conf_points_at_an_external_metastore(tmp_path):
    cfg = load_config([], [f"run.work_dir={tmp_path}", "run.metastore=thrift://meta:9083"])

    text = sql_access.properties_text(cfg)

    assert "spark.hadoop.hive.metastore.uris=thrift://meta:9083\n" in text
    assert "derby" not in text
