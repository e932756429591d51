"""Analyst SQL on Spark is read-only: judged from the parsed plan before ``spark.sql()`` runs
it, and from the analyzed plan inside sessions the JDBC server opens (the check rule)."""

from __future__ import annotations

import pytest

from hybridrec.analyst import sql_guard

# The statements an analyst once used to double a snapshot, add a folder and break the views.
ISSUE_WRITES = [
    "INSERT INTO hybridrec.interactions SELECT * FROM hybridrec.interactions",
    "CREATE TABLE hybridrec.t (a INT)",
    "DROP TABLE hybridrec.runs",
]
REFUSED = [
    *ISSUE_WRITES,
    "INSERT OVERWRITE DIRECTORY '/tmp/x' SELECT 1",
    "FROM hybridrec.items INSERT INTO hybridrec.t SELECT *",
    "EXPLAIN INSERT INTO hybridrec.t SELECT 1",
    "CREATE VIEW hybridrec.v AS SELECT 1",
    "CREATE GLOBAL TEMPORARY VIEW g AS SELECT 1",
    "ALTER TABLE hybridrec.items SET TBLPROPERTIES ('a' = 'b')",
    "TRUNCATE TABLE hybridrec.items",
    "DELETE FROM hybridrec.items WHERE true",
    "MSCK REPAIR TABLE hybridrec.items",
    "CACHE TABLE hybridrec.items",
    "ADD JAR /tmp/x.jar",
    "SET spark.sql.warehouse.dir=/tmp/elsewhere",
    "SET spark.sql.catalog.spark_catalog=x",
    "SET hive.metastore.uris=thrift://x:9083",
    "SELECT TRANSFORM(item_id) USING 'rm -rf /' FROM hybridrec.items",
    "SELECT reflect('java.lang.System', 'exit', 1)",
    "WITH t AS (SELECT java_method('java.lang.System', 'exit', 1)) SELECT * FROM t",
    "SELECT 1 WHERE 1 IN (SELECT reflect('java.lang.System', 'exit', 1))",
]
ALLOWED = [
    "SELECT model, value FROM hybridrec.metrics_latest WHERE segment = 'all'",
    "WITH t AS (SELECT 1 AS a) SELECT * FROM t",
    "VALUES (1)",
    "DESCRIBE TABLE hybridrec.recommendations",
    "SHOW TABLES IN hybridrec",
    "SHOW COLUMNS IN hybridrec.items",
    "EXPLAIN SELECT 1",
    "USE hybridrec",
    "SET spark.sql.shuffle.partitions",
    "SET spark.sql.shuffle.partitions=4",
    "CREATE TEMPORARY VIEW mine AS SELECT 1 AS a",
]


@pytest.mark.parametrize("statement", REFUSED)
def test_a_statement_that_writes_is_refused_from_its_parsed_plan(spark, statement):
    with pytest.raises(sql_guard.ReadOnlyError, match=sql_guard.RULE):
        sql_guard.check(spark, statement)


@pytest.mark.parametrize("statement", ALLOWED)
def test_reads_pass(spark, statement):
    sql_guard.check(spark, statement)


@pytest.fixture(scope="module")
def guarded_table(spark, tmp_path_factory):
    """A table written by an unguarded session, and a session opened after the check rule was
    installed (as the JDBC server opens one per connection)."""
    spark.sql("CREATE DATABASE IF NOT EXISTS guard_test")
    location = str(tmp_path_factory.mktemp("guarded"))
    spark.sql(f"CREATE TABLE guard_test.t (a INT) USING parquet LOCATION '{location}'")
    spark.sql("INSERT INTO guard_test.t VALUES (1), (2)")
    sql_guard.install_check_rule(spark)
    yield spark.newSession()
    spark.sql("DROP TABLE guard_test.t")
    spark.sql("DROP DATABASE guard_test")


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO guard_test.t SELECT * FROM guard_test.t",
        "DROP TABLE guard_test.t",
        "CREATE TABLE guard_test.other (a INT) USING parquet",
        "TRUNCATE TABLE guard_test.t",
        "SET spark.sql.warehouse.dir=/tmp/elsewhere",
    ],
)
def test_the_check_rule_refuses_writes_before_they_run(spark, guarded_table, statement):
    with pytest.raises(Exception, match=f"SecurityException: hybridrec: {sql_guard.RULE}"):
        guarded_table.sql(statement)

    assert spark.table("guard_test.t").count() == 2
    assert not spark.catalog.tableExists("guard_test.other")


def test_a_guarded_session_still_reads_and_keeps_its_own_temporary_views(guarded_table):
    guarded_table.sql("CREATE TEMPORARY VIEW mine AS SELECT a * 10 AS b FROM guard_test.t")

    assert sorted(r.b for r in guarded_table.sql("SELECT b FROM mine").collect()) == [10, 20]
    assert guarded_table.sql("DESCRIBE TABLE guard_test.t").count() >= 1


def test_the_unguarded_session_it_came_from_is_unchanged(spark, guarded_table):
    spark.sql("CREATE TEMPORARY VIEW pipeline_view AS SELECT 1 AS a")

    assert spark.sql("SELECT a FROM pipeline_view").collect()[0].a == 1
