"""The item-kNN baseline's scoring, all in Spark at any catalog size.

X is binary, ``X[u, i] = 1`` if the user had catalog item i in the fold's history
(``interacted``). Each item's best neighbours are the most similar item columns by cosine
(``cosine_neighbours``); a user's score for an unseen item is the sum of the similarities of her
history items that list it (``knn_scores``); from those scores come the top K
(``recommend_knn``) and a held-out target's rank (``knn_target_ranks``). Tuned on validation by
``hybridrec.evaluation.linear``, which imports this module, never the other way.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from hybridrec.constants import ITEM_COL, USER_COL
from hybridrec.models import cooc
from hybridrec.models.cooc import NEIGHBOUR_COL, RANK_COL
from hybridrec.ranking.candidates import MISS_RANK

# Spark sums a user's votes in no fixed order, and the same votes summed in another order can
# differ in the last bits; rounded, equal vote sets tie and go to the lower item_id on every run.
SCORE_DECIMALS = 9


def interacted(history: DataFrame, catalog: DataFrame) -> DataFrame:
    """user_id, item_id: X's nonzeros, each catalog item a user had once however many events."""
    return (
        history.select(USER_COL, ITEM_COL)
        .join(catalog.select(ITEM_COL), ITEM_COL, "left_semi")
        .distinct()
    )


def cosine_neighbours(history: DataFrame, catalog: DataFrame, n: int) -> DataFrame:
    """item_id, neighbour_id, similarity, rank: each catalog item's ``n`` most similar other
    items by the cosine of X's columns, users of both / sqrt(users of each); ties go to the lower
    neighbour_id. Items without a user in common are not listed."""
    pairs = interacted(history, catalog).withColumn(
        "_n", F.count(F.lit(1)).over(Window.partitionBy(ITEM_COL))
    )
    return cooc.cosine_neighbours(pairs, n)


def knn_scores(seen: DataFrame, neighbours: DataFrame, n_neighbours: int) -> DataFrame:
    """user_id, item_id, score: for each user of ``seen`` (user_id, item_id) and each unseen
    item, the summed similarity of her items that have it among their first ``n_neighbours``
    neighbours. Items without such a vote get no row."""
    votes = (
        seen.join(neighbours.where(F.col(RANK_COL) <= n_neighbours), ITEM_COL)
        .groupBy(USER_COL, NEIGHBOUR_COL)
        .agg(F.round(F.sum("similarity"), SCORE_DECIMALS).alias("score"))
        .withColumnRenamed(NEIGHBOUR_COL, ITEM_COL)
    )
    return votes.join(seen, [USER_COL, ITEM_COL], "left_anti")


def recommend_knn(
    seen: DataFrame, neighbours: DataFrame, n_neighbours: int, k: int, model: str
) -> DataFrame:
    """model, user_id, rank, item_id: each user's ``k`` best-scored unseen items (ties to the
    lower item_id); fewer where fewer items got a vote."""
    best_first = Window.partitionBy(USER_COL).orderBy(F.col("score").desc(), F.col(ITEM_COL))
    return (
        knn_scores(seen, neighbours, n_neighbours)
        .withColumn(RANK_COL, F.row_number().over(best_first))
        .where(F.col(RANK_COL) <= k)
        .select(F.lit(model).alias("model"), USER_COL, F.col(RANK_COL).cast("int"), ITEM_COL)
    )


def knn_target_ranks(
    seen: DataFrame, targets: DataFrame, neighbours: DataFrame, n_neighbours: int
) -> DataFrame:
    """user_id, target_rank for each user of ``targets`` (user_id, target) with history in
    ``seen``: 1 + the unseen items scored at least as high as the target (ties count against
    it, as ``udfs.ranking_kernel.target_ranks``); ``MISS_RANK`` for a target without a vote or
    one the user already had."""
    is_target = F.col(ITEM_COL) == F.col("target")
    # The target's score beside every scored item of its user, then one count per user: a
    # window and a group by on the same key share one shuffle.
    ranked = (
        knn_scores(seen, neighbours, n_neighbours)
        .join(targets, USER_COL)
        .withColumn(
            "_target_score",
            F.max(F.when(is_target, F.col("score"))).over(Window.partitionBy(USER_COL)),
        )
        .groupBy(USER_COL)
        .agg(
            F.max("_target_score").alias("_target_score"),
            F.count(F.when((F.col("score") >= F.col("_target_score")) & ~is_target, 1)).alias(
                "_ahead"
            ),
        )
    )
    return (
        targets.join(seen.select(USER_COL).distinct(), USER_COL, "left_semi")
        .join(ranked, USER_COL, "left")
        .select(
            USER_COL,
            F.when(F.col("_target_score").isNull(), F.lit(MISS_RANK))
            .otherwise(1 + F.col("_ahead"))
            .cast("long")
            .alias("target_rank"),
        )
    )
