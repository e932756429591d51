"""hybridrec.models.embedding: which texts get encoded and how vectors are averaged (fake 3-d
vectors)."""

from __future__ import annotations

import hashlib
import math

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybridrec.config.loader import load_config
from hybridrec.models import embedding

DAY = 86_400
T0 = 1_700_000_000
INV_SQRT2 = 1 / math.sqrt(2)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _interactions(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    """Rows of (user, item, rating, seconds, text, split) in the interactions shape."""
    schema = (
        "user_id string, item_id string, rating double, ts long, review_text string, split string"
    )
    return spark.createDataFrame(rows, schema).select(
        "user_id",
        "item_id",
        "rating",
        F.timestamp_seconds("ts").alias("event_ts"),
        "review_text",
        "split",
    )


def _vectors(spark: SparkSession, rows: list[tuple], key: str = "text_hash") -> DataFrame:
    return spark.createDataFrame(rows, f"{key} string, embedding array<float>")


def _by_key(df: DataFrame, key: str) -> dict:
    return {row[key]: row for row in df.collect()}


# --- l2_normalised and weighted_mean_vectors --------------------------------------------------


def test_l2_normalised(spark):
    df = spark.createDataFrame(
        [("a", [3.0, 4.0, 0.0]), ("b", [1.0, 2.0, 2.0]), ("zero", [0.0, 0.0, 0.0])],
        "k string, v array<float>",
    )

    normalised = embedding.l2_normalised(df, "v")
    out = {r["k"]: r["v"] for r in normalised.collect()}

    assert normalised.columns == ["k", "v"]
    assert out["a"] == pytest.approx([0.6, 0.8, 0.0], rel=1e-6)
    assert out["b"] == pytest.approx([1 / 3, 2 / 3, 2 / 3], rel=1e-6)
    assert out["zero"] is None  # no direction to keep
    # The norm is summed once per vector, not once per element: the optimiser must not fold the
    # sum back into the scaling lambda (d^2 work, seconds per thousand 384-d vectors).
    plan = normalised._jdf.queryExecution().optimizedPlan().toString()
    assert plan.count("aggregate(") == 1, plan


def test_weighted_mean_vectors_is_normalised_weighted_mean(spark):
    df = spark.createDataFrame(
        [
            ("k1", [1.0, 0.0, 0.0], 1.0),
            ("k1", [0.0, 1.0, 0.0], 3.0),
            ("k2", [0.0, 0.0, 2.0], 0.5),
        ],
        "key string, embedding array<float>, weight double",
    )

    out = _by_key(embedding.weighted_mean_vectors(df, "key"), "key")

    # k1: (1*[1,0,0] + 3*[0,1,0]) / 4 = [0.25, 0.75, 0] -> / sqrt(0.625) = [1, 3, 0] / sqrt(10).
    assert out["k1"]["embedding"] == pytest.approx([0.3162278, 0.9486833, 0.0], rel=1e-6)
    assert out["k1"]["n_texts"] == 2
    assert out["k2"]["embedding"] == pytest.approx([0.0, 0.0, 1.0], rel=1e-6)
    assert out["k2"]["n_texts"] == 1


# --- review_documents ------------------------------------------------------------------------


def test_review_documents_uses_train_reviews_weighted_by_rating(spark, cfg):
    interactions = _interactions(
        spark,
        [
            ("u1", "i1", 4.0, T0, "good", "train"),
            ("u1", "i2", None, T0, "ok", "train"),
            ("u1", "i3", 5.0, T0, "held out", "test"),
            ("u1", "i4", 5.0, T0, "validation text", "validation"),
            ("u1", "i5", 2.0, T0, None, "train"),
            ("u1", "i6", 2.0, T0, "   ", "train"),
            ("u2", "i1", 1.0, T0, "bad", "train"),
        ],
    )

    docs = embedding.review_documents(interactions, cfg)
    rows = sorted(tuple(r) for r in docs.collect())

    # weight = rating / 5; a missing rating counts as the middle of [1, 5]: 3 / 5.
    assert docs.columns == ["user_id", "item_id", "text", "text_hash", "weight"]
    assert rows == [
        ("u1", "i1", "good", _sha("good"), pytest.approx(0.8)),
        ("u1", "i2", "ok", _sha("ok"), pytest.approx(0.6)),
        ("u2", "i1", "bad", _sha("bad"), pytest.approx(0.2)),
    ]


def test_review_documents_halves_weight_every_half_life_before_latest_train_review(spark):
    cfg = load_config([], ["embed.recency_half_life_days=10"])
    interactions = _interactions(
        spark,
        [
            ("u1", "i1", 5.0, T0 + 20 * DAY, "newest", "train"),
            ("u1", "i2", 5.0, T0 + 10 * DAY, "ten days older", "train"),
            ("u1", "i3", 4.0, T0, "twenty days older", "train"),
            # A later held-out review must not move the reference time.
            ("u1", "i4", 5.0, T0 + 40 * DAY, "test review", "test"),
            ("u2", "i1", 5.0, T0 + 5 * DAY, "only one", "train"),
        ],
    )

    weights = {
        (r["user_id"], r["item_id"]): r["weight"]
        for r in embedding.review_documents(interactions, cfg).collect()
    }

    assert weights == {
        ("u1", "i1"): pytest.approx(1.0),
        ("u1", "i2"): pytest.approx(0.5),
        ("u1", "i3"): pytest.approx(0.8 * 0.25),
        ("u2", "i1"): pytest.approx(1.0),
    }


# --- texts_to_encode -------------------------------------------------------------------------


def test_texts_to_encode_skips_texts_cached_for_this_model_only(spark):
    documents = spark.createDataFrame(
        [("h1", "one"), ("h2", "two"), ("h2", "two"), ("h3", "three")],
        "text_hash string, text string",
    )
    cache = spark.createDataFrame(
        [("h1", "model-a", [1.0, 0.0, 0.0]), ("h2", "model-b", [0.0, 1.0, 0.0])],
        "text_hash string, model_id string, embedding array<float>",
    )

    def todo(cache_df, model_id):
        return sorted(
            tuple(r) for r in embedding.texts_to_encode(documents, cache_df, model_id).collect()
        )

    assert todo(cache, "model-a") == [("h2", "two"), ("h3", "three")]
    assert todo(cache, "model-b") == [("h1", "one"), ("h3", "three")]
    assert todo(None, "model-a") == [("h1", "one"), ("h2", "two"), ("h3", "three")]


# --- item and user vectors -------------------------------------------------------------------


def test_item_documents_join_title_and_description(spark):
    items = spark.createDataFrame(
        [("i1", "Tent", "Two person"), ("i2", "Mug", None), ("i3", None, None)],
        "item_id string, title string, description string",
    )

    rows = sorted(tuple(r) for r in embedding.item_documents(items).collect())

    assert rows == [
        ("i1", "Tent. Two person", _sha("Tent. Two person")),
        ("i2", "Mug", _sha("Mug")),
    ]


def test_item_embeddings_weight_own_text_against_reviews(spark, cfg):
    reviews = spark.createDataFrame(
        [("u1", "i1", "h1", 0.2), ("u2", "i2", "h1", 1.0)],
        "user_id string, item_id string, text_hash string, weight double",
    )
    item_docs = spark.createDataFrame([("i1", "h2")], "item_id string, text_hash string")
    vectors = _vectors(spark, [("h1", [1.0, 0.0, 0.0]), ("h2", [0.0, 1.0, 0.0])])

    out = _by_key(embedding.item_embeddings(reviews, item_docs, vectors, cfg, "m1"), "id")

    # i1: one review (weight 1, whatever its rating) and its own text at item_meta_weight 2
    # -> [1, 2, 0] / sqrt(5).
    assert out["i1"]["embedding"] == pytest.approx([0.4472136, 0.8944272, 0.0], rel=1e-6)
    assert out["i1"]["n_texts"] == 2
    assert out["i1"]["model_id"] == "m1"
    assert out["i2"]["embedding"] == pytest.approx([1.0, 0.0, 0.0], rel=1e-6)


def test_user_embeddings_from_reviews_and_fallback_for_silent_users(spark):
    reviews = spark.createDataFrame(
        [("u1", "i1", "h1", 1.0), ("u1", "i2", "h2", 1.0)],
        "user_id string, item_id string, text_hash string, weight double",
    )
    vectors = _vectors(spark, [("h1", [1.0, 0.0, 0.0]), ("h2", [0.0, 1.0, 0.0])])
    interactions = spark.createDataFrame(
        [
            ("u1", "i1", "train"),
            ("u1", "i2", "train"),
            ("u2", "i1", "train"),  # u2 wrote no review: falls back to i1 and i3
            ("u2", "i3", "train"),
            ("u2", "i2", "test"),  # held out: must not shape u2's vector
            ("u3", "i1", "test"),  # nothing in train: no vector at all
        ],
        "user_id string, item_id string, split string",
    )
    items = _vectors(
        spark,
        [("i1", [1.0, 0.0, 0.0]), ("i2", [0.0, 1.0, 0.0]), ("i3", [0.0, 0.0, 1.0])],
        key="id",
    )

    users = embedding.user_embeddings(reviews, vectors, interactions, items, "m1")
    out = _by_key(users, "id")

    assert sorted(users.columns) == ["embedding", "id", "model_id", "n_texts"]
    assert set(out) == {"u1", "u2"}
    assert out["u1"]["embedding"] == pytest.approx([INV_SQRT2, INV_SQRT2, 0.0], rel=1e-6)
    assert out["u1"]["n_texts"] == 2
    assert out["u2"]["embedding"] == pytest.approx([INV_SQRT2, 0.0, INV_SQRT2], rel=1e-6)
    assert out["u2"]["n_texts"] == 0
    assert {r["model_id"] for r in out.values()} == {"m1"}


# --- text_neighbours ---------------------------------------------------------------------------


def _item_vectors(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    return _vectors(spark, rows, key="id")


def test_text_neighbours_are_the_closest_other_items_by_cosine(spark):
    # a (1, 0, 0), b (0.8, 0.6, 0), c (0, 1, 0), d (0, 0, 1)
    vectors = _item_vectors(
        spark,
        [
            ("a", [1.0, 0.0, 0.0]),
            ("b", [0.8, 0.6, 0.0]),
            ("c", [0.0, 1.0, 0.0]),
            ("d", [0.0, 0.0, 1.0]),
        ],
    )

    # Two rows per block: the items of one task span blocks.
    rows = embedding.text_neighbours(vectors, 2, block_rows=2).collect()

    got = {(r["item_id"], r["neighbour_id"]): r["similarity"] for r in rows}
    # a: b .8, then c and d tie at 0 (one of them); b: a .8, c .6; c: b .6, then a/d at 0;
    # d: every other item at 0.
    assert len(rows) == 8
    assert got[("a", "b")] == pytest.approx(0.8) and got[("b", "a")] == pytest.approx(0.8)
    assert got[("b", "c")] == pytest.approx(0.6) and got[("c", "b")] == pytest.approx(0.6)
    assert ("b", "d") not in got
    assert all(item != neighbour for item, neighbour in got)
    assert sum(1 for item, _ in got if item == "d") == 2


def test_text_neighbours_capped_by_the_other_items(spark):
    vectors = _item_vectors(spark, [("a", [1.0, 0.0, 0.0]), ("b", [0.0, 1.0, 0.0])])

    rows = embedding.text_neighbours(vectors, 10, block_rows=64).collect()

    assert sorted((r["item_id"], r["neighbour_id"]) for r in rows) == [("a", "b"), ("b", "a")]


def test_text_neighbours_of_a_single_item_is_empty(spark):
    vectors = _item_vectors(spark, [("a", [1.0, 0.0, 0.0])])

    out = embedding.text_neighbours(vectors, 10, block_rows=64)

    assert out.count() == 0
    assert out.columns == ["item_id", "neighbour_id", "similarity"]
