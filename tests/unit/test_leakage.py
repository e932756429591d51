"""No held-out data feeds a fold's models.

Each fold's fitted inputs (review documents and their weights, item and user text vectors, the
items closest by text, ALS preferences, popularity, co-occurrence neighbours) are computed on a
small interactions table, then again with rows added that exist only in a held-out split. Rows
only in ``test`` must change nothing in any fold; rows only in ``validation`` must change
nothing in the early and validation folds but must change the test fold, which is fitted on
train and validation. The same rows labelled ``train`` change every output of both folds, so each
comparison below is able to fail. The early fold must be exactly the validation fold of the
table one item earlier (each user's newest train item held out).
"""

from __future__ import annotations

import hashlib
import json
from functools import reduce

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybridrec.config.loader import Config, load_config
from hybridrec.constants import EARLY, FOLDS, TEST, TRAIN, VALIDATION
from hybridrec.models import cf, cooc, embedding
from hybridrec.ranking import scoring

T0 = 1_700_000_000
DAY = 86_400
MODEL_ID = "fake-3d"
OUTPUTS = (
    "documents",
    "item_vectors",
    "user_vectors",
    "text_neighbours",
    "preferences",
    "popularity",
    "neighbours",
)

# Fake encoder: every text used below has a fixed 3-d vector, each pointing somewhere else.
# No base vector is a mean of more than two terms: two doubles add the same in either order, so
# outputs compare exactly whatever the order Spark happens to aggregate rows in.
VECTORS = {
    "great tent": [1.0, 0.0, 0.0],
    "leaks a bit": [0.0, 1.0, 0.0],
    "warm bag": [0.0, 0.0, 1.0],
    "Tarp. Two person": [1.0, 1.0, 0.0],
    "Stove. Gas": [0.0, 1.0, 1.0],
    "validation review": [1.0, 0.0, 1.0],
    "test review": [0.2, 0.3, 0.9],
}

# user, item, rating, event_type, seconds, text, origin, split
BASE = [
    ("u1", "i1", 5.0, "rating", T0, "great tent", "behaviour+review", TRAIN),
    ("u1", "i2", 2.0, "rating", T0 + 10 * DAY, "leaks a bit", "behaviour+review", TRAIN),
    ("u1", "i2", None, "click", T0 + 11 * DAY, None, "behaviour", TRAIN),
    ("u2", "i1", 4.0, "review", T0 + 2 * DAY, "warm bag", "review", TRAIN),
    ("u2", "i2", None, "purchase", T0 + 3 * DAY, None, "behaviour", TRAIN),
    ("u3", "i1", None, "click", T0 + 4 * DAY, None, "behaviour", TRAIN),  # a silent user
    # i3 already has one user in train, so it is in every fold's catalog.
    ("u2", "i3", 3.0, "rating", T0 + 5 * DAY, None, "behaviour", TRAIN),
]


def _extra(text: str, split: str) -> list[tuple]:
    """Rows that reach every output once they are history: a review by u1 of an item u1 never had
    (a new document and (u1, i3) preference, a second user for i3, i3's and u1's vectors move,
    and as u1's newest review it moves the recency weight of u1's older ones) and a new item of
    the silent u3 (its fallback vector moves)."""
    return [
        ("u1", "i3", 5.0, "rating", T0 + 30 * DAY, text, "behaviour+review", split),
        ("u3", "i2", None, "purchase", T0 + 31 * DAY, None, "behaviour", split),
    ]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _interactions(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    schema = (
        "user_id string, item_id string, rating double, event_type string, ts long, "
        "review_text string, origin string, split string"
    )
    return spark.createDataFrame(rows, schema).select(
        "user_id",
        "item_id",
        "rating",
        "event_type",
        F.timestamp_seconds("ts").alias("event_ts"),
        "review_text",
        "origin",
        "split",
    )


@pytest.fixture(scope="module")
def leak_cfg() -> Config:
    # Recency weighting on, so that a leaked newest review would also move older reviews' weights.
    return load_config([], ["embed.recency_half_life_days=7"])


@pytest.fixture(scope="module")
def fit(spark, leak_cfg):
    """``fit(rows, fold)``: every fitted output of ``fold`` as its sorted rows (JSON), by name."""
    vectors = spark.createDataFrame(
        [(_sha(text), vector) for text, vector in VECTORS.items()],
        "text_hash string, embedding array<float>",
    )
    item_docs = spark.createDataFrame(
        [("i2", _sha("Tarp. Two person")), ("i3", _sha("Stove. Gas"))],
        "item_id string, text_hash string",
    )

    def run(rows: list[tuple], fold: str) -> dict[str, list[str]]:
        interactions = _interactions(spark, rows)
        docs = embedding.review_documents(interactions, leak_cfg, fold)
        items = embedding.item_embeddings(docs, item_docs, vectors, leak_cfg, MODEL_ID)
        users = embedding.user_embeddings(docs, vectors, interactions, items, MODEL_ID, fold)
        frames = {
            "documents": docs,
            "item_vectors": items,
            "user_vectors": users,
            "text_neighbours": embedding.text_neighbours(items, 100, 64),
            "preferences": cf.preferences(interactions, leak_cfg, fold),
            "popularity": scoring.popularity(interactions, fold),
            "neighbours": cooc.item_neighbours(
                interactions, fold, history_items=50, time_scale_days=30.0, neighbours=100
            ),
        }
        # One query for all outputs: a row per output row, as JSON (floats written exactly).
        rows = reduce(
            DataFrame.unionByName,
            [
                df.select(F.lit(name).alias("output"), F.to_json(F.struct("*")).alias("row"))
                for name, df in frames.items()
            ],
        ).collect()
        return {name: sorted(r["row"] for r in rows if r["output"] == name) for name in frames}

    return run


@pytest.fixture(scope="module")
def base(fit) -> dict[str, dict[str, list[str]]]:
    return {fold: fit(BASE, fold) for fold in FOLDS}


def test_the_base_data_feeds_every_output(base):
    assert set(FOLDS) == {EARLY, VALIDATION, TEST}
    for fold, outputs in base.items():
        assert set(outputs) == set(OUTPUTS)
        for name, rows in outputs.items():
            assert rows, f"{fold} fold: {name} is empty, so a comparison on it proves nothing"
    # u3 wrote nothing: its vector is the fallback from its items (n_texts 0).
    users = {row["id"]: row for row in map(json.loads, base[TEST]["user_vectors"])}
    assert set(users) == {"u1", "u2", "u3"}
    assert users["u3"]["n_texts"] == 0


@pytest.mark.parametrize("fold", [EARLY, VALIDATION, TEST])
def test_rows_only_in_test_change_no_fold(fit, base, fold):
    assert fit(BASE + _extra("test review", TEST), fold) == base[fold]


@pytest.mark.parametrize("fold", [EARLY, VALIDATION])
def test_rows_only_in_validation_change_nothing_in_the_validation_fold(fit, base, fold):
    assert fit(BASE + _extra("validation review", VALIDATION), fold) == base[fold]


def _newest_train_as_validation(rows: list[tuple]) -> list[tuple]:
    """``rows`` (train only) with each user's newest train item, of two or more, relabelled
    validation: the table one item earlier, written out by hand."""
    newest = {}
    for user, item, *_, ts, _, _, _ in rows:
        newest[user] = max(newest.get(user, (ts, item)), (ts, item))
    items = {user: {r[1] for r in rows if r[0] == user} for user in newest}
    held = {(user, item) for user, (_, item) in newest.items() if len(items[user]) >= 2}
    return [(*r[:7], VALIDATION) if (r[0], r[1]) in held else r for r in rows]


def test_the_early_fold_is_the_validation_fold_one_item_earlier(fit, base):
    rows = BASE + _extra("test review", TRAIN)
    earlier = _newest_train_as_validation(rows)
    assert sum(r[7] == VALIDATION for r in earlier) == 3  # u1's i3, u2's i3, u3's i2
    as_validation = {
        name: [row.replace('"fold":"early"', '"fold":"validation"') for row in out]
        for name, out in fit(rows, EARLY).items()
    }
    assert as_validation == fit(earlier, VALIDATION)
    # The held-out items are what differs from the validation fold of the same rows.
    assert fit(rows, EARLY) != fit(rows, VALIDATION)


def test_rows_only_in_validation_change_every_output_of_the_test_fold(fit, base):
    refit = fit(BASE + _extra("validation review", VALIDATION), TEST)

    changed = {name for name in OUTPUTS if refit[name] != base[TEST][name]}

    assert changed == set(OUTPUTS)


def test_the_same_rows_in_train_change_every_output_of_the_validation_fold(fit, base):
    # Guards the validation-fold comparisons above (the test fold has its guard just before):
    # the added rows do reach every output once they are history.
    refit = fit(BASE + _extra("test review", TRAIN), VALIDATION)

    changed = {name for name in OUTPUTS if refit[name] != base[VALIDATION][name]}

    assert changed == set(OUTPUTS)
