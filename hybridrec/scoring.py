"""Spark side of scoring: the item catalog to broadcast, the per-user frame, and the blockwise
pandas UDF calls into the numpy kernel in ``udfs.topk``. No users x items DataFrame ever exists:
each task holds one block of users against the broadcast catalog."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config import Config
from hybridrec.constants import (
    ALS_ITEM_FACTORS,
    ALS_USER_FACTORS,
    EMBEDDING_COL,
    FACTORS_COL,
    INTERACTIONS,
    ITEM_COL,
    ITEM_EMBEDDINGS,
    ITEMS,
    SPLIT_COL,
    TRAIN,
    TS_COL,
    USER_COL,
    USER_EMBEDDINGS,
)
from hybridrec.tables import Warehouse
from udfs import topk

log = logging.getLogger(__name__)

RECOMMENDATION_SCHEMA = T.StructType(
    [
        T.StructField("model", T.StringType()),
        T.StructField(USER_COL, T.StringType()),
        T.StructField("rank", T.IntegerType()),
        T.StructField(ITEM_COL, T.StringType()),
        T.StructField("score", T.DoubleType()),
        T.StructField("cf_score", T.DoubleType()),
        T.StructField("text_score", T.DoubleType()),
        T.StructField("pop_score", T.DoubleType()),
        T.StructField("reason", T.StringType()),
    ]
)
TUNE_SCHEMA = T.StructType(
    [
        T.StructField("combo", T.IntegerType()),
        T.StructField(USER_COL, T.StringType()),
        T.StructField("target_rank", T.LongType()),
    ]
)


def popularity(interactions: DataFrame) -> DataFrame:
    """log1p of the number of distinct train users per item: train only, so nothing leaks."""
    train = interactions.where(F.col(SPLIT_COL) == TRAIN)
    return train.groupBy(ITEM_COL).agg(F.log1p(F.countDistinct(USER_COL)).alias("popularity"))


def load_catalog(warehouse: Warehouse, cfg: Config) -> topk.ItemCatalog:
    """Collect the candidate items (they grow with the catalog, never with users) into arrays.

    ``score.catalog: interacted`` ranks the items that have any interaction (an item seen only in
    validation or test is a cold item, ranked by its text); ``all`` adds metadata-only items.
    """
    interactions = warehouse.read(INTERACTIONS)
    items = warehouse.read(ITEMS).select(ITEM_COL)
    if cfg.score.catalog == "interacted":
        items = items.join(interactions.select(ITEM_COL).distinct(), ITEM_COL)
    factors = warehouse.read(ALS_ITEM_FACTORS)
    text = warehouse.read(ITEM_EMBEDDINGS).select(F.col("id").alias(ITEM_COL), EMBEDDING_COL)
    pop = popularity(interactions)
    rows = (
        items.join(factors, ITEM_COL, "left")
        .join(text, ITEM_COL, "left")
        .join(pop, ITEM_COL, "left")
        .orderBy(ITEM_COL)
        .toPandas()
    )
    rank = _first_length(rows[FACTORS_COL])
    dim = _first_length(rows[EMBEDDING_COL])
    cf, has_cf = topk.stack_vectors(rows[FACTORS_COL], rank)
    emb, has_text = topk.stack_vectors(rows[EMBEDDING_COL], dim)
    catalog = topk.ItemCatalog(
        ids=rows[ITEM_COL].to_numpy().astype(str),
        cf=cf,
        has_cf=has_cf,
        text=emb,
        has_text=has_text,
        pop=rows["popularity"].fillna(0.0).to_numpy(np.float32),
    )
    log.info(
        "catalog: %d items, %d with ALS factors (rank %d), %d with text vectors (dim %d)",
        len(catalog),
        has_cf.sum(),
        rank,
        has_text.sum(),
        dim,
    )
    return catalog


def _first_length(column) -> int:
    present = column.dropna()
    return len(present.iloc[0]) if len(present) else 1


def user_frame(
    spark: SparkSession,
    warehouse: Warehouse,
    catalog: topk.ItemCatalog,
    *,
    target_split: str | None = None,
) -> DataFrame:
    """One row per user to score: ALS factors, text vector, train items as catalog indices
    (newest first) and, for tuning, the index of the user's item in ``target_split``."""
    interactions = warehouse.read(INTERACTIONS)
    index = spark.createDataFrame(
        [(str(item), i) for i, item in enumerate(catalog.ids)], [ITEM_COL, "idx"]
    )
    train = interactions.where(F.col(SPLIT_COL) == TRAIN)
    seen = (
        train.groupBy(USER_COL, ITEM_COL)
        .agg(F.max(TS_COL).alias("_last"))
        .join(index, ITEM_COL)
        .groupBy(USER_COL)
        .agg(F.sort_array(F.collect_list(F.struct("_last", "idx")), asc=False).alias("_seen"))
        .select(USER_COL, F.col("_seen.idx").alias("seen"))
    )
    users = seen.join(warehouse.read(ALS_USER_FACTORS), USER_COL, "full_outer").join(
        warehouse.read(USER_EMBEDDINGS).select(F.col("id").alias(USER_COL), EMBEDDING_COL),
        USER_COL,
        "full_outer",
    )
    if target_split is None:
        return users.withColumn("target", F.lit(None).cast("int"))
    targets = (
        interactions.where(F.col(SPLIT_COL) == target_split)
        .select(USER_COL, ITEM_COL)
        .distinct()
        .join(index, ITEM_COL)
        .groupBy(USER_COL)
        .agg(F.min("idx").alias("target"))
    )
    return users.join(targets, USER_COL, "inner")


def _blocks(users: DataFrame, cfg: Config) -> DataFrame:
    """Spread users over tasks; the Arrow batch size sets the users per vectorised block."""
    return users.repartition(users.sparkSession.sparkContext.defaultParallelism * 2, USER_COL)


def recommend(
    users: DataFrame,
    catalog: topk.ItemCatalog,
    models: Mapping[str, Mapping[str, float]],
    cfg: Config,
) -> DataFrame:
    """Top-K rows per user for each named weight set (``model``)."""
    spark = users.sparkSession
    shared = spark.sparkContext.broadcast(catalog)
    k, method, history = cfg.score.k, cfg.score.normalisation, cfg.score.reason_history
    models = {name: dict(weights) for name, weights in models.items()}
    block_rows = cfg.score.user_block_rows

    def score_blocks(batches):
        items = shared.value
        for batch in batches:
            for start in range(0, len(batch), block_rows):
                yield topk.recommend_block(
                    batch.iloc[start : start + block_rows].reset_index(drop=True),
                    items,
                    models,
                    k=k,
                    method=method,
                    reason_history=history,
                )

    return _blocks(users, cfg).mapInPandas(score_blocks, RECOMMENDATION_SCHEMA)


def tune(
    users: DataFrame,
    catalog: topk.ItemCatalog,
    grid: Sequence[Mapping[str, float]],
    cfg: Config,
) -> DataFrame:
    """Per weight set of ``grid``: NDCG@K and HR@K of the held-out target, one row per set."""
    spark = users.sparkSession
    shared = spark.sparkContext.broadcast(catalog)
    method, block_rows = cfg.score.normalisation, cfg.score.user_block_rows
    grid = [dict(w) for w in grid]

    def rank_blocks(batches):
        items = shared.value
        for batch in batches:
            for start in range(0, len(batch), block_rows):
                yield topk.tune_block(
                    batch.iloc[start : start + block_rows].reset_index(drop=True),
                    items,
                    grid,
                    method=method,
                )

    ranks = _blocks(users, cfg).mapInPandas(rank_blocks, TUNE_SCHEMA)
    k = cfg.score.k
    hit = F.col("target_rank") <= k
    return ranks.groupBy("combo").agg(
        F.avg(F.when(hit, 1.0 / F.log2(F.col("target_rank") + 1)).otherwise(0.0)).alias("ndcg"),
        F.avg(F.when(hit, 1.0).otherwise(0.0)).alias("hr"),
        F.count(F.lit(1)).alias("users"),
    )
