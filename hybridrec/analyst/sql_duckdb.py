"""Queries in a second: DuckDB over the published snapshots, without Spark or the views.

Every table is a folder of run snapshots (``<db>.db/<table>/run_id=<run>/[fold=<f>/]*.parquet``,
each renamed into place whole), so the catalog's tables and views can be rebuilt as DuckDB
views over those files in milliseconds: ``<db>.<table>`` (every kept run, ``run_id`` and
``fold`` as string columns, as Spark registers them), ``<db>.<table>_latest`` and
``<db>.recommendations_explained``, with the same definitions as the catalog's views
(``hybridrec.store.catalog``). No Derby is opened, so a query neither waits for a running pipeline
nor makes one wait; staging and trash folders are never read.

Read-only twice over: only a single ``SELECT`` (per DuckDB's parser) is run, and the
connection is in memory, may read files only under the database folder and has its
configuration locked before the analyst's statement runs.

DuckDB speaks its own dialect: statements it cannot parse, and catalog statements
(``DESCRIBE``, ``SHOW``: Spark's catalog has the column comments), go to Spark.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from hybridrec import views

log = logging.getLogger("hybridrec.sql")

RUN_COL = views.RUN_COL
# DuckDB statement types that change something: refused at once, before any engine starts.
WRITE_TYPES = frozenset(
    {
        "INSERT",
        "UPDATE",
        "DELETE",
        "CREATE",
        "CREATE_FUNC",
        "DROP",
        "ALTER",
        "COPY",
        "COPY_DATABASE",
        "ATTACH",
        "DETACH",
        "LOAD",
        "EXPORT",
        "MERGE_INTO",
        "VACUUM",
        "ANALYZE",
        "UPDATE_EXTENSIONS",
    }
)


class NotForDuckDB(Exception):
    """A statement DuckDB should not answer here: Spark gets it."""


class QueryError(RuntimeError):
    """DuckDB ran the statement and it failed (a cast, a file outside the warehouse)."""


def available() -> bool:
    try:
        import duckdb  # noqa: F401
    except ImportError:
        return False
    return True


def local_folder(warehouse: str) -> Path | None:
    """The warehouse as a local folder, or None when it lives on a cluster file system."""
    if "://" in warehouse and not warehouse.startswith("file:"):
        return None
    return Path(warehouse.removeprefix("file://").removeprefix("file:"))


def statement_kind(statement: str) -> str:
    """``query`` for one plain SELECT, ``write`` for a statement that changes something,
    ``other`` for the rest (catalog statements, Spark-only syntax, several statements).
    Decided by DuckDB's parser, nothing is run."""
    import duckdb

    try:
        parsed = duckdb.extract_statements(statement)
    except duckdb.Error:
        return "other"
    types = [parsed_statement.type.name for parsed_statement in parsed]
    if any(kind in WRITE_TYPES for kind in types):
        return "write"
    if types != ["SELECT"] or _is_catalog_statement(statement):
        return "other"
    return "query"


def _is_catalog_statement(statement: str) -> bool:
    """DESCRIBE / SHOW / SUMMARIZE parse as a SELECT over a SHOW_REF in DuckDB's syntax tree."""
    import duckdb

    with duckdb.connect(":memory:") as con:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [statement]).fetchone()[0])
    if tree.get("error"):
        return True
    node = tree["statements"][0]["node"]
    return (node.get("from_table") or {}).get("type") == "SHOW_REF"


def query(
    db_root: Path, database: str, statement: str, max_rows: int
) -> tuple[list[str], list[dict]]:
    """Run one SELECT over the snapshots under ``db_root``: the column names and at most
    ``max_rows + 1`` rows (one past the cut tells whether there was more)."""
    import duckdb

    if statement_kind(statement) != "query":
        raise NotForDuckDB("not a single plain SELECT")
    try:
        return _answer(db_root, database, statement, max_rows)
    except duckdb.IOException:
        # Retention removed a snapshot between the listing and the read: list again, once.
        log.info("duckdb: a snapshot went away while it was read; reading again")
    try:
        return _answer(db_root, database, statement, max_rows)
    except duckdb.IOException as exc:
        raise QueryError(_first_line(str(exc))) from exc


def _answer(
    db_root: Path, database: str, statement: str, max_rows: int
) -> tuple[list[str], list[dict]]:
    import duckdb

    with duckdb.connect(":memory:") as con:
        tables = define_views(con, db_root, database)
        _lock_down(con, db_root)
        log.info("duckdb: %d tables under %s", len(tables), db_root)
        try:
            cursor = con.execute(statement)
            columns = [column[0] for column in cursor.description]
            rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchmany(max_rows + 1)]
        except (duckdb.CatalogException, duckdb.BinderException, duckdb.ParserException) as exc:
            # Spark SQL functions or names DuckDB lacks: Spark answers, or says what is wrong.
            raise NotForDuckDB(_first_line(str(exc))) from exc
        except duckdb.IOException:
            raise
        except duckdb.Error as exc:
            raise QueryError(_first_line(str(exc))) from exc
    return columns, rows


def define_views(con, db_root: Path, database: str) -> list[str]:
    """Create ``database.<table>`` for every table with a published snapshot, and the analyst
    views where their tables exist; returns the tables."""
    con.execute(f"CREATE SCHEMA {_quoted(database)}")
    # DuckDB sorts NULLs last; Spark, first in ascending order: answers keep Spark's order.
    con.execute("SET default_null_order = 'nulls_first_on_asc_last_on_desc'")
    tables = published_tables(db_root)
    for index, table in enumerate(tables):
        variable = f"hybridrec_files_{index}"
        # The glob travels as a bound value, read by the view when it runs.
        con.execute(
            f"SET VARIABLE {variable} = ?", [str(db_root / table / f"{RUN_COL}=*/**/*.parquet")]
        )
        con.execute(
            f"CREATE VIEW {_qualified(database, table)} AS SELECT * FROM read_parquet("
            f"getvariable('{variable}'), hive_partitioning = true, union_by_name = true, "
            "hive_types_autocast = false)"
        )
    if views.RUNS in tables:
        for table in filter(views.has_latest_view, tables):
            body = views.latest_view_body(_quoted(database), table, _quoted)
            con.execute(
                f"CREATE VIEW {_qualified(database, table + views.LATEST_SUFFIX)} AS {body}"
            )
        for view, _, body in views.analyst_views(_quoted(database), _quoted, set(tables)):
            con.execute(f"CREATE VIEW {_qualified(database, view)} AS {body}")
    return tables


def published_tables(db_root: Path) -> list[str]:
    """Tables with at least one published snapshot holding a Parquet file."""
    if not db_root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in os.scandir(db_root)
        if entry.is_dir() and not entry.name.startswith(("_", ".")) and _has_parquet(entry.path)
    )


def _has_parquet(table_folder: str) -> bool:
    for snapshot in Path(table_folder).glob(f"{RUN_COL}=*"):
        if any(_parquet_files(snapshot)):
            return True
    return False


def _parquet_files(folder: Path) -> Iterable[Path]:
    return (p for p in folder.rglob("*.parquet") if not p.name.startswith(("_", ".")))


def _lock_down(con, db_root: Path) -> None:
    """From here on the connection reads only the warehouse's files and cannot be reconfigured."""
    con.execute("SET allowed_directories = ?", [[str(db_root)]])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _qualified(database: str, name: str) -> str:
    return f"{_quoted(database)}.{_quoted(name)}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text)
