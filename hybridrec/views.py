"""The analyst views, defined once for both engines that serve them.

``<table>_latest`` holds a table's rows of the newest complete run (``runs.status =
'complete'``, latest ``started_at``); ``recommendations_explained`` joins the newest complete
run's recommendations with the titles of the item and of the history item the reason names.
Spark registers them in the catalog (``hybridrec.store.tables``); ``hybridrec sql`` rebuilds them
over the snapshot files in DuckDB (``hybridrec.analyst.sql_duckdb``). Each engine passes its own
identifier quoting. This module imports nothing heavy: the fast SQL path loads it without Spark or
pandas.
"""

from __future__ import annotations

from collections.abc import Callable

RUNS = "runs"
RECOMMENDATIONS = "recommendations"
ITEMS = "items"
RUN_COL = "run_id"
LATEST_SUFFIX = "_latest"
EXPLAINED = "recommendations_explained"

Quote = Callable[[str], str]


def latest_view_body(db: str, table: str, quote: Quote) -> str:
    """The SELECT of ``<table>_latest``; ``db`` comes quoted."""
    return (
        f"SELECT * FROM {db}.{quote(table)} WHERE {RUN_COL} = "
        f"(SELECT max_by({RUN_COL}, started_at) FROM {db}.{quote(RUNS)} "
        "WHERE status = 'complete')"
    )


def explained_view_body(db: str, quote: Quote) -> str:
    """The SELECT of ``recommendations_explained``; ``db`` comes quoted."""
    recs = f"{db}.{quote(RECOMMENDATIONS + LATEST_SUFFIX)}"
    items = f"{db}.{quote(ITEMS + LATEST_SUFFIX)}"
    return (
        "SELECT r.user_id, r.rank, r.item_id, i.title, r.score, r.cf_score, r.cooc_score, "
        "r.text_score, r.recent_score, r.pop_score, r.next_score, r.reason, r.reason_item_id, "
        f"p.title AS reason_item_title, r.{RUN_COL} FROM {recs} r "
        f"LEFT JOIN {items} i ON i.item_id = r.item_id "
        f"LEFT JOIN {items} p ON p.item_id = r.reason_item_id"
    )
