"""The learned ranker in use: a fold's inputs (catalog, items' age and trend, the model) and a
fold's or the stream's users ranked by it (``udfs.learned_ranker``); ``ranker_fit`` trains and
judges it (the design is described there)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from hybridrec.config.loader import Config
from hybridrec.constants import INTERACTIONS, ITEM_COL, LEARNED_RANKER, TS_COL
from hybridrec.models.folds import history
from hybridrec.ranking import blocks, catalogs, scoring
from hybridrec.ranking.rank import RankingMode, UserState
from hybridrec.store.tables import Warehouse
from udfs import learned_ranker, ranking_kernel
from udfs.candidate_kernel import RECOMMENDATION_COLUMNS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankerInputs:
    """What a task needs besides its users: the fold's catalog and item context, and the
    ranker's saved model (None while training rows are made)."""

    catalog: ranking_kernel.ItemCatalog
    context: learned_ranker.ItemContext
    model: bytes | None = None


def item_context(
    interactions: DataFrame, catalog: ranking_kernel.ItemCatalog, fold: str, trend_days: float
) -> learned_ranker.ItemContext:
    """Each catalog item's age and trend in ``fold``'s history, and the fold's clock (its newest
    event). Item-sized, like the catalog it is aligned with."""
    seen = history(interactions, fold).select(ITEM_COL, F.col(TS_COL).cast("double").alias("_t"))
    reference = seen.agg(F.max("_t")).first()[0]
    if reference is None:
        n = len(catalog)
        return learned_ranker.ItemContext(np.full(n, np.nan), np.full(n, np.nan), float("nan"))
    since = reference - trend_days * learned_ranker.SECONDS_PER_DAY
    per_item = (
        seen.groupBy(ITEM_COL)
        .agg(
            F.min("_t").alias("first"),
            F.count(F.lit(1)).alias("events"),
            F.sum(F.when(F.col("_t") >= since, 1).otherwise(0)).alias("recent"),
        )
        .toPandas()  # item-sized
        .set_index(ITEM_COL)
        .reindex(catalog.ids)
    )
    return learned_ranker.ItemContext(
        age_days=((reference - per_item["first"]) / learned_ranker.SECONDS_PER_DAY).to_numpy(float),
        trend=(per_item["recent"] / per_item["events"]).to_numpy(float),
        reference_ts=float(reference),
    )


def served_ranker_row(warehouse: Warehouse):
    """The run's ``learned_ranker`` row where the score job served the ranker, else None (a
    run without the table, or one whose gate kept the linear hybrid)."""
    if not warehouse.exists(LEARNED_RANKER):
        return None
    row = warehouse.read(LEARNED_RANKER).first()
    return row if row and row["served"] else None


def kernel_settings(cfg: Config, sharpness: float, mode: RankingMode) -> dict:
    """``learned_ranker.candidate_set``'s settings: the linear hybrid's, as the score job ranks."""
    return {
        **scoring.kernel_settings(cfg, sharpness),
        "n_candidates": cfg.ranker.candidates,
        "over_candidates": mode.over_candidates,
        "counts": scoring.candidate_counts(cfg),
    }


def fold_inputs(
    warehouse: Warehouse, cfg: Config, fold: str, model: bytes | None = None
) -> RankerInputs:
    catalog = catalogs.load_catalog(warehouse, cfg, fold)
    context = item_context(warehouse.read(INTERACTIONS), catalog, fold, cfg.ranker.trend_days)
    return RankerInputs(catalog, context, model)


def rank_users(
    warehouse: Warehouse,
    cfg: Config,
    fold: str,
    inputs: RankerInputs,
    weights: Mapping[str, float],
    *,
    sharpness: float,
    mode: RankingMode,
    users: UserState | None = None,
) -> DataFrame:
    """Top-K rows (the recommendations columns with ``model``) of ``fold``'s users (or those of
    ``users``: the stream's live users), ordered by the ranker of ``inputs`` (``fold_inputs``
    of ``fold`` with the model)."""
    if users is None:
        frame = scoring.load_user_frame(warehouse.spark, warehouse, inputs.catalog, fold)
    else:
        frame = scoring.build_user_frame(
            warehouse.spark,
            users.interactions,
            inputs.catalog,
            fold,
            users.factors,
            users.vectors,
        )
    settings = kernel_settings(cfg, sharpness, mode)
    weights = dict(weights)

    def ranked(block: pd.DataFrame, shared: RankerInputs) -> pd.DataFrame:
        return rank_block(block, shared, weights, settings, cfg, nthread=1)

    shared = warehouse.spark.sparkContext.broadcast(inputs)
    return blocks.map_user_blocks(
        frame, shared, cfg.score.user_block_rows, scoring.RECOMMENDATION_SCHEMA, ranked
    )


def rank_block(
    block: pd.DataFrame,
    inputs: RankerInputs,
    weights: Mapping[str, float],
    settings: dict,
    cfg: Config,
    *,
    nthread: int = 0,
) -> pd.DataFrame:
    """One block's top-K by the ranker, in this process (a task's, or the served model's)."""
    if block.empty:
        return pd.DataFrame({c: [] for c in RECOMMENDATION_COLUMNS})
    candidates = learned_ranker.candidate_set(
        block, inputs.catalog, inputs.context, weights, **settings
    )
    return learned_ranker.rank_candidates(
        candidates,
        learned_ranker.booster(inputs.model, nthread=nthread),
        weights,
        k=cfg.score.k,
        popular_share=cfg.score.popular_reason_share,
    )[list(RECOMMENDATION_COLUMNS)]
