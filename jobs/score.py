"""score: factors + embeddings + interactions -> recommendations (top-K per user, hybrid).

    spark-submit jobs/score.py --conf conf/local.yaml [--set score.k=20]
    python -m jobs.score --conf conf/local.yaml

Read, tune once, rank once, write: with ``score.tune_on_validation`` the fusion weights, the
next share and the re-rank strength are picked on the validation split, pooled with the early
fold's where the als job fitted it (``hybridrec.ranking.tuning``; never on test), otherwise
``score.weights`` are used as given; the test fold is then ranked with them
(``hybridrec.ranking.rank``), in full or over candidates as the catalog's size decides.
"""

from __future__ import annotations

import logging
import sys

import mlflow
from pyspark.sql import SparkSession

from hybridrec.config.loader import Config
from hybridrec.constants import (
    FUSION_WEIGHTS,
    RECOMMENDATIONS,
    TEST,
)
from hybridrec.ops.runner import job_main
from hybridrec.ranking import blocks, rank, tuning
from hybridrec.store.tables import Warehouse
from udfs.ranking_kernel import PARTS
from udfs.rerank import DEBIAS, debiased

NAME = "score"
log = logging.getLogger(__name__)


def run(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    warehouse = Warehouse.from_config(spark, cfg, run_id)
    kernel_started = blocks.kernel_clock(spark).value
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
    # Served recommendations come from the test fold: models refitted on train and validation.
    recs = rank.rank_fold(
        warehouse,
        cfg,
        TEST,
        {"hybrid": debiased(weights, debias)},
        recent_sharpness=sharpness,
        mode=mode,
    )
    written = warehouse.write_together(
        {RECOMMENDATIONS: recs.drop("model"), FUSION_WEIGHTS: spark.createDataFrame(picks)},
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
    # Summed over tasks; next to the stage's seconds, what Spark's plumbing costs.
    results["kernel_seconds"] = blocks.kernel_clock(spark).value - kernel_started
    return results


if __name__ == "__main__":
    job_main(NAME, run, sys.argv[1:])
