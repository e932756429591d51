"""The history the candidate path reads is full ranking's: catalog items only, newest first, and
items of one timestamp (reviews dated by day) in descending id order, since each position sets an
item's recency weight."""

from __future__ import annotations

from hybridrec.ranking import candidates


def test_recent_history_orders_like_full_ranking_and_skips_items_outside_the_catalog(spark):
    interactions = spark.createDataFrame(
        [
            ("u1", "a", "2020-01-01 00:00:00", "train"),
            ("u1", "b", "2020-01-03 00:00:00", "train"),
            ("u1", "c", "2020-01-03 00:00:00", "train"),
            ("u1", "x", "2020-01-04 00:00:00", "train"),  # not in the catalog
            ("u1", "d", "2020-01-02 00:00:00", "validation"),
            ("u2", "a", "2020-01-05 00:00:00", "train"),
        ],
        "user_id string, item_id string, event_ts string, split string",
    ).selectExpr("user_id", "item_id", "cast(event_ts as timestamp) as event_ts", "split")
    items = spark.createDataFrame([("a",), ("b",), ("c",), ("d",)], "item_id string")
    tables = candidates.FoldTables(interactions, items, *[None] * 8)

    rows = candidates.recent_history(tables, "validation", 10).orderBy("user_id", "pos").collect()

    assert [(r.user_id, r._from, r.pos) for r in rows] == [
        ("u1", "c", 0),
        ("u1", "b", 1),
        ("u1", "a", 2),
        ("u2", "a", 0),
    ]
    newest_two = candidates.recent_history(tables, "test", 2).where("user_id = 'u1'")
    assert [r._from for r in newest_two.orderBy("pos").collect()] == ["c", "b"]
