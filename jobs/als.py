"""als: train interactions -> als_user_factors, als_item_factors, and the ALS model in MLflow.

spark-submit jobs/als.py --conf conf/local.yaml [--set als.rank=64 --set als.implicit=false]
python -m jobs.als --conf conf/local.yaml
"""

from __future__ import annotations

import logging
import sys
import time

from pyspark.sql import SparkSession

from hybridrec import cf, tracking
from hybridrec.config import Config
from hybridrec.constants import ALS_ITEM_FACTORS, ALS_USER_FACTORS, INTERACTIONS, ITEM_COL, USER_COL
from hybridrec.runner import job_main
from hybridrec.tables import Warehouse

NAME = "als"
log = logging.getLogger(__name__)


def run(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    warehouse = Warehouse.from_config(spark, cfg)
    prefs = cf.preferences(warehouse.read(INTERACTIONS), cfg).cache()
    users = cf.index_ids(spark, prefs, USER_COL).cache()
    items = cf.index_ids(spark, prefs, ITEM_COL).cache()
    indexed = cf.indexed_preferences(prefs, users, items).cache()
    n_prefs = indexed.count()
    started = time.perf_counter()
    model = cf.fit(indexed, cfg)
    fit_seconds = time.perf_counter() - started
    log.info(
        "ALS fitted on %d pairs (rank %d, %s) in %.1fs",
        n_prefs,
        cfg.als.rank,
        "implicit" if cfg.als.implicit else "explicit",
        fit_seconds,
    )
    n_users = warehouse.write(cf.factor_table(model.userFactors, users, USER_COL), ALS_USER_FACTORS)
    n_items = warehouse.write(cf.factor_table(model.itemFactors, items, ITEM_COL), ALS_ITEM_FACTORS)
    if cfg.mlflow.log_model:
        tracking.log_spark_model(model, "als_model")
    return {
        "train_pairs": n_prefs,
        "fit_seconds": fit_seconds,
        "user_factors": n_users,
        "item_factors": n_items,
    }


if __name__ == "__main__":
    job_main(NAME, run, sys.argv[1:])
