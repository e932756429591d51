"""The analyst views, defined once for both engines that serve them.

``<table>_latest`` holds a table's rows of the newest complete run (``runs.status =
'complete'``, latest ``started_at``); ``recommendations_explained`` joins the newest complete
run's recommendations with the titles of the item and of the history item the reason names,
and where the run has interests (``INTEREST_TABLES``, the topics job) with the user's tags and,
for a pick the text parts explain that lies in one of them, "for your interest in <tag>".
``recommendations_current`` is what to serve now: per user, the newest live list the stream
ranked against the newest complete run (a micro-batch counts once its ``stream_progress`` row is
published, so a half-written one never shows), else that run's batch list; with interests, the
same tags and interest from ``user_interests_current``. The stream's own
tables (``STREAM_TABLES``) have no ``_latest`` view: their snapshots are micro-batches, not runs.
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
CURRENT = "recommendations_current"
RECOMMENDATIONS_LIVE = "recommendations_live"
STREAM_PROGRESS = "stream_progress"
USER_INTERESTS_LIVE = "user_interests_live"
STREAM_TABLES = ("events_live", RECOMMENDATIONS_LIVE, STREAM_PROGRESS, USER_INTERESTS_LIVE)
INTERESTS_CURRENT = "user_interests_current"
INTEREST_TABLES = ("user_interests", "item_topics", "topics")
# The tables the views over several tables read (analyst_views).
VIEWED_TABLES = (
    RECOMMENDATIONS, ITEMS, RECOMMENDATIONS_LIVE, STREAM_PROGRESS, USER_INTERESTS_LIVE,
    *INTEREST_TABLES,
)  # fmt: skip
# The reasons the text parts give (udfs.reasons.NAMED_REASONS for text and recent).
TEXT_REASONS = "(r.reason LIKE 'similar to %' OR r.reason = 'matches your reviews')"
# How a list names the interest a pick lies in: this, then the topic's label.
INTEREST_PREFIX = "for your interest in "
_LIST_COLUMNS = (
    "user_id, rank, item_id, score, cf_score, cooc_score, text_score, recent_score, pop_score, "
    "next_score, reason, reason_item_id"
)

_INTEREST_COLUMNS = (
    "user_id, events, topic_ids, shares, top_topic_id, top_tag, top_share, tag_topic_ids, tags, "
    "recent_events, earlier_events, shift, rising_topic_id, rising_tag"
)

Quote = Callable[[str], str]


def latest_view_body(db: str, table: str, quote: Quote) -> str:
    """The SELECT of ``<table>_latest``; ``db`` comes quoted."""
    return (
        f"SELECT * FROM {db}.{quote(table)} WHERE {RUN_COL} = "
        f"(SELECT max_by({RUN_COL}, started_at) FROM {db}.{quote(RUNS)} "
        "WHERE status = 'complete')"
    )


def explained_view_body(db: str, quote: Quote, *, interests: bool = False) -> str:
    """The SELECT of ``recommendations_explained``; ``db`` comes quoted. ``interests``: the
    ``INTEREST_TABLES`` exist, and the view adds ``user_tags``, ``interest`` and
    ``interest_topic_id`` (``interest_naming``, the batch's interests)."""

    def latest(table: str) -> str:
        return f"{db}.{quote(table + LATEST_SUFFIX)}"

    columns = (
        "r.user_id, r.rank, r.item_id, i.title, r.score, r.cf_score, r.cooc_score, "
        "r.text_score, r.recent_score, r.pop_score, r.next_score, r.reason, r.reason_item_id, "
        "p.title AS reason_item_title"
    )
    joins = (
        f"FROM {latest(RECOMMENDATIONS)} r "
        f"LEFT JOIN {latest(ITEMS)} i ON i.item_id = r.item_id "
        f"LEFT JOIN {latest(ITEMS)} p ON p.item_id = r.reason_item_id"
    )
    if interests:
        named, named_joins = interest_naming(db, quote, latest(INTEREST_TABLES[0]))
        columns += f", {named}"
        joins += f" {named_joins}"
    return f"SELECT {columns}, r.{RUN_COL} {joins}"


def interest_naming(db: str, quote: Quote, users: str) -> tuple[str, str]:
    """The columns and joins that give a list ``r`` the user's tags (``user_tags``) and, for a
    pick the text parts explain that lies in one of the tagged topics, ``interest`` ("for your
    interest in <label>") and ``interest_topic_id``: ``users`` is the interests' table or view
    (quoted); the topics are the newest complete run's. One definition for every list view."""
    _, assigned, topics = INTEREST_TABLES
    named = f"{TEXT_REASONS} AND array_contains(u.tag_topic_ids, t.topic_id)"
    columns = (
        f"u.tags AS user_tags, CASE WHEN {named} THEN '{INTEREST_PREFIX}' || n.label END "
        f"AS interest, CASE WHEN {named} THEN t.topic_id END AS interest_topic_id"
    )
    joins = (
        f"LEFT JOIN {users} u ON u.user_id = r.user_id "
        f"LEFT JOIN {db}.{quote(assigned + LATEST_SUFFIX)} t ON t.item_id = r.item_id "
        f"LEFT JOIN {db}.{quote(topics + LATEST_SUFFIX)} n ON n.topic_id = t.topic_id"
    )
    return columns, joins


def analyst_views(db: str, quote: Quote, present: set[str]) -> list[tuple[str, set[str], str]]:
    """The views over several tables that ``present`` (the registered tables) allows: each
    view's name, the tables whose registration re-creates it, and its SELECT. A view comes
    after the views it reads (both engines check a view's body when it is created)."""
    defined = []
    interests = set(INTEREST_TABLES) <= present
    if INTEREST_TABLES[0] in present:
        live = {USER_INTERESTS_LIVE, STREAM_PROGRESS} <= present
        body = interests_current_view_body(db, quote, live=live)
        defined.append((INTERESTS_CURRENT, {INTEREST_TABLES[0], *STREAM_TABLES}, body))
    if {RECOMMENDATIONS, ITEMS} <= present:
        body = explained_view_body(db, quote, interests=interests)
        defined.append((EXPLAINED, {RECOMMENDATIONS, ITEMS, *INTEREST_TABLES}, body))
    if RECOMMENDATIONS in present:
        live = {RECOMMENDATIONS_LIVE, STREAM_PROGRESS} <= present
        body = current_view_body(db, quote, live=live, interests=interests)
        defined.append((CURRENT, {RECOMMENDATIONS, *STREAM_TABLES, *INTEREST_TABLES}, body))
    return defined


def has_latest_view(table: str) -> bool:
    return table not in STREAM_TABLES


def current_view_body(db: str, quote: Quote, *, live: bool, interests: bool = False) -> str:
    """The SELECT of ``recommendations_current``; ``live``: the stream's tables exist (without
    them, every list is the batch's); ``interests``: the ``INTEREST_TABLES`` exist, and each
    list gets the user's current tags and interest (``interest_naming`` over
    ``user_interests_current``: a live list meets the same micro-batch's interests)."""
    lists = _current_body(
        db, quote, RECOMMENDATIONS, RECOMMENDATIONS_LIVE, _LIST_COLUMNS, live, "list_source",
        live_only=("newest_event_ts", "TIMESTAMP"),
    )  # fmt: skip
    if not interests:
        return lists
    named, joins = interest_naming(db, quote, f"{db}.{quote(INTERESTS_CURRENT)}")
    return f"SELECT r.*, {named} FROM ({lists}) r {joins}"


def interests_current_view_body(db: str, quote: Quote, *, live: bool) -> str:
    """The SELECT of ``user_interests_current``: per user the interests of the newest
    committed micro-batch against the newest complete run, else that run's."""
    return _current_body(
        db, quote, INTEREST_TABLES[0], USER_INTERESTS_LIVE, _INTEREST_COLUMNS, live, "source"
    )


def _current_body(
    db: str,
    quote: Quote,
    batch_table: str,
    live_table: str,
    listed: str,
    live: bool,
    source: str,
    live_only: tuple[str, str] | None = None,
) -> str:
    """Per user, the newest rows of ``live_table`` committed (a ``stream_progress`` row)
    against the newest complete run, else that run's rows of ``batch_table``; ``source`` names
    the column saying which. ``live_only``: a column (name, SQL type) only the live table has,
    null on batch rows."""
    serving = (
        f"(SELECT max_by({RUN_COL}, started_at) FROM {db}.{quote(RUNS)} WHERE status = 'complete')"
    )
    columns = ", ".join(f"r.{c.strip()}" for c in listed.split(","))
    batch = (
        f"SELECT {columns}, r.{RUN_COL} AS serving_run_id, 'batch' AS {source}, "
        "CAST(NULL AS BIGINT) AS batch_id"
        + (f", CAST(NULL AS {live_only[1]}) AS {live_only[0]}" if live_only else "")
        + f" FROM {db}.{quote(batch_table)} r WHERE r.{RUN_COL} = {serving}"
    )
    if not live:
        return batch
    committed = (
        f"SELECT l.*, p.committed_at FROM {db}.{quote(live_table)} l "
        f"JOIN {db}.{quote(STREAM_PROGRESS)} p ON p.{RUN_COL} = l.{RUN_COL} "
        f"WHERE l.serving_run_id = {serving}"
    )
    newest = (
        f"SELECT user_id, max_by({RUN_COL}, committed_at) AS newest_snapshot "
        "FROM committed GROUP BY user_id"
    )
    live_rows = (
        f"SELECT {columns}, r.serving_run_id, 'live' AS {source}, r.batch_id"
        + (f", r.{live_only[0]}" if live_only else "")
        + " FROM committed r JOIN newest n "
        f"ON n.user_id = r.user_id AND n.newest_snapshot = r.{RUN_COL}"
    )
    return (
        f"WITH committed AS ({committed}), newest AS ({newest}) {live_rows} UNION ALL "
        f"{batch} AND NOT EXISTS (SELECT 1 FROM newest n WHERE n.user_id = r.user_id)"
    )
