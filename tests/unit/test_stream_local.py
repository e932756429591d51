"""hybridrec.streaming.local: the driver-side fold of a small micro-batch computes what the batch's
Spark functions compute (preferences, review weights, repeats) on the same rows."""

from __future__ import annotations

import pandas as pd
import pytest
from pyspark.sql import functions as F

from hybridrec.config.loader import load_config
from hybridrec.models import cf, embedding
from hybridrec.streaming import events, local

SCHEMA = (
    "user_id string, item_id string, rating double, event_type string, ts long, "
    "review_text string, origin string"
)
ROWS = [
    ("u1", "i1", 4.0, "rating", 1_700_000_000, "good paper", "behaviour+review"),
    ("u1", "i1", None, "click", 1_700_000_100, None, "behaviour"),
    ("u1", "i2", None, "purchase", 1_700_086_400, "  ", "behaviour"),
    ("u1", "i3", 2.0, "rating", 1_700_172_800, "thin, late", "behaviour+review"),
    ("u2", "i2", None, "click", 1_700_000_000, None, "behaviour"),
    ("u2", "i2", 5.0, "rating", 1_700_000_500, "loved it", "behaviour+review"),
]


@pytest.fixture(scope="module")
def history(spark):
    df = spark.createDataFrame(ROWS, SCHEMA)
    df = df.select(
        "user_id",
        "item_id",
        "rating",
        "event_type",
        F.timestamp_seconds("ts").alias("event_ts"),
        "review_text",
        "origin",
    )
    return df.withColumn("split", F.lit("train"))


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys).reset_index(drop=True)


@pytest.mark.parametrize("implicit", [True, False])
def test_preferences_are_the_batch_ones(history, implicit):
    cfg = load_config(
        ["conf/local.yaml"],
        [f"als.implicit={str(implicit).lower()}", "als.event_weights={click: 0.5, purchase: 3}"],
    )
    spark_prefs = _sorted(cf.preferences(history, cfg, "test").toPandas(), ["user_id", "item_id"])
    driver = _sorted(local.preferences(history.toPandas(), cfg), ["user_id", "item_id"])
    pd.testing.assert_frame_equal(driver, spark_prefs, check_dtype=False)


@pytest.mark.parametrize("half_life", [None, 2.0])
def test_review_documents_are_the_batch_ones(history, half_life):
    cfg = load_config(["conf/local.yaml"], [f"embed.recency_half_life_days={half_life or 'null'}"])
    keys = ["user_id", "item_id"]
    batch = embedding.review_documents(history, cfg, "test").toPandas()
    driver = local.review_documents(history.toPandas(), cfg)
    assert len(driver) == 3  # the blank review is no document
    pd.testing.assert_frame_equal(_sorted(driver, keys), _sorted(batch, keys), check_dtype=False)


def test_repeats_are_exact_with_nulls_equal(history):
    seen = history.toPandas()
    new = seen.iloc[[1]].assign(item_id="i9")  # the same click on another item: new
    repeat = seen.iloc[[1]]  # rating and text null in both: a repeat
    other_text = seen.iloc[[0]].assign(review_text="good paper!")
    batch = pd.concat([new, repeat, other_text], ignore_index=True)[events.EVENT_COLUMNS]
    kept = local.drop_repeats(batch, seen)
    assert kept["item_id"].tolist() == ["i9", "i1"]
    assert kept["review_text"].tolist()[1] == "good paper!"


def test_a_history_without_review_text_needs_no_vector(history):
    cfg = load_config(["conf/local.yaml"])
    # As a JSON request or a CSV without any text reads: a column of missing floats.
    silent = history.toPandas().assign(review_text=float("nan"))
    docs = local.review_documents(silent, cfg)
    state = local.LocalServing(interactions=None, texts=None, item_vectors=pd.Series(dtype=object))

    vectors, encoded = local.text_vectors(state, docs, cfg, "run", {}, set())

    assert docs.empty and vectors == {} and encoded.empty
