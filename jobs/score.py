"""score: factors + embeddings + interactions -> recommendations (top-K per user, hybrid).

    spark-submit jobs/score.py --conf conf/local.yaml [--set score.k=20]
    python -m jobs.score --conf conf/local.yaml

With ``score.tune_on_validation`` the fusion weights are picked on the validation split from a
simplex grid (never on test); otherwise ``score.weights`` are used as given.
"""

from __future__ import annotations

import logging
import sys

import mlflow
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from hybridrec import scoring
from hybridrec.config import Config
from hybridrec.constants import RECOMMENDATIONS, TEST, VALIDATION
from hybridrec.runner import job_main
from hybridrec.tables import Warehouse
from udfs.topk import weight_grid

NAME = "score"
log = logging.getLogger(__name__)


def choose_weights(
    spark: SparkSession, warehouse: Warehouse, cfg: Config
) -> tuple[dict[str, float], dict[str, float]]:
    """The fusion weights, and how they were chosen (validation NDCG/HR of the pick): scored
    with the validation fold's models, which never saw the validation split."""
    configured = dict(cfg.score.weights)
    if not cfg.score.tune_on_validation:
        return configured, {}
    catalog = scoring.load_catalog(warehouse, cfg, VALIDATION)
    users = scoring.load_user_frame(spark, warehouse, catalog, VALIDATION, with_target=True)
    grid = weight_grid(cfg.score.weight_grid_step)
    results = scoring.tune(users, catalog, grid, cfg).toPandas()
    if results.empty:
        log.warning("no validation interactions: keeping configured weights %s", configured)
        return configured, {}
    metric = cfg.score.tune_metric
    # Highest validation metric; ties go to the earlier grid point so the pick is reproducible.
    results = results.sort_values([metric, "combo"], ascending=[False, True])
    best = results.iloc[0]
    weights = grid[int(best["combo"])]
    results["weights"] = results["combo"].map(lambda c: grid[c])
    mlflow.log_text(results.to_csv(index=False), "weight_grid_validation.csv")
    log.info(
        "weights %s picked on validation: ndcg@%d=%.4f hr@%d=%.4f over %d users (%d grid points)",
        weights,
        cfg.score.k,
        best["ndcg"],
        cfg.score.k,
        best["hr"],
        best["users"],
        len(grid),
    )
    return weights, {
        "validation_ndcg": float(best["ndcg"]),
        "validation_hr": float(best["hr"]),
        "validation_users": float(best["users"]),
    }


def run(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    warehouse = Warehouse.from_config(spark, cfg)
    weights, tuning = choose_weights(spark, warehouse, cfg)
    mlflow.log_params({f"hybrid_weight.{part}": w for part, w in weights.items()})
    # Served recommendations come from the test fold: models refitted on train and validation.
    catalog = scoring.load_catalog(warehouse, cfg, TEST)
    users = scoring.load_user_frame(spark, warehouse, catalog, TEST)
    recs = scoring.recommend(users, catalog, {"hybrid": weights}, cfg).drop("model")
    n = warehouse.write(
        recs.withColumn("run_id", F.lit(run_id)), RECOMMENDATIONS, partition_by=["run_id"]
    )
    return {
        "recommendations": n,
        "catalog_items": len(catalog),
        **{f"weight_{part}": w for part, w in weights.items()},
        **tuning,
    }


if __name__ == "__main__":
    job_main(NAME, run, sys.argv[1:])
