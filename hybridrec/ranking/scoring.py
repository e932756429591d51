"""Spark side of scoring: the item catalog to broadcast, the per-user frame, and the blockwise
pandas UDF calls into the numpy kernel in ``udfs.full_ranking``. No users x items DataFrame ever
exists: each task holds one block of users against the broadcast catalog."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config.loader import Config
from hybridrec.constants import (
    ALS_USER_FACTORS,
    BASELINE_WEIGHTS,
    EMBEDDING_COL,
    FACTORS_COL,
    FOLD_COL,
    INTERACTIONS,
    ITEM_COL,
    ITEMS,
    TS_COL,
    USER_COL,
    USER_EMBEDDINGS,
)
from hybridrec.models.cooc import NEIGHBOUR_COL
from hybridrec.models.folds import held_out, history
from hybridrec.ranking import blocks
from hybridrec.store.tables import Warehouse
from udfs import block_candidates, full_ranking, ranking_kernel, rerank
from udfs.candidate_kernel import MISS_RANK

log = logging.getLogger(__name__)

RECOMMENDATION_SCHEMA = T.StructType(
    [
        T.StructField("model", T.StringType()),
        T.StructField(USER_COL, T.StringType()),
        T.StructField("rank", T.IntegerType()),
        T.StructField(ITEM_COL, T.StringType()),
        T.StructField("score", T.DoubleType()),
        T.StructField("cf_score", T.DoubleType()),
        T.StructField("cooc_score", T.DoubleType()),
        T.StructField("text_score", T.DoubleType()),
        T.StructField("recent_score", T.DoubleType()),
        T.StructField("pop_score", T.DoubleType()),
        T.StructField("next_score", T.DoubleType()),
        T.StructField("reason", T.StringType()),
        T.StructField("reason_item_id", T.StringType()),
    ]
)
TUNE_SCHEMA = T.StructType(
    [
        T.StructField("combo", T.IntegerType()),
        T.StructField(USER_COL, T.StringType()),
        T.StructField("target_rank", T.LongType()),
    ]
)


def configured_weights(cfg: Config) -> pd.DataFrame:
    """model, the six weights, recent_sharpness, debias: the hybrid's and the text baseline's
    weights as configured, before (or without) tuning on validation."""
    sharpness = cfg.score.recent_sharpness
    return pd.DataFrame(
        [
            {"model": "hybrid", **cfg.score.weights, "recent_sharpness": sharpness},
            {"model": "text", **BASELINE_WEIGHTS["text"], "recent_sharpness": sharpness},
        ]
    ).assign(**{rerank.DEBIAS: 0.0})


def popularity(interactions: DataFrame, fold: str) -> DataFrame:
    """log1p of the number of distinct users per item in the fold's history."""
    return (
        history(interactions, fold)
        .groupBy(ITEM_COL)
        .agg(F.log1p(F.countDistinct(USER_COL)).alias("popularity"))
    )


def catalog_size(warehouse: Warehouse, cfg: Config) -> int:
    """How many items the scoring catalog holds (every fold ranks the same items)."""
    return catalog_items(warehouse.read(INTERACTIONS), warehouse.read(ITEMS), cfg).count()


def catalog_items(interactions: DataFrame, items: DataFrame, cfg: Config) -> DataFrame:
    """The candidate items. ``score.catalog: interacted`` keeps items with any interaction (an
    item seen only in a held-out split is a cold item, ranked by its text); ``all`` adds
    metadata-only items."""
    ids = items.select(ITEM_COL)
    if cfg.score.catalog == "interacted":
        ids = ids.join(interactions.select(ITEM_COL).distinct(), ITEM_COL)
    return ids


def build_catalog(
    items: DataFrame,
    item_factors: DataFrame | None,
    item_vectors: DataFrame | None,
    pop: DataFrame,
    neighbours: DataFrame | None = None,
    text_neighbours: DataFrame | None = None,
    transitions: DataFrame | None = None,
) -> ranking_kernel.ItemCatalog:
    """Collect the candidates (they grow with the catalog, never with users) into arrays.

    Args:
        items: item_id of every candidate.
        item_factors: item_id, factors (ALS); None for a catalog without CF.
        item_vectors: item_id, embedding; None for a catalog without text.
        pop: item_id, popularity.
        neighbours: item_id, neighbour_id, similarity; None for a catalog without co-occurrence.
        text_neighbours: the same, the closest items by text; None for a catalog without text.
        transitions: the same, the items had next after each; None for a catalog without them.
    """
    rows = items.join(pop, ITEM_COL, "left")
    if item_factors is not None:
        rows = rows.join(item_factors.select(ITEM_COL, FACTORS_COL), ITEM_COL, "left")
    if item_vectors is not None:
        rows = rows.join(item_vectors.select(ITEM_COL, EMBEDDING_COL), ITEM_COL, "left")
    frame = rows.orderBy(ITEM_COL).toPandas()
    for column in (FACTORS_COL, EMBEDDING_COL):
        if column not in frame:
            frame[column] = None
    rank = _first_length(frame[FACTORS_COL])
    dim = _first_length(frame[EMBEDDING_COL])
    cf, has_cf = ranking_kernel.stack_vectors(frame[FACTORS_COL], rank)
    emb, has_text = ranking_kernel.stack_vectors(frame[EMBEDDING_COL], dim)
    ids = frame[ITEM_COL].to_numpy().astype(str)
    neighbour_idx, neighbour_sims = _neighbour_arrays(items, neighbours, ids)
    text_idx, text_sims = _neighbour_arrays(items, text_neighbours, ids)
    next_idx, next_sims = _neighbour_arrays(items, transitions, ids)
    return ranking_kernel.ItemCatalog(
        ids=ids,
        cf=cf,
        has_cf=has_cf,
        text=emb,
        has_text=has_text,
        pop=frame["popularity"].fillna(0.0).to_numpy(np.float32),
        neighbours=neighbour_idx,
        neighbour_sims=neighbour_sims,
        text_neighbours=text_idx,
        text_neighbour_sims=text_sims,
        next_items=next_idx,
        next_sims=next_sims,
    )


def _neighbour_arrays(
    items: DataFrame, neighbours: DataFrame | None, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each catalog item's neighbours as (n, m) catalog indices (-1 pads) and similarities;
    neighbours outside the catalog are dropped."""
    if neighbours is None:
        return np.full((len(ids), 0), -1, np.int64), np.zeros((len(ids), 0), np.float32)
    candidates = items.select(ITEM_COL)
    pairs = (
        neighbours.join(candidates, ITEM_COL)
        .join(candidates.withColumnRenamed(ITEM_COL, NEIGHBOUR_COL), NEIGHBOUR_COL)
        .select(ITEM_COL, NEIGHBOUR_COL, "similarity")
        .toPandas()
    )
    position = pd.Series(np.arange(len(ids)), index=ids)
    row = position.reindex(pairs[ITEM_COL].astype(str)).to_numpy()
    col = position.reindex(pairs[NEIGHBOUR_COL].astype(str)).to_numpy()
    order = np.lexsort((-pairs["similarity"].to_numpy(), row))
    row, col, sims = row[order], col[order], pairs["similarity"].to_numpy()[order]
    counts = np.bincount(row, minlength=len(ids))
    slot = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    neighbour_idx = np.full((len(ids), max(1, counts.max(initial=0))), -1, np.int64)
    neighbour_sims = np.zeros(neighbour_idx.shape, np.float32)
    neighbour_idx[row, slot] = col
    neighbour_sims[row, slot] = sims
    return neighbour_idx, neighbour_sims


def of_fold(df: DataFrame, fold: str) -> DataFrame:
    return df.where(F.col(FOLD_COL) == fold).drop(FOLD_COL)


def _first_length(column) -> int:
    present = column.dropna()
    return len(present.iloc[0]) if len(present) else 1


def catalog_index(spark: SparkSession, ids: np.ndarray) -> DataFrame:
    """item_id, idx: each catalog item's row. Made from a broadcast of the ids, not from a
    Python list: a list becomes a local relation that every task of every stage reading it
    carries in its closure (megabytes at a hundred thousand items)."""
    shared = spark.sparkContext.broadcast(np.asarray(ids, dtype=object))

    def rows(batches):
        for batch in batches:
            idx = batch["id"].to_numpy()
            yield pd.DataFrame({ITEM_COL: shared.value[idx], "idx": idx})

    partitions = max(1, min(spark.sparkContext.defaultParallelism, len(ids) // 10_000))
    return spark.range(len(ids), numPartitions=partitions).mapInPandas(
        rows, f"{ITEM_COL} string, idx long"
    )


def build_user_frame(
    spark: SparkSession,
    interactions: DataFrame,
    catalog: ranking_kernel.ItemCatalog,
    fold: str,
    user_factors: DataFrame | None,
    user_vectors: DataFrame | None,
    *,
    with_target: bool = False,
) -> DataFrame:
    """One row per user to score: ALS factors, text vector, the fold's history items as catalog
    indices (newest first), the newest one's time (``last_ts``, epoch seconds) and, with
    ``with_target``, the index of the user's held-out item of ``fold`` (only users that have
    one are kept)."""
    index = catalog_index(spark, catalog.ids)
    users = (
        history(interactions, fold)
        .groupBy(USER_COL, ITEM_COL)
        .agg(F.max(TS_COL).alias("_last"))
        .join(index, ITEM_COL)
        .groupBy(USER_COL)
        .agg(F.sort_array(F.collect_list(F.struct("_last", "idx")), asc=False).alias("_seen"))
        .select(
            USER_COL,
            F.col("_seen.idx").alias("seen"),
            F.col("_seen")[0]["_last"].cast("double").alias("last_ts"),
        )
    )
    vector_type = T.ArrayType(T.FloatType())
    for table, column in ((user_factors, FACTORS_COL), (user_vectors, EMBEDDING_COL)):
        if table is None:
            users = users.withColumn(column, F.lit(None).cast(vector_type))
        else:
            users = users.join(table.select(USER_COL, column), USER_COL, "full_outer")
    if not with_target:
        return users.withColumn("target", F.lit(None).cast("int"))
    targets = (
        held_out(interactions, fold)
        .select(USER_COL, ITEM_COL)
        .distinct()
        .join(index, ITEM_COL)
        .groupBy(USER_COL)
        .agg(F.min("idx").alias("target"))
    )
    return users.join(targets, USER_COL, "inner")


def tuning_sample(users: DataFrame, max_users: int) -> DataFrame:
    """At most about ``max_users`` rows of ``users`` (one per user) for the weight grid: a hash
    sample, so the same users are kept on every run of the same data and tuning costs the same
    at any size above it. A pick's precision depends on the users scored, not on the share."""
    n = users.count()
    if n <= max_users:
        return users
    log.info("tuning on a hash sample of about %d of %d validation users", max_users, n)
    return hash_sample(users, max_users / n)


SAMPLE_BUCKETS = 1_000_000


def hash_sample(df: DataFrame, fraction: float) -> DataFrame:
    """The rows of ``df`` whose user falls in the first ``fraction`` of a hash of user ids: the
    same users on every run and in every table sampled with the same fraction."""
    return df if fraction >= 1 else df.where(in_sample(fraction))


def in_sample(fraction: float) -> Column:
    """Whether the row's user is in ``hash_sample``'s share ``fraction``."""
    return F.pmod(F.xxhash64(USER_COL), F.lit(SAMPLE_BUCKETS)) < F.lit(
        int(fraction * SAMPLE_BUCKETS)
    )


def load_user_frame(
    spark: SparkSession,
    warehouse: Warehouse,
    catalog: ranking_kernel.ItemCatalog,
    fold: str,
    *,
    with_target: bool = False,
) -> DataFrame:
    return build_user_frame(
        spark,
        warehouse.read(INTERACTIONS),
        catalog,
        fold,
        of_fold(warehouse.read(ALS_USER_FACTORS), fold),
        of_fold(warehouse.read(USER_EMBEDDINGS), fold).withColumnRenamed("id", USER_COL),
        with_target=with_target,
    )


def _map_user_blocks(
    users: DataFrame,
    catalog: ranking_kernel.ItemCatalog,
    cfg: Config,
    schema: T.StructType,
    score_block,
) -> DataFrame:
    """``map_user_blocks`` with the catalog broadcast once, in blocks of
    ``score.user_block_rows`` users."""
    shared = users.sparkSession.sparkContext.broadcast(catalog)
    return blocks.map_user_blocks(users, shared, cfg.score.user_block_rows, schema, score_block)


def kernel_settings(cfg: Config, recent_sharpness: float | None) -> dict:
    return {
        "method": cfg.score.normalisation,
        "recent_half_life": cfg.score.recent_half_life,
        "recent_sharpness": (
            cfg.score.recent_sharpness if recent_sharpness is None else recent_sharpness
        ),
        "cooc_half_life": cfg.score.cooc_half_life,
        "history_cap": cfg.score.history_items,
        "next_items": cfg.score.next_items,
        "next_half_life": cfg.score.next_half_life,
    }


def _rerank_settings(cfg: Config) -> dict:
    return {"k": cfg.score.k, "rerank_slots": cfg.score.rerank_slots}


def candidate_counts(cfg: Config) -> block_candidates.CandidateCounts:
    c = cfg.score.candidates
    return block_candidates.CandidateCounts(
        als=c.als, cooc=c.cooc, text=c.text, next=c.next, popular=c.popular
    )


def recommend(
    users: DataFrame,
    catalog: ranking_kernel.ItemCatalog,
    models: Mapping[str, Mapping[str, float]],
    cfg: Config,
    *,
    recent_sharpness: float | None = None,
    over_candidates: bool = False,
) -> DataFrame:
    """Top-K rows per user for each named weight set (``model``); ``recent_sharpness`` overrides
    the configured one. ``over_candidates``: each user's candidates are chosen in the block
    (``udfs.block_candidates``) and ranked instead of every unseen item."""
    models = {name: dict(weights) for name, weights in models.items()}
    return _map_user_blocks(
        users,
        catalog,
        cfg,
        RECOMMENDATION_SCHEMA,
        lambda block, items: recommend_block(
            block, items, models, cfg, recent_sharpness, over_candidates=over_candidates
        ),
    )


def recommend_block(
    block: pd.DataFrame,
    catalog: ranking_kernel.ItemCatalog,
    models: Mapping[str, Mapping[str, float]],
    cfg: Config,
    recent_sharpness: float | None = None,
    *,
    over_candidates: bool = False,
) -> pd.DataFrame:
    """``recommend`` of one block of users (``build_user_frame``'s columns) in this process:
    the body of its UDF, also what the stream calls on a small micro-batch's users."""
    settings = kernel_settings(cfg, recent_sharpness)
    if over_candidates:
        return block_candidates.recommend_block(
            block,
            catalog,
            models,
            candidate_counts(cfg),
            popular_share=cfg.score.popular_reason_share,
            **_rerank_settings(cfg),
            **settings,
        )
    return full_ranking.recommend_block(
        block,
        catalog,
        models,
        popular_share=cfg.score.popular_reason_share,
        **_rerank_settings(cfg),
        **settings,
    )


def tune_ranks(
    users: DataFrame,
    catalog: ranking_kernel.ItemCatalog,
    grid: Sequence[Mapping[str, float]],
    cfg: Config,
    *,
    recent_sharpness: float | None = None,
    over_candidates: bool = False,
) -> DataFrame:
    """combo, user_id, target_rank: the held-out target's rank under each weight set of
    ``grid`` (its place in the re-ranked list where the set has a de-biasing strength), exact
    up to ``score.k`` and only known to be above it beyond; ``over_candidates``, among the
    user's candidates, ``MISS_RANK`` where it is not one."""
    grid = [dict(w) for w in grid]
    settings = kernel_settings(cfg, recent_sharpness)
    rerank = _rerank_settings(cfg)
    counts = candidate_counts(cfg)

    def score_block(block: pd.DataFrame, items: ranking_kernel.ItemCatalog) -> pd.DataFrame:
        if over_candidates:
            return block_candidates.tune_block(
                block, items, grid, counts, miss_rank=MISS_RANK, **rerank, **settings
            )
        return full_ranking.tune_block(block, items, grid, **rerank, **settings)

    return _map_user_blocks(users, catalog, cfg, TUNE_SCHEMA, score_block)


def tune(
    users: DataFrame,
    catalog: ranking_kernel.ItemCatalog,
    grid: Sequence[Mapping[str, float]],
    cfg: Config,
    *,
    recent_sharpness: float | None = None,
    paired: bool = False,
) -> DataFrame:
    """Per weight set of ``grid``: NDCG@K and HR@K of the held-out target, one row per set
    (``tune_ranks`` over every unseen item); ``paired`` adds each set's NDCG gain over the
    first (``summarise_ranks``)."""
    ranks = tune_ranks(users, catalog, grid, cfg, recent_sharpness=recent_sharpness)
    return summarise_ranks(ranks, cfg.score.k, paired=paired)


def summarise_ranks(ranks: DataFrame, k: int, *, paired: bool = False) -> DataFrame:
    """combo, ndcg, hr, users: NDCG@k and HR@k of the targets' ranks per weight set.

    ``paired`` adds ndcg_gain and ndcg_gain_se: the mean over users of each set's NDCG less
    combo 0's for the same user, and its standard error. Each user's row of every set meets
    its combo-0 row: meant for a few sets, not the whole weight grid.
    """
    hit = F.col("target_rank") <= k
    scored = ranks.withColumn(
        "_ndcg", F.when(hit, 1.0 / F.log2(F.col("target_rank") + 1)).otherwise(0.0)
    )
    summaries = [
        F.avg("_ndcg").alias("ndcg"),
        F.avg(F.when(hit, 1.0).otherwise(0.0)).alias("hr"),
        F.count(F.lit(1)).alias("users"),
    ]
    if paired:
        first = scored.where(F.col("combo") == 0).select(USER_COL, F.col("_ndcg").alias("_first"))
        scored = scored.join(first, USER_COL).withColumn("_gain", F.col("_ndcg") - F.col("_first"))
        summaries += [
            F.avg("_gain").alias("ndcg_gain"),
            F.coalesce(F.stddev_samp("_gain") / F.sqrt(F.count(F.lit(1))), F.lit(0.0)).alias(
                "ndcg_gain_se"
            ),
        ]
    return scored.groupBy("combo").agg(*summaries)
