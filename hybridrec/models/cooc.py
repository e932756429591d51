"""Item-to-item co-occurrence: the items that the same users had, close together in time.

The second collaborative signal beside ALS. ALS compresses every user into a few factors;
co-occurrence keeps the exact "people who had this also had that" pairs, which carries more on
small catalogs and short histories (measured in the README's quality table).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from hybridrec.constants import FOLD_COL, ITEM_COL, TS_COL, USER_COL
from hybridrec.models.folds import history
from hybridrec.models.nearest import keep_best

NEIGHBOUR_COL = "neighbour_id"
SECONDS_PER_DAY = 86_400.0
RANK_COL = "rank"


def cosine_neighbours(pairs: DataFrame, n: int, together: Column | None = None) -> DataFrame:
    """item_id, neighbour_id, similarity, rank: each item's ``n`` most similar other items.

    ``pairs`` holds user_id, item_id, ``_n`` (the item's user count) and any other columns
    ``together`` reads; each user of both items adds ``together`` (1 when None) to the pair,
    reading a column ``c`` of the item as ``c_a`` and of the neighbour as ``c_b``; the sum is
    divided by ``sqrt(users of a * users of b)`` (cosine), so popular items do not neighbour
    everything. Ties go to the lower neighbour_id; items with no user in common are not listed.
    """
    extra = [c for c in pairs.columns if c not in (USER_COL, ITEM_COL)]
    left = pairs.select(USER_COL, ITEM_COL, *[F.col(c).alias(f"{c}_a") for c in extra])
    right = pairs.select(
        USER_COL,
        F.col(ITEM_COL).alias(NEIGHBOUR_COL),
        *[F.col(c).alias(f"{c}_b") for c in extra],
    )
    best_first = Window.partitionBy(ITEM_COL).orderBy(
        F.col("similarity").desc(), F.col(NEIGHBOUR_COL)
    )
    return (
        left.join(right, USER_COL)
        .where(F.col(ITEM_COL) != F.col(NEIGHBOUR_COL))
        .groupBy(ITEM_COL, NEIGHBOUR_COL, "_n_a", "_n_b")
        .agg(F.sum(F.lit(1.0) if together is None else together).alias("_w"))
        .select(
            ITEM_COL,
            NEIGHBOUR_COL,
            (F.col("_w") / F.sqrt(F.col("_n_a") * F.col("_n_b"))).alias("similarity"),
        )
        .withColumn(RANK_COL, F.row_number().over(best_first))
        .where(F.col(RANK_COL) <= n)
    )


def item_neighbours(
    interactions: DataFrame,
    fold: str,
    *,
    history_items: int,
    time_scale_days: float,
    neighbours: int,
) -> DataFrame:
    """Per item, its ``neighbours`` most similar items by time-weighted co-occurrence.

    Two items of one user's newest ``history_items`` count ``exp(-days apart / time_scale_days)``
    towards their pair, so items had together weigh more than items had years apart
    (``cosine_neighbours``). The cap bounds the self-join at ``history_items``² rows per user.

    Returns item_id, neighbour_id, similarity, fold.
    """
    # Each kept (user, item) carries its item's user count, so the self-join needs no lookups.
    pairs = (
        history(interactions, fold)
        .groupBy(USER_COL, ITEM_COL)
        .agg(F.max(F.unix_timestamp(TS_COL)).alias("_t"))
        .withColumn(
            "_r",
            F.row_number().over(
                Window.partitionBy(USER_COL).orderBy(F.col("_t").desc(), F.col(ITEM_COL))
            ),
        )
        .where(F.col("_r") <= history_items)
        .drop("_r")
        .withColumn("_n", F.count(F.lit(1)).over(Window.partitionBy(ITEM_COL)))
    )
    days_apart = F.abs(F.col("_t_a") - F.col("_t_b")) / SECONDS_PER_DAY
    return (
        cosine_neighbours(pairs, neighbours, F.exp(-days_apart / F.lit(float(time_scale_days))))
        .drop(RANK_COL)
        .withColumn(FOLD_COL, F.lit(fold))
    )


def item_transitions(
    interactions: DataFrame, fold: str, *, window: int, neighbours: int
) -> DataFrame:
    """Per item, the ``neighbours`` items most often had next after it: "what came next".

    Each user's distinct items, in the order first had (ties: item id), give directed pairs
    (a, b) for b up to ``window`` places after a, weighted 0.5 ** (places - 1). The summed weight
    is divided by sqrt(max(1, a's outgoing weight) * max(1, b's incoming weight)), so an item
    that follows everything does not lead every list, while a pair seen once between rare items
    does not outrank one many users made. Unlike co-occurrence the pairs are ordered: a season
    is followed by the next one, not the one before. Pairs come from an equi-join on the place
    (one row per pair kept), never a self-join of whole histories.

    Returns item_id, neighbour_id, similarity, fold.
    """
    ordered = (
        history(interactions, fold)
        .groupBy(USER_COL, ITEM_COL)
        .agg(F.min(TS_COL).alias("_first"))
        .withColumn(
            "_place",
            F.row_number().over(Window.partitionBy(USER_COL).orderBy("_first", ITEM_COL)),
        )
        .select(USER_COL, ITEM_COL, "_place")
    )
    after = ordered.select(
        USER_COL, F.col(ITEM_COL).alias(NEIGHBOUR_COL), F.col("_place").alias("_next_place")
    )
    gaps = F.explode(F.sequence(F.lit(1), F.lit(int(window)))).alias("_gap")
    weights = (
        ordered.select(USER_COL, ITEM_COL, "_place", gaps)
        .withColumn("_next_place", F.col("_place") + F.col("_gap"))
        .join(after, [USER_COL, "_next_place"])
        .groupBy(ITEM_COL, NEIGHBOUR_COL)
        .agg(F.sum(F.pow(F.lit(0.5), F.col("_gap") - 1)).alias("_w"))
    )
    out_weight = F.sum("_w").over(Window.partitionBy(ITEM_COL))
    in_weight = F.sum("_w").over(Window.partitionBy(NEIGHBOUR_COL))
    similarity = weights.select(
        ITEM_COL,
        NEIGHBOUR_COL,
        (
            F.col("_w")
            / F.sqrt(F.greatest(out_weight, F.lit(1.0)) * F.greatest(in_weight, F.lit(1.0)))
        ).alias("similarity"),
    )
    return keep_best(similarity, ITEM_COL, NEIGHBOUR_COL, "similarity", neighbours).withColumn(
        FOLD_COL, F.lit(fold)
    )
