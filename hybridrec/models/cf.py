"""Pure transforms of the collaborative-filtering stage around Spark ALS."""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.ml import PipelineModel
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybridrec.config.loader import Config
from hybridrec.constants import (
    EVENT_COL,
    FACTORS_COL,
    ITEM_COL,
    RATING_COL,
    USER_COL,
    VALIDATION,
)
from hybridrec.models.folds import history
from hybridrec.models.id_index import IdIndexModel


def preferences(interactions: DataFrame, cfg: Config, fold: str = VALIDATION) -> DataFrame:
    """One (user, item, preference) per pair of the fold's history.

    Implicit: the summed strength of the pair's events, a rating counting as its value and an
    event without one as its ``als.event_weights`` entry (1.0 if unlisted). Explicit: the mean of
    the pair's ratings; events without a rating carry no explicit signal and are left out.
    """
    train = history(interactions, fold)
    if cfg.als.implicit:
        event_weight = F.lit(1.0)
        for event, weight in cfg.als.event_weights.items():
            event_weight = F.when(F.col(EVENT_COL) == event, F.lit(float(weight))).otherwise(
                event_weight
            )
        strength = F.coalesce(F.col(RATING_COL), event_weight)
        return train.groupBy(USER_COL, ITEM_COL).agg(F.sum(strength).alias("preference"))
    return (
        train.where(F.col(RATING_COL).isNotNull())
        .groupBy(USER_COL, ITEM_COL)
        .agg(F.avg(RATING_COL).alias("preference"))
    )


def index_ids(spark: SparkSession, ids: DataFrame, col: str) -> DataFrame:
    """Dense int ids for ALS. zipWithIndex scales with the data (StringIndexer collects labels
    on the driver); ids are sorted first so that the same data gives the same indices."""
    rdd = ids.select(col).distinct().orderBy(col).rdd.zipWithIndex().map(lambda r: (r[0][0], r[1]))
    schema = T.StructType(
        [
            T.StructField(col, T.StringType(), False),
            T.StructField(f"{col}_idx", T.IntegerType(), False),
        ]
    )
    return spark.createDataFrame(rdd.map(lambda r: (r[0], int(r[1]))), schema)


def build_als(cfg: Config, default_blocks: int, params: Mapping[str, float] | None = None) -> ALS:
    """ALS from config; ``params`` (rank, reg_param, alpha) override it for a grid point."""
    # ALS's default of 10 blocks turns small data into many tiny tasks per iteration.
    blocks = cfg.als.num_blocks or default_blocks
    chosen = {"rank": cfg.als.rank, "reg_param": cfg.als.reg_param, "alpha": cfg.als.alpha}
    chosen.update(params or {})
    return ALS(
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        userCol=f"{USER_COL}_idx",
        itemCol=f"{ITEM_COL}_idx",
        ratingCol="preference",
        rank=int(chosen["rank"]),
        regParam=float(chosen["reg_param"]),
        alpha=float(chosen["alpha"]),
        maxIter=cfg.als.max_iter,
        implicitPrefs=cfg.als.implicit,
        nonnegative=cfg.als.nonnegative,
        checkpointInterval=cfg.als.checkpoint_interval,
        coldStartStrategy=cfg.als.cold_start_strategy,
        seed=cfg.als.seed,
    )


def indexed_preferences(prefs: DataFrame, users: DataFrame, items: DataFrame) -> DataFrame:
    return prefs.join(users, USER_COL).join(items, ITEM_COL)


def factor_table(factors: DataFrame, index: DataFrame, col: str) -> DataFrame:
    """ALS factors keyed by the original string id."""
    return factors.join(index, factors["id"] == index[f"{col}_idx"]).select(
        col, F.col("features").alias(FACTORS_COL)
    )


def fit(prefs: DataFrame, cfg: Config, params: Mapping[str, float] | None = None) -> ALSModel:
    return build_als(cfg, prefs.sparkSession.sparkContext.defaultParallelism, params).fit(prefs)


def scoring_pipeline(model: ALSModel, users: DataFrame, items: DataFrame) -> PipelineModel:
    """The fitted ALS model behind two id-index stages, so it scores real ``user_id``/``item_id``
    (``transform`` of a frame with both columns adds ``prediction``); ``users``/``items`` are the
    ``index_ids`` tables the model was fitted with."""
    return PipelineModel(
        stages=[
            IdIndexModel(mapping=users, inputCol=USER_COL, outputCol=f"{USER_COL}_idx"),
            IdIndexModel(mapping=items, inputCol=ITEM_COL, outputCol=f"{ITEM_COL}_idx"),
            model,
        ]
    )


def param_grid(cfg: Config) -> list[dict[str, float]]:
    """Every combination of ``als.grid`` values, in a fixed order."""
    grid = cfg.als.grid
    return [
        {"rank": rank, "reg_param": reg, "alpha": alpha}
        for rank in grid.rank
        for reg in grid.reg_param
        for alpha in (grid.alpha if cfg.als.implicit else [cfg.als.alpha])
    ]
