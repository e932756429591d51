"""Ranking over per-user candidates: for catalogs too large to send whole to every task.

Full ranking (``hybridrec.ranking.scoring``) broadcasts the item catalog and scores every unseen
item for every user. Above ``score.candidates.max_full_items`` ranking broadcasts nothing
item-sized (``hybridrec.ranking.rank`` chooses):

1. Candidates, all in Spark: the ALS top-N of each user (blocked factor products: each task
   multiplies one block of users by one block of items), the best co-occurrence and text
   neighbours and the items most often had next after the user's newest history items (joins
   with the neighbour tables, votes weighted as in full ranking), and the most popular items.
   Items the user already has are left out.
2. Each candidate pair is joined with its item's factors and text vector (a shuffle by item,
   not a broadcast); the pairs of a group of users meet their users' vectors (a cogroup) and
   the same kernel as full ranking normalises, fuses and ranks them (``udfs.candidate_kernel``).

Votes of the recent part always come from the text neighbour lists here (full ranking at
sharpness 1 compares with every item instead). Normalisation runs over the candidates, so
weights are tuned in the same mode they are used in; the share of held-out validation items
that were candidates (candidate recall) bounds what any weighting can reach and is logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config.loader import Config
from hybridrec.constants import (
    ALS_ITEM_FACTORS,
    ALS_USER_FACTORS,
    EMBEDDING_COL,
    FACTORS_COL,
    INTERACTIONS,
    ITEM_COL,
    ITEM_EMBEDDINGS,
    ITEM_NEIGHBOURS,
    ITEM_TEXT_NEIGHBOURS,
    ITEM_TRANSITIONS,
    ITEMS,
    TS_COL,
    USER_COL,
    USER_EMBEDDINGS,
)
from hybridrec.models import nearest
from hybridrec.models.cooc import NEIGHBOUR_COL
from hybridrec.models.folds import held_out, history
from hybridrec.ranking import scoring
from hybridrec.store.tables import Warehouse
from udfs import candidate_kernel

log = logging.getLogger(__name__)

GROUP_COL = "_group"
MISS_RANK = candidate_kernel.MISS_RANK


def use_candidates(cfg: Config, n_items: int) -> bool:
    """Whether a catalog of ``n_items`` is ranked over candidates (see the module doc)."""
    mode = cfg.score.candidates.mode
    return mode == "candidates" or (
        mode == "auto" and n_items > cfg.score.candidates.max_full_items
    )


@dataclass
class FoldTables:
    """What ranking one fold reads: every table keyed by user_id or item_id."""

    interactions: DataFrame
    items: DataFrame  # item_id of every catalog item
    item_factors: DataFrame  # item_id, factors
    item_vectors: DataFrame  # item_id, embedding
    user_factors: DataFrame  # user_id, factors
    user_vectors: DataFrame  # user_id, embedding
    neighbours: DataFrame  # item_id, neighbour_id, similarity (co-occurrence)
    text_neighbours: DataFrame  # the same, by text
    transitions: DataFrame  # the same, the items had next after each
    popularity: DataFrame  # item_id, popularity


def factors_only(
    interactions: DataFrame,
    items: DataFrame,
    user_factors: DataFrame,
    item_factors: DataFrame,
    popularity: DataFrame,
) -> FoldTables:
    """Tables for ranking by ALS factors alone (no text, no neighbour lists): the als job's
    validation of each grid point."""
    spark = interactions.sparkSession
    vectors = "array<float>"
    neighbours = f"{ITEM_COL} string, {NEIGHBOUR_COL} string, similarity float"
    return FoldTables(
        interactions=interactions,
        items=items,
        item_factors=item_factors.select(ITEM_COL, FACTORS_COL),
        item_vectors=spark.createDataFrame([], f"{ITEM_COL} string, {EMBEDDING_COL} {vectors}"),
        user_factors=user_factors.select(USER_COL, FACTORS_COL),
        user_vectors=spark.createDataFrame([], f"{USER_COL} string, {EMBEDDING_COL} {vectors}"),
        neighbours=spark.createDataFrame([], neighbours),
        text_neighbours=spark.createDataFrame([], neighbours),
        transitions=spark.createDataFrame([], neighbours),
        popularity=popularity,
    )


def load_fold(warehouse: Warehouse, cfg: Config, fold: str) -> FoldTables:
    interactions = warehouse.read(INTERACTIONS)
    items = scoring.catalog_items(interactions, warehouse.read(ITEMS), cfg)

    def fold_table(name: str, key: str | None = None) -> DataFrame:
        table = scoring.of_fold(warehouse.read(name), fold)
        return table.withColumnRenamed("id", key) if key else table

    return FoldTables(
        interactions=interactions,
        items=items,
        item_factors=fold_table(ALS_ITEM_FACTORS).select(ITEM_COL, FACTORS_COL),
        item_vectors=fold_table(ITEM_EMBEDDINGS, ITEM_COL).select(ITEM_COL, EMBEDDING_COL),
        user_factors=fold_table(ALS_USER_FACTORS).select(USER_COL, FACTORS_COL),
        user_vectors=fold_table(USER_EMBEDDINGS, USER_COL).select(USER_COL, EMBEDDING_COL),
        neighbours=fold_table(ITEM_NEIGHBOURS),
        text_neighbours=fold_table(ITEM_TEXT_NEIGHBOURS),
        transitions=fold_table(ITEM_TRANSITIONS),
        popularity=scoring.popularity(interactions, fold),
    )


def catalog_history(tables: FoldTables, fold: str) -> DataFrame:
    """The fold's history on catalog items only: full ranking sees a user's history as catalog
    rows, so positions (recency weights) and "has history" count those items alone."""
    return history(tables.interactions, fold).join(tables.items, ITEM_COL, "left_semi")


def recent_history(tables: FoldTables, fold: str, cap: int) -> DataFrame:
    """user_id, _from (a history item), pos (0 = newest): each user's ``cap`` newest catalog
    items."""
    # Ties (reviews dated by day share a timestamp) go to the higher item id, as in full
    # ranking's history order: the position sets each item's recency weight.
    newest_first = Window.partitionBy(USER_COL).orderBy(
        F.col("_last").desc(), F.col(ITEM_COL).desc()
    )
    return (
        catalog_history(tables, fold)
        .groupBy(USER_COL, ITEM_COL)
        .agg(F.max(TS_COL).alias("_last"))
        .withColumn("pos", F.row_number().over(newest_first) - 1)
        .where(F.col("pos") < cap)
        .select(USER_COL, F.col(ITEM_COL).alias("_from"), "pos")
    )


def neighbour_votes(
    recent: DataFrame, neighbours: DataFrame, half_life: float, sharpness: float, name: str
) -> DataFrame:
    """user_id, item_id, ``name`` (the summed votes), ``name``_from (the history item that
    cast the largest): each history item votes for its neighbours with similarity ** sharpness
    (sign kept), halving every ``half_life`` items back, as the full-ranking kernel does."""
    similarity = F.col("similarity")
    powered = F.signum(similarity) * F.pow(F.abs(similarity), F.lit(float(sharpness)))
    vote = F.pow(F.lit(0.5), F.col("pos") / F.lit(float(half_life))) * powered
    lists = neighbours.select(
        F.col(ITEM_COL).alias("_from"), F.col(NEIGHBOUR_COL).alias(ITEM_COL), similarity
    )
    return (
        recent.join(lists, "_from")
        .withColumn("_vote", vote)
        .groupBy(USER_COL, ITEM_COL)
        .agg(F.sum("_vote").alias(name), F.max_by("_from", "_vote").alias(f"{name}_from"))
    )


def best_per_user(df: DataFrame, score: str, n: int) -> DataFrame:
    """The ``n`` rows of each user with the highest ``score`` (ties: lower item_id)."""
    return nearest.keep_best(df, USER_COL, ITEM_COL, score, n)


def als_top_n(
    user_factors: DataFrame, item_factors: DataFrame, n: int, item_block_rows: int
) -> DataFrame:
    """user_id, item_id, cf: each user's ``n`` best items by factor product, blocked
    (``hybridrec.models.nearest``: each task multiplies one block of users by one block of
    items)."""
    return nearest.top_by_dot(
        user_factors,
        item_factors,
        (USER_COL, ITEM_COL),
        (FACTORS_COL, FACTORS_COL),
        "cf",
        n,
        item_block_rows,
    )


def popular(popularity: DataFrame, n: int) -> DataFrame:
    """item_id of the ``n`` most popular items (a few rows: joined to every user)."""
    return popularity.orderBy(F.col("popularity").desc(), F.col(ITEM_COL)).limit(n).select(ITEM_COL)


def users_to_rank(tables: FoldTables, fold: str) -> DataFrame:
    """user_id of everyone full ranking would score: history, ALS factors or a text vector."""
    return (
        catalog_history(tables, fold)
        .select(USER_COL)
        .unionByName(tables.user_factors.select(USER_COL))
        .unionByName(tables.user_vectors.select(USER_COL))
        .distinct()
    )


def candidate_pairs(
    tables: FoldTables, cfg: Config, fold: str, users: DataFrame, sharpness: float
) -> DataFrame:
    """user_id, item_id, cooc, cooc_from, recent, recent_from, next, next_from: each user's
    candidates (catalog items the user has not had in the fold's history) with the neighbour
    votes cast for them."""
    c = cfg.score.candidates
    recent = recent_history(tables, fold, cfg.score.history_items).join(
        users, USER_COL, "left_semi"
    )
    # Each vote table is read twice in one plan (the best neighbours, then the votes of every
    # candidate; Spark may reuse the shuffle). Not cached: nothing outlives the call.
    cooc = neighbour_votes(recent, tables.neighbours, cfg.score.cooc_half_life, 1.0, "cooc")
    text = neighbour_votes(
        recent, tables.text_neighbours, cfg.score.recent_half_life, sharpness, "recent"
    )
    after = neighbour_votes(
        recent.where(F.col("pos") < cfg.score.next_items),
        tables.transitions,
        cfg.score.next_half_life,
        1.0,
        "next",
    )
    als = als_top_n(
        tables.user_factors.join(users, USER_COL, "left_semi"),
        tables.item_factors.join(tables.items, ITEM_COL, "left_semi"),
        c.als,
        c.item_block_rows,
    )
    ids = [
        als.select(USER_COL, ITEM_COL),
        best_per_user(cooc, "cooc", c.cooc).select(USER_COL, ITEM_COL),
        best_per_user(text, "recent", c.text).select(USER_COL, ITEM_COL),
        best_per_user(after, "next", c.next).select(USER_COL, ITEM_COL),
        users.crossJoin(F.broadcast(popular(tables.popularity, c.popular))),
    ]
    seen = history(tables.interactions, fold).select(USER_COL, ITEM_COL)
    chosen = (
        reduce(DataFrame.unionByName, ids)
        .distinct()
        .join(tables.items, ITEM_COL, "left_semi")
        .join(seen, [USER_COL, ITEM_COL], "left_anti")
    )
    return (
        chosen.join(cooc, [USER_COL, ITEM_COL], "left")
        .join(text, [USER_COL, ITEM_COL], "left")
        .join(after, [USER_COL, ITEM_COL], "left")
    )


def _user_rows(tables: FoldTables, fold: str, users: DataFrame, groups: int) -> DataFrame:
    """One row per user: the group, ALS factors, text vector and whether it has history (with
    text), as the kernel's ``users`` frame wants it."""
    has_history = catalog_history(tables, fold).select(USER_COL).distinct()
    with_text = (
        catalog_history(tables, fold)
        .select(USER_COL, ITEM_COL)
        .join(tables.item_vectors.select(ITEM_COL), ITEM_COL, "left_semi")
        .select(USER_COL)
        .distinct()
    )
    return (
        users.join(tables.user_factors, USER_COL, "left")
        .join(tables.user_vectors, USER_COL, "left")
        .join(has_history.withColumn("has_history", F.lit(True)), USER_COL, "left")
        .join(with_text.withColumn("has_text_history", F.lit(True)), USER_COL, "left")
        .fillna(False, ["has_history", "has_text_history"])
        .withColumn(GROUP_COL, _group(groups))
    )


def _group(groups: int):
    return F.pmod(F.xxhash64(USER_COL), F.lit(groups)).cast("int")


def _pair_rows(tables: FoldTables, pairs: DataFrame, groups: int) -> DataFrame:
    """The candidate pairs with their item's factors, text vector and popularity: the item
    columns are put together first, so the pairs take part in one shuffle join, not three."""
    features = (
        tables.items.join(
            tables.item_factors.withColumnRenamed(FACTORS_COL, "item_factors"), ITEM_COL, "left"
        )
        .join(
            tables.item_vectors.withColumnRenamed(EMBEDDING_COL, "item_embedding"),
            ITEM_COL,
            "left",
        )
        .join(tables.popularity.withColumnRenamed("popularity", "pop"), ITEM_COL, "left")
    )
    return pairs.join(features, ITEM_COL).withColumn(GROUP_COL, _group(groups))


def _cogroup(pairs: DataFrame, users: DataFrame):
    """The two sides grouped by user group for a cogroup. Each side's columns get new ids first:
    pyspark's cogroup refers to them as ``df[col]``, and a user_id both sides take from the same
    table (the interactions) would otherwise be an ambiguous reference."""

    def fresh(df: DataFrame) -> DataFrame:
        return df.select(*(F.col(name).alias(name) for name in df.columns))

    return fresh(pairs).groupBy(GROUP_COL).cogroup(fresh(users).groupBy(GROUP_COL))


def _groups(users: DataFrame, cfg: Config) -> int:
    n = users.count()
    return max(
        users.sparkSession.sparkContext.defaultParallelism * 2,
        math.ceil(n / cfg.score.user_block_rows),
    )


def recommend(
    tables: FoldTables,
    fold: str,
    models: Mapping[str, Mapping[str, float]],
    cfg: Config,
    schema: T.StructType,
    *,
    recent_sharpness: float,
    sample: float = 1.0,
) -> DataFrame:
    """Top-K rows per user (``schema``: the recommendations table with ``model``) for each
    named weight set, over candidates; ``sample`` < 1: that share of the users
    (``scoring.hash_sample``)."""
    users = scoring.hash_sample(users_to_rank(tables, fold), sample)
    groups = _groups(users, cfg)
    pairs = candidate_pairs(tables, cfg, fold, users, recent_sharpness)
    models = {name: dict(w) for name, w in models.items()}
    k, method = cfg.score.k, cfg.score.normalisation
    popular_share, slots = cfg.score.popular_reason_share, cfg.score.rerank_slots

    def rank(pairs_frame: pd.DataFrame, users_frame: pd.DataFrame) -> pd.DataFrame:
        return candidate_kernel.recommend_group(
            pairs_frame,
            users_frame,
            models,
            k=k,
            method=method,
            popular_share=popular_share,
            rerank_slots=slots,
        )

    return _cogroup(
        _pair_rows(tables, pairs, groups), _user_rows(tables, fold, users, groups)
    ).applyInPandas(rank, schema)


def targets(tables: FoldTables, fold: str) -> DataFrame:
    """``held_out_targets`` of the fold's tables."""
    return held_out_targets(tables.interactions, tables.items, fold)


def held_out_targets(interactions: DataFrame, items: DataFrame, fold: str) -> DataFrame:
    """user_id, target: each user's held-out item of ``fold`` that is in the catalog (``items``:
    item_id), the lowest id if several, as full ranking's tuning takes one."""
    return (
        held_out(interactions, fold)
        .select(USER_COL, ITEM_COL)
        .join(items.select(ITEM_COL), ITEM_COL, "left_semi")
        .groupBy(USER_COL)
        .agg(F.min(ITEM_COL).alias("target"))
    )


def tune_ranks(
    tables: FoldTables,
    fold: str,
    grid: Sequence[Mapping[str, float]],
    cfg: Config,
    schema: T.StructType,
    *,
    recent_sharpness: float,
) -> DataFrame:
    """Per weight set and user with a held-out target: the target's rank among the user's
    candidates, ``MISS_RANK`` if it is not one of them."""
    users = scoring.tuning_sample(targets(tables, fold), cfg.score.tune_max_users)
    groups = _groups(users, cfg)
    pairs = candidate_pairs(tables, cfg, fold, users.select(USER_COL), recent_sharpness)
    grid = [dict(w) for w in grid]
    method, k, slots = cfg.score.normalisation, cfg.score.k, cfg.score.rerank_slots

    def rank(pairs_frame: pd.DataFrame, users_frame: pd.DataFrame) -> pd.DataFrame:
        return candidate_kernel.tune_group(
            pairs_frame,
            users_frame,
            grid,
            method=method,
            miss_rank=MISS_RANK,
            k=k,
            rerank_slots=slots,
        )

    user_rows = _user_rows(tables, fold, users.select(USER_COL), groups).join(users, USER_COL)
    return _cogroup(_pair_rows(tables, pairs, groups), user_rows).applyInPandas(rank, schema)


def summarise(ranks: DataFrame, k: int, *, paired: bool = False) -> DataFrame:
    """``scoring.summarise_ranks`` plus candidate_recall: the share of users whose held-out
    item was among their candidates (the same in every row; no weighting can reach more)."""
    found = ranks.groupBy("combo").agg(
        F.avg((F.col("target_rank") < MISS_RANK).cast("double")).alias("candidate_recall")
    )
    return scoring.summarise_ranks(ranks, k, paired=paired).join(found, "combo")
