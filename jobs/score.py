"""score: factors + embeddings + interactions -> recommendations (top-K per user, hybrid).

    spark-submit jobs/score.py --conf conf/local.yaml [--set score.k=20]
    python -m jobs.score --conf conf/local.yaml

Read, tune once, rank once, write: with ``score.tune_on_validation`` the fusion weights, the
next share and the re-rank strength are picked on the validation split, pooled with the early
fold's where the als job fitted it (``hybridrec.ranking.tuning``; never on test), otherwise
``score.weights`` are used as given. With ``ranker.enabled`` a learned ranker is trained on the
same folds' linear top candidates and judged on held-back validation users
(``hybridrec.ranking.learned``); the test fold is then ranked by the ranker where it won there,
otherwise by the linear hybrid (``hybridrec.ranking.rank``), in full or over candidates as the
catalog's size decides.
"""

from __future__ import annotations

import logging
import sys

import mlflow
import pandas as pd
from pyspark.sql import SparkSession

from hybridrec.config.loader import Config
from hybridrec.constants import (
    FUSION_WEIGHTS,
    LEARNED_RANKER,
    RECOMMENDATIONS,
    TEST,
)
from hybridrec.ops import tracking
from hybridrec.ops.runner import job_main
from hybridrec.ranking import blocks, learned, rank, ranker_fit, tuning
from hybridrec.store.tables import Warehouse
from udfs import learned_ranker
from udfs.ranking_kernel import PARTS
from udfs.rerank import DEBIAS, debiased

NAME = "score"
log = logging.getLogger(__name__)


def run(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    warehouse = Warehouse.from_config(spark, cfg, run_id)
    kernel_started = blocks.kernel_clock(spark).value
    boosting_started = blocks.boosting_clock(spark).value
    driver_started = blocks.driver_kernel_seconds(spark)
    mode = rank.ranking_mode(warehouse, cfg)
    log.info("%s", mode.describe())
    chosen = tuning.pick(warehouse, cfg, mode)
    for name, table in chosen.curves.items():
        mlflow.log_text(table.to_csv(index=False), name)
    picks = chosen.weights
    hybrid = picks[picks["model"] == "hybrid"].iloc[0]
    picks = picks.drop(columns=["candidate_recall"], errors="ignore")
    debias = float(hybrid[DEBIAS])
    weights = {part: float(hybrid[part]) for part in PARTS}
    sharpness = float(hybrid["recent_sharpness"])
    mlflow.log_params({f"hybrid_weight.{part}": w for part, w in weights.items()})
    mlflow.log_params({"hybrid_recent_sharpness": sharpness, "hybrid_debias": debias})
    linear = debiased(weights, debias)
    fitted = learn_ranker(warehouse, cfg, mode, linear, sharpness)
    # Served recommendations come from the test fold: models refitted on train and validation.
    if fitted.served:
        inputs = learned.fold_inputs(warehouse, cfg, TEST, fitted.model)
        recs = learned.rank_users(
            warehouse, cfg, TEST, inputs, linear, sharpness=sharpness, mode=mode
        )
    else:
        recs = rank.rank_fold(
            warehouse, cfg, TEST, {"hybrid": linear}, recent_sharpness=sharpness, mode=mode
        )
    written = warehouse.write_together(
        {
            RECOMMENDATIONS: recs.drop("model"),
            FUSION_WEIGHTS: spark.createDataFrame(picks),
            LEARNED_RANKER: ranker_fit.spark_row(spark, fitted),
        },
        run_id=run_id,
    )
    n = written[RECOMMENDATIONS]
    results = {
        "recommendations": n,
        "catalog_items": mode.n_items,
        "ranked_over_candidates": float(mode.over_candidates),
        **{f"weight_{part}": w for part, w in weights.items()},
        "recent_sharpness": sharpness,
        "debias": debias,
    }
    if "validation_ndcg" in hybrid:
        results.update(
            validation_ndcg=float(hybrid["validation_ndcg"]),
            validation_hr=float(hybrid["validation_hr"]),
        )
    if "candidate_recall" in hybrid:
        results["validation_candidate_recall"] = float(hybrid["candidate_recall"])
    results |= {
        "ranker_served": float(fitted.served),
        "ranker_seconds": fitted.seconds,
    }
    if fitted.model is not None:
        results |= {
            "ranker_validation_ndcg_gain": fitted.gain,
            "ranker_validation_ndcg_gain_low": fitted.gain_low,
        }
    # Summed over tasks; next to the stage's seconds, what Spark's plumbing costs.
    results["kernel_seconds"] = blocks.kernel_clock(spark).value - kernel_started
    results["driver_kernel_seconds"] = blocks.driver_kernel_seconds(spark) - driver_started
    results["ranker_boosting_seconds"] = blocks.boosting_clock(spark).value - boosting_started
    return results


def learn_ranker(
    warehouse, cfg: Config, mode: rank.RankingMode, linear: dict, sharpness: float
) -> ranker_fit.Fitted:
    """The learned ranker trained and judged on the tuning folds (``ranker.enabled``), logged
    to MLflow: its choice, the held-back figures, the feature importance and the model."""
    if not cfg.ranker.enabled:
        return ranker_fit.Fitted(None, False, "linear hybrid served: ranker.enabled is false")
    if not cfg.score.tune_on_validation:
        return ranker_fit.Fitted(
            None,
            False,
            "linear hybrid served: the ranker trains on validation, which "
            "score.tune_on_validation false leaves out",
        )
    fitted = ranker_fit.fit_and_gate(
        warehouse, cfg, mode, tuning.tuning_folds(warehouse, cfg), linear, sharpness
    )
    mlflow.set_tag("served_ranking", "learned ranker" if fitted.served else "linear hybrid")
    mlflow.log_text(fitted.note, "ranker_note.txt")
    if fitted.model is None:
        return fitted
    mlflow.log_params({"ranker_max_depth": fitted.max_depth, "ranker_rounds": fitted.rounds})
    mlflow.log_metrics(
        {
            "ranker.held_back_ndcg": fitted.held_back_ndcg,
            "ranker.linear_held_back_ndcg": fitted.linear_ndcg,
            "ranker.ndcg_gain": fitted.gain,
            "ranker.ndcg_gain_se": fitted.gain_se,
            "ranker.served": float(fitted.served),
        }
    )
    importance = pd.Series(fitted.importance, name="total_gain").sort_values(ascending=False)
    mlflow.log_text(
        importance.rename_axis("feature").reset_index().to_csv(index=False),
        "ranker_feature_importance.csv",
    )
    mlflow.log_text(fitted.curve.to_csv(index=False), "ranker_depths.csv")
    log.info("ranker feature importance (total gain), top 10:\n%s", importance.head(10).to_string())
    if cfg.mlflow.log_model:
        tracking.log_ranker_model(fitted.model, learned_ranker.FEATURES)
    return fitted


if __name__ == "__main__":
    job_main(NAME, run, sys.argv[1:])
