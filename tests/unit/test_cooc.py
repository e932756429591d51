"""hybridrec.models.cooc: item co-occurrence neighbours on a real local Spark session."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyspark.sql import functions as F

from hybridrec.constants import TEST, TRAIN, VALIDATION
from hybridrec.models.cooc import item_neighbours, item_transitions

T0 = 1_700_000_000
DAY = 86_400


def _interactions(spark, rows):
    """rows: (user, item, days after T0, split)."""
    return spark.createDataFrame(
        [(u, i, T0 + d * DAY, s) for u, i, d, s in rows],
        "user_id string, item_id string, ts long, split string",
    ).select("user_id", "item_id", F.timestamp_seconds("ts").alias("event_ts"), "split")


def _similarities(df) -> dict[tuple[str, str], float]:
    return {(r["item_id"], r["neighbour_id"]): r["similarity"] for r in df.collect()}


ROWS = [
    ("u1", "a", 0, TRAIN),
    ("u1", "b", 0, TRAIN),
    ("u1", "c", 30, TRAIN),
    ("u2", "a", 5, TRAIN),
    ("u2", "b", 5, TRAIN),
    ("u3", "c", 1, TRAIN),
    ("u3", "d", 1, VALIDATION),
    ("u2", "d", 9, TEST),
]


def test_similarity_is_time_weighted_cooccurrence_over_cosine_norm(spark):
    interactions = _interactions(spark, ROWS)
    neighbours = item_neighbours(
        interactions, VALIDATION, history_items=50, time_scale_days=30.0, neighbours=10
    )
    sims = _similarities(neighbours)

    # a, b: together the same day for u1 and u2 (weight 2), each had by 2 users -> 2 / 2.
    assert sims[("a", "b")] == pytest.approx(1.0)
    assert sims[("b", "a")] == pytest.approx(1.0)
    # a, c: u1 had them 30 days apart (weight e^-1); a has 2 users, c has 2 (u1, u3).
    assert sims[("a", "c")] == pytest.approx(math.exp(-1) / 2)
    assert set(neighbours.select("fold").distinct().toPandas()["fold"]) == {VALIDATION}


def test_each_fold_pairs_only_its_history(spark):
    interactions = _interactions(spark, ROWS)

    validation = _similarities(
        item_neighbours(
            interactions, VALIDATION, history_items=50, time_scale_days=30.0, neighbours=10
        )
    )
    test = _similarities(
        item_neighbours(interactions, TEST, history_items=50, time_scale_days=30.0, neighbours=10)
    )

    # d is held out of the validation fold; in the test fold u3's validation pair (c, d) counts,
    # while u2's test item d still does not.
    assert not any("d" in pair for pair in validation)
    assert test[("c", "d")] == pytest.approx(1 / math.sqrt(2 * 1))
    assert ("a", "d") not in test


def test_neighbours_and_history_caps(spark):
    interactions = _interactions(spark, ROWS)

    top1 = item_neighbours(
        interactions, VALIDATION, history_items=50, time_scale_days=30.0, neighbours=1
    )
    newest2 = item_neighbours(
        interactions, VALIDATION, history_items=2, time_scale_days=30.0, neighbours=10
    )

    assert top1.groupBy("item_id").count().where("count > 1").count() == 0
    assert _similarities(top1)[("a", "b")] == pytest.approx(1.0)
    # u1's newest two are c (day 30) and a (a ties b on day 0; the lower id wins): b leaves u1's
    # pairs, so only u2 pairs a with b, and b now counts one user.
    capped = _similarities(newest2)
    assert ("b", "c") not in capped
    assert ("a", "c") in capped
    assert capped[("a", "b")] == pytest.approx(1 / math.sqrt(2 * 1))


def test_catalog_holds_neighbours_as_padded_index_arrays_best_first(spark):
    from hybridrec.ranking.scoring import build_catalog

    items = spark.createDataFrame([("a",), ("b",), ("c",)], "item_id string")
    pop = spark.createDataFrame([("a", 1.0)], "item_id string, popularity double")
    neighbours = spark.createDataFrame(
        [("a", "c", 0.2), ("a", "b", 0.9), ("b", "a", 0.9), ("b", "z", 0.5)],
        "item_id string, neighbour_id string, similarity double",
    )

    catalog = build_catalog(items, None, None, pop, neighbours)

    # z is outside the catalog: dropped. c has no neighbours: all padding.
    assert catalog.ids.tolist() == ["a", "b", "c"]
    assert catalog.neighbours.tolist() == [[1, 2], [0, -1], [-1, -1]]
    np.testing.assert_allclose(catalog.neighbour_sims, [[0.9, 0.2], [0.9, 0.0], [0.0, 0.0]])


# u1 had a, b, c in that order; u2 a then c; u3 b then a (and d, held out for validation).
ORDERED = [
    ("u1", "a", 0, TRAIN),
    ("u1", "b", 1, TRAIN),
    ("u1", "c", 2, TRAIN),
    ("u2", "a", 0, TRAIN),
    ("u2", "c", 1, TRAIN),
    ("u3", "b", 0, TRAIN),
    ("u3", "a", 1, TRAIN),
    ("u3", "d", 2, VALIDATION),
]


def test_transitions_are_directed_place_weighted_and_normalised(spark):
    interactions = _interactions(spark, ORDERED)

    sims = _similarities(item_transitions(interactions, VALIDATION, window=2, neighbours=10))

    # Weights: a->b 1 (u1), a->c .5 (u1, two places on) + 1 (u2), b->c 1, b->a 1 (u3).
    # Outgoing a 2.5, b 2; incoming b 1, c 2.5, a 1.
    assert sims == pytest.approx(
        {
            ("a", "b"): 1 / math.sqrt(2.5 * 1),
            ("a", "c"): 1.5 / math.sqrt(2.5 * 2.5),
            ("b", "c"): 1 / math.sqrt(2 * 2.5),
            ("b", "a"): 1 / math.sqrt(2 * 1),
        }
    )
    # Nothing came after c, and d is held out of the validation fold's history.
    assert not {pair for pair in sims if pair[0] in ("c", "d") or pair[1] == "d"}


def test_transitions_window_neighbours_and_folds(spark):
    interactions = _interactions(spark, ORDERED)

    one_place = _similarities(item_transitions(interactions, VALIDATION, window=1, neighbours=10))
    best_only = _similarities(item_transitions(interactions, VALIDATION, window=2, neighbours=1))
    test_fold = item_transitions(interactions, TEST, window=1, neighbours=10)

    # Within one place, u1's a->c (two places on) no longer counts: only u2's.
    assert one_place[("a", "c")] == pytest.approx(1 / math.sqrt(2 * 2))
    # Each item keeps its one most frequent successor.
    assert set(best_only) == {("a", "b"), ("b", "a")}
    # The test fold's history has the validation split: u3 had d after a.
    assert ("a", "d") in _similarities(test_fold)
    assert set(test_fold.select("fold").distinct().toPandas()["fold"]) == {TEST}
