"""The fast SQL path: DuckDB over published snapshots, with the catalog's views and read-only.

No Spark here: the snapshots are written as Spark lays them out (``<table>/run_id=<run>/
[fold=<f>/]part-*.parquet``, with staging and trash folders beside them)."""

from __future__ import annotations

import io
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybridrec.analyst import sql_access, sql_duckdb
from hybridrec.config.loader import load_config

DB = "hybridrec"


def _write(root, table: str, run: str, columns: dict, fold: str | None = None) -> None:
    folder = root / table / f"run_id={run}"
    if fold is not None:
        folder = folder / f"fold={fold}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / "part-00000.snappy.parquet")


@pytest.fixture()
def work_dir(tmp_path):
    """Three runs: r1 complete, r2 complete and newest complete, r3 newer but still running."""
    root = tmp_path / "warehouse" / f"{DB}.db"
    for run, status, hour in (("r1", "complete", 1), ("r2", "complete", 2), ("r3", "running", 3)):
        _write(root, "runs", run, {"status": [status], "started_at": [datetime(2026, 1, 1, hour)]})
        _write(root, "metrics", run, {"model": ["hybrid", "als"], "value": [hour, None]})
    for run in ("r1", "r2"):
        _write(
            root,
            "recommendations",
            run,
            {
                "user_id": ["u1"],
                "rank": [1],
                "item_id": ["i2"],
                "score": [0.5],
                **{f"{p}_score": [0.1] for p in ("cf", "cooc", "text", "recent", "pop", "next")},
                "reason": ["similar to i1"],
                "reason_item_id": ["i1"],
            },
            fold="test",
        )
        _write(root, "items", run, {"item_id": ["i1", "i2"], "title": ["first", "second"]})
    # What no reader may see: a snapshot being written and one being replaced.
    _write(root / "_staging", "metrics", "r9", {"model": ["staged"], "value": [9]})
    _write(root / "_trash", "metrics", "r8", {"model": ["trashed"], "value": [8]})
    return tmp_path


def _ask(work_dir, statement: str, max_rows: int = 100):
    return sql_duckdb.query(work_dir / "warehouse" / f"{DB}.db", DB, statement, max_rows)


def test_latest_views_show_the_newest_complete_run(work_dir):
    columns, rows = _ask(work_dir, "SELECT * FROM hybridrec.metrics_latest ORDER BY model")

    assert columns == ["model", "value", "run_id"]
    assert [(r["model"], r["value"], r["run_id"]) for r in rows] == [
        ("als", None, "r2"),
        ("hybrid", 2, "r2"),
    ]


def test_tables_hold_every_published_run_and_nothing_staged(work_dir):
    _, rows = _ask(work_dir, "SELECT model, count(*) AS n FROM hybridrec.metrics GROUP BY model")

    assert {r["model"]: r["n"] for r in rows} == {"hybrid": 3, "als": 3}


def test_explained_view_joins_the_titles(work_dir):
    _, rows = _ask(work_dir, "SELECT * FROM hybridrec.recommendations_explained")

    assert [(r["title"], r["reason_item_title"], r["run_id"]) for r in rows] == [
        ("second", "first", "r2")
    ]


def _interests(root, run: str, users: list[str], tag: str, topic: int = 0, **extra) -> None:
    n = len(users)
    _write(
        root,
        "user_interests" + ("_live" if extra else ""),
        run,
        {
            "user_id": users,
            "events": [3] * n,
            "topic_ids": [[topic]] * n,
            "shares": [[1.0]] * n,
            "top_topic_id": [topic] * n,
            "top_tag": [tag] * n,
            "top_share": [1.0] * n,
            "tag_topic_ids": [[topic]] * n,
            "tags": [[tag]] * n,
            "recent_events": [1] * n,
            "earlier_events": [2] * n,
            "shift": [0.5] * n,
            "rising_topic_id": [topic] * n,
            "rising_tag": [tag] * n,
            **{k: [v] * n for k, v in extra.items()},
        },
    )


def _topics(root, run: str) -> None:
    _write(root, "topics", run, {"topic_id": [0, 1], "label": ["first words", "other words"]})
    _write(root, "item_topics", run, {"item_id": ["i1", "i2"], "topic_id": [1, 0]})


def test_explained_view_names_the_interest_a_text_pick_lies_in(work_dir):
    root = work_dir / "warehouse" / f"{DB}.db"
    for run in ("r1", "r2"):
        _topics(root, run)
        _interests(root, run, ["u1"], "first words")

    _, rows = _ask(work_dir, "SELECT * FROM hybridrec.recommendations_explained")

    # u1 is into topic 0, and i2, picked as "similar to i1", lies in it.
    assert [(r["user_tags"], r["interest"], r["interest_topic_id"]) for r in rows] == [
        (["first words"], "for your interest in first words", 0)
    ]


def test_current_lists_name_the_interest_from_the_current_interests(work_dir):
    root = work_dir / "warehouse" / f"{DB}.db"
    _topics(root, "r2")  # i1 in topic 1 "other words", i2 in topic 0 "first words"
    _interests(root, "r2", ["u1", "u2"], "first words", topic=0)
    # A committed micro-batch re-ranked u1 (i1 first, a text pick) and moved her tags to
    # topic 1; u2 keeps the batch's list, but has no recommendations there.
    _write(
        root,
        "recommendations_live",
        "s0",
        {
            "user_id": ["u1"],
            "rank": [1],
            "item_id": ["i1"],
            "score": [0.7],
            **{f"{p}_score": [0.1] for p in ("cf", "cooc", "text", "recent", "pop", "next")},
            "reason": ["matches your reviews"],
            "reason_item_id": ["i2"],
            "batch_id": [0],
            "serving_run_id": ["r2"],
            "newest_event_ts": [datetime(2026, 1, 2)],
        },
    )
    _interests(root, "s0", ["u1"], "other words", topic=1, batch_id=0, serving_run_id="r2")
    _write(root, "stream_progress", "s0", {"batch_id": [0], "committed_at": [datetime(2026, 1, 2)]})

    _, rows = _ask(
        work_dir,
        "SELECT user_id, item_id, list_source, user_tags, interest, interest_topic_id "
        "FROM hybridrec.recommendations_current",
    )

    assert [tuple(r.values()) for r in rows] == [
        ("u1", "i1", "live", ["other words"], "for your interest in other words", 1)
    ]


def test_current_interests_are_the_newest_committed_live_ones_else_the_batch_s(work_dir):
    root = work_dir / "warehouse" / f"{DB}.db"
    _interests(root, "r2", ["u1", "u2"], "batch tag")
    for batch, (snapshot, tag) in enumerate((("s0", "older live"), ("s1", "newer live"))):
        _interests(root, snapshot, ["u1"], tag, batch_id=batch, serving_run_id="r2")
        _write(
            root,
            "stream_progress",
            snapshot,
            {"batch_id": [batch], "committed_at": [datetime(2026, 1, 2, batch)]},
        )
    # Written, never committed (no stream_progress row): not seen.
    _interests(root, "s2", ["u2"], "uncommitted", batch_id=2, serving_run_id="r2")

    _, rows = _ask(
        work_dir, "SELECT user_id, top_tag, source FROM hybridrec.user_interests_current"
    )

    assert sorted((r["user_id"], r["top_tag"], r["source"]) for r in rows) == [
        ("u1", "newer live", "live"),
        ("u2", "batch tag", "batch"),
    ]


def test_nulls_sort_first_ascending_as_in_spark(work_dir):
    _, rows = _ask(work_dir, "SELECT value FROM hybridrec.metrics_latest ORDER BY value")

    assert [r["value"] for r in rows] == [None, 2]


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        ("SELECT count(*) FROM hybridrec.metrics_latest", "query"),
        ("INSERT INTO hybridrec.interactions SELECT * FROM hybridrec.interactions", "write"),
        ("CREATE TABLE hybridrec.t (a INT)", "write"),
        ("DROP TABLE hybridrec.runs", "write"),
        ("COPY (SELECT 1) TO 'x.csv'", "write"),
        ("ATTACH 'x.db'", "write"),
        ("DESCRIBE TABLE hybridrec.recommendations", "other"),
        ("SHOW TABLES IN hybridrec", "other"),
        ("SELECT 1; SELECT 2", "other"),
        ("SELECT `model` FROM hybridrec.metrics", "query"),
    ],
)
def test_statement_kind_comes_from_duckdbs_parser(statement, kind):
    assert sql_duckdb.statement_kind(statement) == kind


def test_files_outside_the_warehouse_cannot_be_read(work_dir):
    with pytest.raises(sql_duckdb.QueryError, match="disabled"):
        _ask(work_dir, "SELECT * FROM read_csv('/etc/passwd')")


def test_what_duckdb_cannot_bind_goes_to_spark(work_dir):
    with pytest.raises(sql_duckdb.NotForDuckDB):
        _ask(work_dir, "SELECT * FROM hybridrec.no_such_table")


def test_the_cli_path_refuses_writes_before_any_engine_runs(work_dir):
    cfg = load_config([], [f"run.work_dir={work_dir}"])

    for statement in (
        "INSERT INTO hybridrec.metrics SELECT * FROM hybridrec.metrics",
        "DROP TABLE hybridrec.runs",
    ):
        with pytest.raises(sql_access.sql_guard.ReadOnlyError, match="read-only"):
            sql_access.query(cfg, statement, max_rows=10, fmt="table", out=io.StringIO())

    out = io.StringIO()
    answered = sql_access.query(
        cfg, "SELECT count(*) AS n FROM hybridrec.metrics", max_rows=10, fmt="csv", out=out
    )
    assert (answered, out.getvalue()) == ("duckdb", "n\r\n6\r\n")


def test_engine_duckdb_says_what_it_cannot_answer(work_dir):
    cfg = load_config([], [f"run.work_dir={work_dir}"])

    with pytest.raises(sql_access.SqlError, match="--engine duckdb"):
        sql_access.query(
            cfg,
            "SHOW TABLES IN hybridrec",
            max_rows=10,
            fmt="table",
            out=io.StringIO(),
            engine="duckdb",
        )


def test_table_output_keeps_long_values_whole_on_one_line():
    comment = "x" * 250
    text = sql_access.table_text(["col_name", "comment"], [{"col_name": "a", "comment": comment}])

    assert comment in text and "..." not in text
    assert sql_access.table_text(["t"], [{"t": "two\nlines"}]).splitlines()[1] == "two\\nlines"


def test_the_views_and_the_served_model_agree_on_which_reasons_the_text_parts_give():
    import duckdb
    import pandas as pd

    from hybridrec import views
    from udfs.reasons import NAMED_REASONS, REASONS, UNEXPLAINED, text_explained

    named = [prefix + "i7" for prefix, _ in NAMED_REASONS.values()]
    fallbacks = [fallback for _, fallback in NAMED_REASONS.values()]
    reasons = [*named, *fallbacks, *filter(None, REASONS.values()), UNEXPLAINED, None]
    con = duckdb.connect()
    in_sql = [
        bool(
            con.execute(f"SELECT {views.TEXT_REASONS} FROM (SELECT ? AS reason) r", [x]).fetchone()[
                0
            ]
        )
        for x in reasons
    ]

    assert list(text_explained(pd.Series(reasons))) == in_sql
    named_by_text = {r for r, text in zip(reasons, in_sql, strict=True) if text}
    assert named_by_text == {"similar to i7", "matches your reviews"}
