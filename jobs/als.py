"""als: interactions -> als_user_factors, als_item_factors, item_neighbours, item_transitions
(per fold), and the ALS model in MLflow: the collaborative signals.

    spark-submit jobs/als.py --conf conf/local.yaml [--set als.rank=64 --set als.implicit=false]
    python -m jobs.als --conf conf/local.yaml

With ``als.tune_on_validation`` every point of ``als.grid`` is fitted on train and ranked on
validation (each a nested MLflow run); the best is refitted on train and validation for the
test fold (and, where ``folds.model_folds`` adds it, on train less each user's newest train item
for the early fold). Without it, the configured rank, reg_param and alpha are used for each.
Item co-occurrence neighbours (``cooc``) and what came next after each item (``transitions``)
are built from each fold's history alongside.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from functools import reduce

import mlflow
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybridrec.config.loader import Config
from hybridrec.constants import (
    ALS_ITEM_FACTORS,
    ALS_PARAMS,
    ALS_USER_FACTORS,
    BASELINE_WEIGHTS,
    EARLY,
    FOLD_COL,
    INTERACTIONS,
    ITEM_COL,
    ITEM_NEIGHBOURS,
    ITEM_TRANSITIONS,
    ITEMS,
    TEST,
    USER_COL,
    VALIDATION,
)
from hybridrec.models import cf, cooc
from hybridrec.models.folds import model_folds
from hybridrec.ops import tracking
from hybridrec.ops.runner import job_main
from hybridrec.ranking import candidates, rank, scoring
from hybridrec.store.tables import Warehouse

NAME = "als"
log = logging.getLogger(__name__)


@dataclass
class FoldData:
    preferences: DataFrame
    users: DataFrame
    items: DataFrame


def prepare(spark: SparkSession, interactions: DataFrame, cfg: Config, fold: str) -> FoldData:
    prefs = cf.preferences(interactions, cfg, fold)
    users = cf.index_ids(spark, prefs, USER_COL).cache()
    items = cf.index_ids(spark, prefs, ITEM_COL).cache()
    indexed = cf.indexed_preferences(prefs, users, items).cache()
    log.info("%s fold: %d preference pairs", fold, indexed.count())
    return FoldData(indexed, users, items)


def factors(model: ALSModel, data: FoldData, fold: str) -> tuple[DataFrame, DataFrame]:
    return (
        cf.factor_table(model.userFactors, data.users, USER_COL).withColumn(FOLD_COL, F.lit(fold)),
        cf.factor_table(model.itemFactors, data.items, ITEM_COL).withColumn(FOLD_COL, F.lit(fold)),
    )


def validation_scores(
    spark: SparkSession,
    model: ALSModel,
    data: FoldData,
    interactions: DataFrame,
    items: DataFrame,
    cfg: Config,
) -> dict[str, float]:
    """NDCG@K and HR@K of ALS alone on the validation split, ranking every unseen item."""
    user_factors, item_factors = factors(model, data, VALIDATION)
    catalog_items = scoring.catalog_items(interactions, items, cfg)
    popularity = scoring.popularity(interactions, VALIDATION)
    # Ranked the way the score job will rank: over candidates when the catalog is that large.
    how = rank.choose_mode(cfg, catalog_items.count())
    if how == rank.SPARK:
        tables = candidates.factors_only(
            interactions, catalog_items, user_factors, item_factors, popularity
        )
        ranks = candidates.tune_ranks(
            tables,
            VALIDATION,
            [BASELINE_WEIGHTS["als"]],
            cfg,
            scoring.TUNE_SCHEMA,
            recent_sharpness=cfg.score.recent_sharpness,
        )
        row = scoring.summarise_ranks(ranks, cfg.score.k).first()
        return {"validation_ndcg": row["ndcg"], "validation_hr": row["hr"]}
    catalog = scoring.build_catalog(catalog_items, item_factors, None, popularity)
    users = scoring.build_user_frame(
        spark, interactions, catalog, VALIDATION, user_factors, None, with_target=True
    )
    ranks = scoring.tune_ranks(
        users, catalog, [BASELINE_WEIGHTS["als"]], cfg, over_candidates=how == rank.MEMORY
    )
    row = scoring.summarise_ranks(ranks, cfg.score.k).first()
    return {"validation_ndcg": row["ndcg"], "validation_hr": row["hr"]}


def search(
    spark: SparkSession, data: FoldData, interactions: DataFrame, items: DataFrame, cfg: Config
) -> tuple[dict[str, float], ALSModel, dict[str, float]]:
    """Fit every grid point on train, keep the best by validation NDCG (ties: the earlier).

    A one-point grid has nothing to pick: it is fitted, not ranked on validation (the score
    job's tuning and evaluate's test metrics still measure it), and no scores come back.
    """
    grid = list(cf.param_grid(cfg))
    if len(grid) == 1:
        log.info("ALS grid: %s, the grid's only point (not scored on validation)", grid[0])
        return grid[0], cf.fit(data.preferences, cfg, grid[0]), {}
    best: tuple[float, dict, ALSModel, dict] | None = None
    for params in grid:
        name = "als " + " ".join(f"{k}={v}" for k, v in params.items())
        with mlflow.start_run(run_name=name, nested=True):
            started = time.perf_counter()
            model = cf.fit(data.preferences, cfg, params)
            scores = validation_scores(spark, model, data, interactions, items, cfg)
            mlflow.log_params(params)
            mlflow.log_metrics({**scores, "fit_seconds": time.perf_counter() - started})
        log.info("%s: validation ndcg@%d=%.4f", name, cfg.score.k, scores["validation_ndcg"])
        if best is None or scores["validation_ndcg"] > best[0]:
            best = (scores["validation_ndcg"], params, model, scores)
    _, params, model, scores = best
    log.info("ALS grid: picked %s (validation ndcg %.4f)", params, scores["validation_ndcg"])
    return params, model, scores


def run(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    warehouse = Warehouse.from_config(spark, cfg, run_id)
    interactions = warehouse.read(INTERACTIONS).cache()
    items = warehouse.read(ITEMS)
    results: dict[str, float] = {}
    validation_data = prepare(spark, interactions, cfg, VALIDATION)
    if cfg.als.tune_on_validation:
        params, validation_model, scores = search(spark, validation_data, interactions, items, cfg)
        results.update(scores)
    else:
        params = {"rank": cfg.als.rank, "reg_param": cfg.als.reg_param, "alpha": cfg.als.alpha}
        validation_model = cf.fit(validation_data.preferences, cfg)
    mlflow.log_params({f"chosen.{k}": v for k, v in params.items()})

    test_data = prepare(spark, interactions, cfg, TEST)
    started = time.perf_counter()
    test_model = cf.fit(test_data.preferences, cfg, params)
    results["fit_seconds"] = time.perf_counter() - started
    log.info("ALS %s refitted on train+validation in %.1fs", params, results["fit_seconds"])

    fold_factors = [
        factors(validation_model, validation_data, VALIDATION),
        factors(test_model, test_data, TEST),
    ]
    folds = model_folds(interactions, cfg)
    if EARLY in folds:
        # Fitted with the validation fold's pick: the early fold is for the fusion weights.
        early_data = prepare(spark, interactions, cfg, EARLY)
        fold_factors.append(factors(cf.fit(early_data.preferences, cfg, params), early_data, EARLY))
    fitted = {"rank": int(params["rank"]), "reg_param": float(params["reg_param"])}
    fitted |= {"alpha": float(params["alpha"]), "implicit": bool(cfg.als.implicit)}
    fitted |= {"nonnegative": bool(cfg.als.nonnegative)}
    item_lists = {
        ITEM_NEIGHBOURS: lambda fold: cooc.item_neighbours(
            interactions,
            fold,
            history_items=cfg.cooc.history_items,
            time_scale_days=cfg.cooc.time_scale_days,
            neighbours=cfg.cooc.neighbours,
        ),
        ITEM_TRANSITIONS: lambda fold: cooc.item_transitions(
            interactions,
            fold,
            window=cfg.transitions.window,
            neighbours=cfg.transitions.neighbours,
        ),
    }
    # Five independent outputs written side by side: on a small run each write is mostly
    # waiting (job start, commit, catalog), not work.
    written = warehouse.write_together(
        {
            ALS_USER_FACTORS: reduce(DataFrame.unionByName, [u for u, _ in fold_factors]),
            ALS_ITEM_FACTORS: reduce(DataFrame.unionByName, [i for _, i in fold_factors]),
            ALS_PARAMS: spark.createDataFrame([{**fitted, FOLD_COL: fold} for fold in folds]),
            **{
                table: reduce(DataFrame.unionByName, [build(fold) for fold in folds])
                for table, build in item_lists.items()
            },
        },
        run_id=run_id,
        partition_by=[FOLD_COL],
    )
    results["user_factors"] = written[ALS_USER_FACTORS]
    results["item_factors"] = written[ALS_ITEM_FACTORS]
    results.update({table: written[table] for table in item_lists})
    if cfg.mlflow.log_model:
        tracking.log_spark_model(
            cf.scoring_pipeline(test_model, test_data.users, test_data.items),
            "als_model",
            staging_dir=warehouse.staging_path(),
        )
    results.update({f"chosen_{k}": float(v) for k, v in params.items()})
    return results


if __name__ == "__main__":
    job_main(NAME, run, sys.argv[1:])
