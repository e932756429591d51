"""The binary interaction matrix X and item-item weights applied to it, block by block.

``X[u, i] = 1`` if the user had catalog item i in the fold's history (any event); catalog
positions are id order (``catalog_ids``), so index ties go to the lower id as they do in Spark.
``recommend_dense`` and ``dense_tuning_ranks`` score blocks of users by ``x_u @ W`` against
weights every task holds (EASE's); ``seen_lists`` and ``map_with_broadcast`` also serve
item-kNN's in-memory path. Used by ``hybridrec.evaluation.linear``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.constants import ITEM_COL, USER_COL
from hybridrec.models.cooc import RANK_COL
from hybridrec.ranking import blocks, scoring
from hybridrec.ranking.candidates import MISS_RANK
from udfs.ranking_kernel import ragged_mask, target_ranks, top_k

IDX_COL = "idx"
RECOMMENDATION_SCHEMA = T.StructType(
    [
        T.StructField("model", T.StringType()),
        T.StructField(USER_COL, T.StringType()),
        T.StructField(RANK_COL, T.IntegerType()),
        T.StructField(ITEM_COL, T.StringType()),
    ]
)


def catalog_ids(catalog_items: DataFrame) -> np.ndarray:
    """The catalog's item ids, sorted: index order is id order, so index ties go to the lower id
    as they do in Spark. The catalog is bounded, never the users."""
    frame = catalog_items.select(ITEM_COL).distinct().orderBy(ITEM_COL).toPandas()
    return frame[ITEM_COL].to_numpy(dtype=object)


def item_index(catalog_items: DataFrame) -> tuple[np.ndarray, DataFrame]:
    """The sorted catalog ids and the frame item_id, idx mapping each to its position."""
    ids = catalog_ids(catalog_items)
    return ids, scoring.catalog_index(catalog_items.sparkSession, ids)


def user_items(history: DataFrame, index: DataFrame) -> DataFrame:
    """user_id, idx: X's nonzeros as catalog positions."""
    return (
        history.select(USER_COL, ITEM_COL)
        .join(index, ITEM_COL)
        .select(USER_COL, IDX_COL)
        .distinct()
    )


def dense_top_k(
    block: pd.DataFrame, ids: np.ndarray, weights: np.ndarray, k: int, model: str
) -> pd.DataFrame:
    """Rows model, user_id, rank, item_id: the best k unseen items of each user of ``block``
    (user_id, seen: catalog positions) by ``x_u @ weights``."""
    seen = ragged_mask(block["seen"], len(ids))
    best, _ = top_k(seen.astype(np.float32) @ weights, ~seen, k)
    return list_rows(block[USER_COL].to_numpy(), ids, best, model)


def list_rows(user_ids: np.ndarray, ids: np.ndarray, best: np.ndarray, model: str) -> pd.DataFrame:
    """model, user_id, rank, item_id of ``top_k``'s (users, k) catalog positions (-1 pads)."""
    rows, ranks = np.nonzero(best >= 0)
    return pd.DataFrame(
        {
            "model": np.full(len(rows), model, dtype=object),
            USER_COL: user_ids[rows],
            RANK_COL: (ranks + 1).astype(np.int32),
            ITEM_COL: ids[best[rows, ranks]],
        }
    )


def dense_target_ranks(
    block: pd.DataFrame, weights: Sequence[np.ndarray], first_combo: int = 0
) -> pd.DataFrame:
    """Rows combo, user_id, target_rank: under each of ``weights`` (combos ``first_combo``,
    ``first_combo + 1``, ...), each target's rank among the user's unseen items by
    ``x_u @ weights[c]`` (ties count against it); ``MISS_RANK`` for a target the user already
    had, since seen items are never recommended."""
    n_items = weights[0].shape[0]
    seen = ragged_mask(block["seen"], n_items)
    x = seen.astype(np.float32)
    target = block["target"].to_numpy().astype(np.int64)
    had_target = seen[np.arange(len(target)), target]
    users = block[USER_COL].to_numpy()
    frames = []
    for offset, matrix in enumerate(weights):
        ranks = np.where(had_target, MISS_RANK, target_ranks(x @ matrix, ~seen, target))
        frames.append(
            pd.DataFrame(
                {
                    "combo": np.full(len(target), first_combo + offset, dtype=np.int32),
                    USER_COL: users,
                    "target_rank": ranks.astype(np.int64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def item_lists(history: DataFrame, index: DataFrame) -> DataFrame:
    """items: one row per user, her distinct catalog positions (the pair kernel's input)."""
    return (
        user_items(history, index)
        .groupBy(USER_COL)
        .agg(F.collect_list(F.col(IDX_COL).cast("int")).alias("items"))
        .select("items")
    )


def seen_lists(history: DataFrame, index: DataFrame, users: DataFrame | None) -> DataFrame:
    """user_id, seen: the catalog positions each user (of ``users``, if given) had."""
    pairs = user_items(history, index)
    if users is not None:
        pairs = pairs.join(users.select(USER_COL), USER_COL, "left_semi")
    return pairs.groupBy(USER_COL).agg(F.sort_array(F.collect_list(IDX_COL)).alias("seen"))


def recommend_dense(
    history: DataFrame,
    users: DataFrame | None,
    ids: np.ndarray,
    weights: np.ndarray,
    k: int,
    model: str,
    *,
    block_rows: int = 256,
) -> DataFrame:
    """Top-k unseen items by ``x_u @ weights`` for each user of ``users`` (every user when None)
    with catalog history in ``history``; users without any get no rows.

    Args:
        history: the fold's interactions (user_id, item_id).
        users: user_id of the users to recommend for, or None for all.
        ids: the sorted catalog ids (``catalog_ids``); row/column i of ``weights`` is ``ids[i]``.
        weights: (n, n) item-item weights, broadcast once as float32.
        k: recommendations per user.
        model: the model column's value.
        block_rows: users one numpy product holds (``score.user_block_rows``).

    Returns:
        model, user_id, rank, item_id, already computed (the weights are no longer held).
    """
    index = scoring.catalog_index(history.sparkSession, ids)
    return blocks.map_with_broadcast(
        seen_lists(history, index, users),
        (ids, weights.astype(np.float32, copy=False)),
        block_rows,
        RECOMMENDATION_SCHEMA,
        lambda block, shared: dense_top_k(block, *shared, k, model),
    )


def tuning_seen_lists(history: DataFrame, targets: DataFrame, ids: np.ndarray) -> DataFrame:
    """user_id, seen, target: for each user of ``targets`` (user_id, target: an item_id) with
    catalog history and a catalog target, her catalog positions and her target's; the input of
    ``dense_tuning_ranks``, built once for every weight matrix it is given."""
    index = scoring.catalog_index(history.sparkSession, ids)
    target_idx = targets.join(
        index.select(F.col(ITEM_COL).alias("target"), F.col(IDX_COL).alias("_idx")), "target"
    ).select(USER_COL, F.col("_idx").alias("target"))
    return seen_lists(history, index, target_idx).join(target_idx, USER_COL)


def dense_tuning_ranks(
    seen: DataFrame,
    weights: Sequence[np.ndarray],
    *,
    first_combo: int = 0,
    block_rows: int = 256,
) -> DataFrame:
    """combo, user_id, target_rank for each user of ``seen`` (``tuning_seen_lists``) under
    each of ``weights`` (combos from ``first_combo``), in one pass over the users: every task
    holds all of ``weights``; see ``dense_target_ranks``."""
    shared = [w.astype(np.float32, copy=False) for w in weights]
    return blocks.map_with_broadcast(
        seen,
        shared,
        block_rows,
        scoring.TUNE_SCHEMA,
        lambda block, matrices: dense_target_ranks(block, matrices, first_combo),
    )
