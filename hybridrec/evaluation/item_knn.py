"""The item-kNN baseline's scoring, all in Spark at any catalog size.

X is binary, ``X[u, i] = 1`` if the user had catalog item i in the fold's history
(``interacted``). Each item's best neighbours are the most similar item columns by cosine
(``cosine_neighbours``); a user's score for an unseen item is the sum of the similarities of her
history items that list it (``knn_scores``); from those scores come the top K
(``recommend_knn``) and a held-out target's rank (``knn_target_ranks``). Tuned on validation by
``hybridrec.evaluation.linear``, which imports this module, never the other way.

Where the catalog is held in memory (full ranking, or candidates chosen in memory), the votes
are summed in numpy instead, one block of users at a time against the neighbour lists as
(items, n) arrays (``cooc.cosine_positions``, ``block_scores``): the same scores, ranks and
ties, and every neighbour count of the grid from one pass over the users, where Spark makes a
row of every (user, history item, neighbour) once per count. Where EASE's Gram matrix XᵀX is
counted anyway (catalogs up to ``evaluate.ease.max_items``), the lists are taken from it
(``neighbours_from_gram``) instead of from ``cosine_neighbours``' pair sums over histories.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from hybridrec.constants import ITEM_COL, USER_COL
from hybridrec.evaluation.matrix import list_rows
from hybridrec.models import cooc
from hybridrec.models.cooc import NEIGHBOUR_COL, RANK_COL
from hybridrec.ranking.candidates import MISS_RANK
from udfs.ranking_kernel import padded_history, top_k

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
    return cooc.cosine_neighbours(interacted(history, catalog), n)


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


# --- in memory, block by block --------------------------------------------------------------


def neighbours_from_gram(
    gram: np.ndarray, n: int, block_rows: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """``cooc.cosine_positions``' lists taken from the fold's Gram matrix XᵀX (rows
    and columns in catalog order; the diagonal holds each item's users) instead of a self-join
    of histories: users of both / sqrt(users of each), in double as Spark computes it, pairs
    without a common user left out, ties to the lower neighbour. Rows in blocks, so the
    similarities are never a second items x items matrix."""
    n_items = len(gram)
    width = max(1, min(n, n_items - 1))
    lists = np.full((n_items, width), -1, np.int64)
    sims = np.zeros((n_items, width), np.float64)
    users = np.diag(gram).astype(np.int64)
    for start in range(0, n_items, block_rows):
        stop = min(start + block_rows, n_items)
        together = gram[start:stop]
        with np.errstate(divide="ignore", invalid="ignore"):  # items without users: unlisted
            similar = together / np.sqrt(
                (users[start:stop, None] * users[None, :]).astype(np.float64)
            )
        listed = together > 0
        listed[np.arange(stop - start), np.arange(start, stop)] = False
        best, best_sims = top_k(np.where(listed, similar, 0.0), listed, width)
        lists[start:stop] = best
        sims[start:stop] = np.where(best >= 0, best_sims, 0.0)
    return lists, sims


def block_scores(
    seen: pd.Series, lists: np.ndarray, sims: np.ndarray, n_neighbours: int
) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) ``knn_scores`` of one block (``seen``: each user's catalog positions) and
    where an unseen item got a vote, the scores rounded as Spark's are."""
    return _BlockVotes(seen, lists, sims, n_neighbours).scores(n_neighbours)


class _BlockVotes:
    """A block's history items and their neighbour lists up to ``width``, gathered once; the
    scores for any count up to it are then one ``bincount`` of a slice."""

    def __init__(self, seen: pd.Series, lists: np.ndarray, sims: np.ndarray, width: int):
        self.n_items = len(lists)
        self.history = padded_history(seen, self.n_items)
        items = np.maximum(self.history, 0)
        known = (self.history >= 0)[:, :, None]
        self.listed = np.where(known, lists[items][:, :, :width], -1)
        self.sims = sims[items][:, :, :width]
        users = len(self.history)
        self.had = np.zeros((users, self.n_items), bool)
        rows = np.repeat(np.arange(users), (self.history >= 0).sum(axis=1))
        self.had[rows, self.history[self.history >= 0]] = True

    def scores(self, n_neighbours: int) -> tuple[np.ndarray, np.ndarray]:
        listed = self.listed[:, :, :n_neighbours]
        present = listed >= 0
        users = len(listed)
        flat = (np.arange(users)[:, None, None] * self.n_items + listed)[present]
        size = users * self.n_items
        scores = np.bincount(
            flat, weights=self.sims[:, :, :n_neighbours][present], minlength=size
        ).reshape(users, self.n_items)
        voted = np.zeros(size, bool)
        voted[flat] = True
        return np.round(scores, SCORE_DECIMALS), voted.reshape(users, self.n_items) & ~self.had


def block_target_ranks(
    block: pd.DataFrame, lists: np.ndarray, sims: np.ndarray, grid: list[int]
) -> pd.DataFrame:
    """combo, user_id, target_rank per neighbour count of ``grid`` (its combo) for the users of
    ``block`` (user_id, seen, target: a catalog position), as ``knn_target_ranks``."""
    target = block["target"].to_numpy(np.int64)
    rows = np.arange(len(block))
    frames = []
    votes = _BlockVotes(block["seen"], lists, sims, max(grid))
    for combo, n in enumerate(grid):
        scores, ranked = votes.scores(n)
        target_score = scores[rows, target]
        ahead = (ranked & (scores >= target_score[:, None])).sum(axis=1) - ranked[rows, target]
        frames.append(
            pd.DataFrame(
                {
                    "combo": np.full(len(block), combo, np.int32),
                    USER_COL: block[USER_COL].to_numpy(),
                    "target_rank": np.where(ranked[rows, target], 1 + ahead, MISS_RANK).astype(
                        np.int64
                    ),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def block_top_k(
    block: pd.DataFrame,
    ids: np.ndarray,
    lists: np.ndarray,
    sims: np.ndarray,
    n_neighbours: int,
    k: int,
    model: str,
) -> pd.DataFrame:
    """model, user_id, rank, item_id: ``recommend_knn`` of one block (ties to the lower id)."""
    scores, ranked = block_scores(block["seen"], lists, sims, n_neighbours)
    best, _ = top_k(scores, ranked, k)
    return list_rows(block[USER_COL].to_numpy(), ids, best, model)
