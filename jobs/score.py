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
import pandas as pd
from pyspark.sql import SparkSession

from hybridrec import candidates, progress, scoring
from hybridrec.config import Config
from hybridrec.constants import (
    BASELINE_WEIGHTS,
    FUSION_WEIGHTS,
    RECOMMENDATIONS,
    TEST,
    TEXT_PARTS,
    VALIDATION,
)
from hybridrec.runner import job_main
from hybridrec.tables import Warehouse
from udfs.topk import PARTS, weight_grid

NAME = "score"
log = logging.getLogger(__name__)


def _candidate_tuner(warehouse: Warehouse, cfg: Config, grid: list[dict[str, float]]):
    """Tuning over candidates: per sharpness, the grid's NDCG and HR on validation, with the
    candidate recall (the share of held-out items that were candidates) in each row."""
    tables = candidates.load_fold(warehouse, cfg, VALIDATION)

    def tune(sharpness: float) -> pd.DataFrame:
        ranks = candidates.tune_ranks(
            tables, VALIDATION, grid, cfg, scoring.TUNE_SCHEMA, recent_sharpness=sharpness
        )
        tuned = candidates.summarise(ranks, cfg.score.k).toPandas()
        if len(tuned):
            log.info(
                "candidate recall on validation (recent sharpness %g): %.4f of %d users",
                sharpness,
                tuned["candidate_recall"].iloc[0],
                tuned["users"].iloc[0],
            )
        return tuned

    return tune


def choose_weights(
    spark: SparkSession, warehouse: Warehouse, cfg: Config, *, over_candidates: bool = False
) -> pd.DataFrame:
    """Fusion weights of the hybrid and of the text-only baseline, one row per model.

    Picked on validation with the validation fold's models (which never saw that split): the
    hybrid from the whole simplex grid times ``score.recent_sharpness_grid``, the text baseline
    from the points that use text parts only. Ties go to the earlier sharpness and grid point,
    so the pick is reproducible.
    """
    sharpness = cfg.score.recent_sharpness
    configured = pd.DataFrame(
        [
            {"model": "hybrid", **cfg.score.weights, "recent_sharpness": sharpness},
            {"model": "text", **BASELINE_WEIGHTS["text"], "recent_sharpness": sharpness},
        ]
    )
    if not cfg.score.tune_on_validation:
        return configured
    grid = weight_grid(cfg.score.weight_grid_step)
    sharpness_grid = [float(p) for p in cfg.score.recent_sharpness_grid]
    if over_candidates:
        tune = _candidate_tuner(warehouse, cfg, grid)
    else:
        catalog = scoring.load_catalog(warehouse, cfg, VALIDATION)
        users = scoring.load_user_frame(spark, warehouse, catalog, VALIDATION, with_target=True)
        users = scoring.tuning_sample(users, cfg.score.tune_max_users).cache()

        def tune(p: float) -> pd.DataFrame:
            return scoring.tune(users, catalog, grid, cfg, recent_sharpness=p).toPandas()

    frames = []
    for i, p in enumerate(sharpness_grid):
        point = f"weight grid {i + 1} of {len(sharpness_grid)} (recent sharpness {p:g})"
        log.info("%s: %d weight sets on validation", point, len(grid))
        with progress.working_on(point):
            tuned = tune(p)
        frames.append(tuned.assign(recent_sharpness=p, _order=i))
    results = pd.concat(frames, ignore_index=True)
    if not over_candidates:
        users.unpersist()
    if results.empty:
        log.warning("no validation interactions: keeping the configured weights")
        return configured
    weights = pd.DataFrame(grid)
    results = (
        results.join(weights, on="combo")
        .sort_values([cfg.score.tune_metric, "_order", "combo"], ascending=[False, True, True])
        .drop(columns="_order")
    )
    mlflow.log_text(results.to_csv(index=False), "weight_grid_validation.csv")
    text_only = results[(results[[p for p in PARTS if p not in TEXT_PARTS]] == 0).all(axis=1)]
    picks = pd.concat(
        [results.head(1).assign(model="hybrid"), text_only.head(1).assign(model="text")]
    )
    for pick in picks.itertuples():
        log.info(
            "%s weights %s, recent sharpness %g, picked on validation (%d grid points): "
            "ndcg@%d=%.4f hr=%.4f, %d users",
            pick.model,
            {p: getattr(pick, p) for p in PARTS},
            pick.recent_sharpness,
            len(results),
            cfg.score.k,
            pick.ndcg,
            pick.hr,
            pick.users,
        )
    return picks.rename(columns={"ndcg": "validation_ndcg", "hr": "validation_hr"}).drop(
        columns=["combo", "users"]
    )


def run(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    warehouse = Warehouse.from_config(spark, cfg, run_id)
    n_items = scoring.catalog_size(warehouse, cfg)
    over_candidates = candidates.use_candidates(cfg, n_items)
    log.info(
        "catalog of %d items: %s",
        n_items,
        "ranking per-user candidates" if over_candidates else "full ranking (catalog broadcast)",
    )
    picks = choose_weights(spark, warehouse, cfg, over_candidates=over_candidates)
    hybrid = picks[picks["model"] == "hybrid"].iloc[0]
    picks = picks.drop(columns=["candidate_recall"], errors="ignore")
    warehouse.write(spark.createDataFrame(picks), FUSION_WEIGHTS, run_id=run_id)
    weights = {part: float(hybrid[part]) for part in PARTS}
    sharpness = float(hybrid["recent_sharpness"])
    mlflow.log_params({f"hybrid_weight.{part}": w for part, w in weights.items()})
    mlflow.log_param("hybrid_recent_sharpness", sharpness)
    # Served recommendations come from the test fold: models refitted on train and validation.
    recs = candidates.recommend_fold(
        warehouse,
        cfg,
        TEST,
        {"hybrid": weights},
        recent_sharpness=sharpness,
        over_candidates=over_candidates,
    )
    n = warehouse.write(recs.drop("model"), RECOMMENDATIONS, run_id=run_id)
    results = {
        "recommendations": n,
        "catalog_items": n_items,
        "ranked_over_candidates": float(over_candidates),
        **{f"weight_{part}": w for part, w in weights.items()},
        "recent_sharpness": sharpness,
    }
    if "validation_ndcg" in hybrid:
        results.update(
            validation_ndcg=float(hybrid["validation_ndcg"]),
            validation_hr=float(hybrid["validation_hr"]),
        )
    if "candidate_recall" in hybrid:
        results["validation_candidate_recall"] = float(hybrid["candidate_recall"])
    return results


if __name__ == "__main__":
    job_main(NAME, run, sys.argv[1:])
