"""evaluate: recommendations + baselines vs the test split -> metrics (table, MLflow, plot).

    spark-submit jobs/evaluate.py --conf conf/local.yaml --run-id R
    python -m jobs.evaluate --conf conf/local.yaml --run-id R

The baselines (ALS-only, co-occurrence, text-only, popularity) come from the same scoring kernel
with one part's weight at 1, so every model ranks the same candidates (items unseen in train) the
same way; so does the hybrid's re-rank curve (each popularity de-biasing strength, table
debias_curve). EASE and item-kNN (``hybridrec.evaluation.linear``) are the strongest simple
recommenders, each with its one hyper-parameter picked on validation.
"""

from __future__ import annotations

import logging
import sys
from functools import reduce

import mlflow
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybridrec.config.loader import Config
from hybridrec.constants import (
    BASELINE_RECOMMENDATIONS,
    BASELINE_WEIGHTS,
    COMPARISONS,
    CURVE_PREFIX,
    DEBIAS_CURVE,
    FUSION_WEIGHTS,
    HYBRID,
    HYBRID_LINEAR,
    INTERACTIONS,
    ITEM_EMBEDDINGS,
    ITEM_TOPICS,
    ITEMS,
    METRICS,
    MODELS,
    RECOMMENDATIONS,
    SPLIT_COL,
    TEST,
    USER_COL,
    USER_INTERESTS,
)
from hybridrec.evaluation import blocked, linear, plots
from hybridrec.evaluation import metrics as evaluation
from hybridrec.evaluation.matrix import catalog_ids
from hybridrec.models import interests
from hybridrec.models.folds import history
from hybridrec.ops import tracking
from hybridrec.ops.runner import job_main
from hybridrec.ranking import blocks, rank, scoring
from hybridrec.ranking import learned as learned_ranking
from hybridrec.serving import recommender
from hybridrec.store.tables import Warehouse
from udfs.ranking_kernel import PARTS
from udfs.rerank import DEBIAS, debiased

NAME = "evaluate"
FIGURE = "metrics_by_model.png"
CURVE_FIGURE = "debias_curve.png"
# The gaps that reach the log and MLflow metrics; comparisons.csv and the table hold every one.
HEADLINE_METRICS = ("ndcg", "hr")
SEGMENT = "segment"
log = logging.getLogger(__name__)


def hybrid_recommendations(warehouse: Warehouse, run_id: str) -> DataFrame:
    recs = warehouse.read(RECOMMENDATIONS)
    if recs.limit(1).count() == 0:
        raise RuntimeError(
            f"no recommendations for run {run_id!r}: run the score job with --run-id {run_id}"
        )
    return recs.withColumn("model", F.lit(HYBRID))


def picked_weights(warehouse: Warehouse, cfg: Config) -> dict[str, dict]:
    """Per model of the fusion weights table (hybrid, text): its weights, recent sharpness and
    de-biasing strength as the score job picked them; the configured ones where it picked none."""
    rows = scoring.configured_weights(cfg).to_dict("records")
    if warehouse.exists(FUSION_WEIGHTS):
        rows += [row.asDict() for row in warehouse.read(FUSION_WEIGHTS).collect()]  # per model
    # A picked row replaces the configured one of its model. A part without a weight (a snapshot
    # written before the part existed, such as next) has none.
    return {
        row["model"]: {
            "weights": {part: float(row.get(part) or 0.0) for part in PARTS},
            "sharpness": float(row["recent_sharpness"] or cfg.score.recent_sharpness),
            DEBIAS: float(row.get(DEBIAS) or 0.0),
        }
        for row in rows
    }


def curve_name(strength: float) -> str:
    return f"{CURVE_PREFIX}{strength:g}"


def kernel_recommendations(
    warehouse: Warehouse,
    cfg: Config,
    picked: dict[str, dict],
    mode: rank.RankingMode,
    served: DataFrame,
    *,
    learned: bool = False,
) -> DataFrame:
    """Top-K of the weight sets ranked by the hybrid's own kernel: the single-signal baselines
    (the text one with the mix and sharpness the score job picked for it) and, with
    ``evaluate.debias_curve``, the hybrid at every strength of ``score.debias_grid`` (its re-rank
    curve on test). They rank the way the hybrid did: over candidates above the configured size.

    The curve is a trade-off between strengths, measured on at most ``evaluate.curve_max_users``
    test users (a hash sample: the same users at every strength), so that its cost stops
    growing with users; its point at the served strength is ``served`` (the score job's lists:
    the same fold, weights and kernel) on those users, not ranked again. One ranking pass where
    both sharpnesses agree and the curve needs no sample, else one per sharpness or user set
    (one pass over the users all the same where the catalog is broadcast).

    ``learned``: the served lists are the learned ranker's; the linear hybrid is ranked as its
    own model (``hybrid_linear``), and the curve's point at the served strength is ranked too,
    since the curve is the linear hybrid's."""
    baselines = {model: dict(w) for model, w in BASELINE_WEIGHTS.items()}
    baselines["text"] = picked["text"]["weights"]
    passes = [(picked["text"]["sharpness"], 1.0, baselines)]
    reused = []
    if cfg.evaluate.debias_curve:
        n_users = served.select(USER_COL).distinct().count()
        sample = min(1.0, cfg.evaluate.curve_max_users / max(n_users, 1))
        if sample < 1:
            log.info(
                "re-rank curve on a hash sample of about %d of %d test users",
                cfg.evaluate.curve_max_users,
                n_users,
            )
        hybrid, curve = picked["hybrid"], {}
        for strength in sorted({0.0, *(float(b) for b in cfg.score.debias_grid)}):
            if strength == hybrid[DEBIAS] and not learned:
                reused.append(
                    scoring.hash_sample(served, sample)
                    .withColumn("model", F.lit(curve_name(strength)))
                    .select(*scoring.RECOMMENDATION_SCHEMA.fieldNames())
                )
            else:
                curve[curve_name(strength)] = debiased(hybrid["weights"], strength)
        if curve and sample == 1 and hybrid["sharpness"] == picked["text"]["sharpness"]:
            baselines.update(curve)
        elif curve:
            passes.append((hybrid["sharpness"], sample, curve))
    if learned:
        hybrid = picked["hybrid"]
        linear = {HYBRID_LINEAR: debiased(hybrid["weights"], hybrid[DEBIAS])}
        if hybrid["sharpness"] == picked["text"]["sharpness"]:
            baselines.update(linear)
        else:
            passes.append((hybrid["sharpness"], 1.0, linear))
    ranked = rank.rank_fold_passes(warehouse, cfg, TEST, passes, mode=mode)
    return reduce(DataFrame.unionByName, [ranked, *reused])


CURVE_METRICS = {
    ("all", "ndcg"): "ndcg",
    ("all", "hr"): "hr",
    ("all", "coverage"): "coverage",
    ("all", "diversity"): "diversity",
    ("all", "novelty"): "novelty",
    ("tail_items", "hr"): "tail_hr",
    ("sparse_users", "hr"): "sparse_hr",
}


def debias_curve(curve_metrics: DataFrame, served: float) -> DataFrame:
    """The debias_curve table from the metrics of the curve's lists: one row per strength and
    metric, the served strength flagged."""
    wanted = reduce(
        lambda a, b: a | b,
        [(F.col("segment") == seg) & (F.col("metric") == m) for seg, m in CURVE_METRICS],
    )
    name = F.lit(None).cast("string")
    for (seg, m), label in CURVE_METRICS.items():
        name = F.when((F.col("segment") == seg) & (F.col("metric") == m), label).otherwise(name)
    strength = F.substring(F.col("model"), len(CURVE_PREFIX) + 1, 64).cast("double")
    return curve_metrics.where(wanted).select(
        strength.alias("debias"),
        (F.abs(strength - F.lit(served)) < 1e-9).alias("served"),
        name.alias("metric"),
        "k",
        "value",
    )


def log_curve(curve: pd.DataFrame, k: int) -> None:
    """The curve to the log, to MLflow (metrics, csv, figure) and beside the tables."""
    if curve.empty:
        return
    wide = curve.pivot_table(index=["debias", "served"], columns="metric", values="value")
    wide = wide[[m for m in CURVE_METRICS.values() if m in wide.columns]].reset_index()
    log.info(
        "re-rank curve on test (popularity de-biasing; served: picked on validation):\n%s",
        wide.to_string(index=False, float_format="%.4f"),
    )
    tracking.log_job_metrics(
        {f"debias_curve.{r.debias:g}.{r.metric}_at_{k}": r.value for r in curve.itertuples()}
    )
    mlflow.log_text(wide.to_csv(index=False), "debias_curve.csv")
    figure = plots.debias_curve_figure(wide, k)
    try:
        tracking.log_figure(figure, CURVE_FIGURE)
    finally:
        plots.close(figure)


def metrics_tables(
    recs: DataFrame,
    interactions: DataFrame,
    item_vectors: DataFrame,
    n_items: int,
    cfg: Config,
    item_ids: np.ndarray | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Every metric of every model, overall and per segment (ranking metrics only); and per
    segment, the hybrid against each baseline, paired by user. With the catalog's ``item_ids``
    (a catalog held in memory), summed in numpy blocks in one pass over the users
    (``hybridrec.evaluation.blocked``); without, in Spark SQL (``metrics``): the same figures."""
    k = cfg.evaluate.k
    truth = interactions.where(F.col(SPLIT_COL) == TEST)
    seen = history(interactions, TEST)
    segments = evaluation.segment_truth(truth, seen, cfg.evaluate.segment_fraction)
    tagged = reduce(
        DataFrame.unionByName,
        [rows.withColumn(SEGMENT, F.lit(name)) for name, rows in segments.items()],
    )
    if item_ids is not None:
        context = blocked.list_context(
            recs, list(segments), HYBRID, k, item_ids, item_vectors, seen
        )
        sums = blocked.list_sums(recs, tagged, context, cfg.score.user_block_rows)
        metrics, comparisons = blocked.metrics_from_sums(
            recs.sparkSession, sums, context, n_items, cfg.evaluate.confidence
        )
    else:
        # Every segment in one pass, and the means and paired comparisons from one aggregation.
        per_user = evaluation.per_user_metrics(recs, tagged, k, by=(SEGMENT,))
        means, comparisons = evaluation.summarise(
            per_user, HYBRID, k, cfg.evaluate.confidence, by=(SEGMENT,)
        )
        lists = (
            evaluation.catalog_coverage(recs, n_items, k),
            evaluation.intra_list_diversity(recs, item_vectors, k),
            evaluation.novelty(recs, seen, k),
        )
        metrics = reduce(
            DataFrame.unionByName, [means, *[m.withColumn(SEGMENT, F.lit("all")) for m in lists]]
        )
    # The re-rank curve's lists have metrics but no comparison: they are the hybrid.
    return metrics, comparisons.where(~F.col("model").startswith(CURVE_PREFIX))


def log_comparisons(table: pd.DataFrame, confidence: float) -> None:
    table = table[table["metric"].isin(HEADLINE_METRICS)]
    bounds = zip(table.ci_low, table.ci_high, strict=True)
    shown = table.assign(interval=[f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in bounds])[
        ["segment", "model", "metric", "users", "difference", "interval", "p_value"]
    ]
    log.info(
        "hybrid minus each baseline, paired by user (%.0f%% intervals):\n%s",
        100 * confidence,
        shown.sort_values(["segment", "metric", "model"]).to_string(
            index=False, float_format="%.4f"
        ),
    )


def headline(every_metric: dict[str, float], gaps: dict[str, float], k: int) -> dict[str, float]:
    """The stage's results, which the runner prints on one line: the hybrid's NDCG and HR, each
    baseline's NDCG, and the hybrid's gaps to the strongest baseline (highest NDCG), the one it
    has to beat, overall and for sparse users. MLflow and the tables hold every number."""
    ndcg = {
        m: every_metric[f"{m}.ndcg_at_{k}"] for m in MODELS if f"{m}.ndcg_at_{k}" in every_metric
    }
    results = {f"{HYBRID}.ndcg_at_{k}": ndcg.get(HYBRID, float("nan"))}
    results[f"{HYBRID}.hr_at_{k}"] = every_metric.get(f"{HYBRID}.hr_at_{k}", float("nan"))
    baselines = {m: v for m, v in ndcg.items() if m != HYBRID}
    results |= {f"{m}.ndcg_at_{k}": v for m, v in baselines.items()}
    baselines.pop(HYBRID_LINEAR, None)  # the hybrid's own first stage, not a baseline to beat
    if f"hybrid_minus_{HYBRID_LINEAR}.ndcg_at_{k}" in gaps:
        results[f"hybrid_minus_{HYBRID_LINEAR}.ndcg_at_{k}"] = gaps[
            f"hybrid_minus_{HYBRID_LINEAR}.ndcg_at_{k}"
        ]
    if baselines:
        best = f"hybrid_minus_{max(baselines, key=baselines.get)}"
        for name in (
            f"{best}.ndcg_at_{k}",
            f"{best}.ndcg_p_value_at_{k}",
            f"{best}.hr_at_{k}",
            f"{best}.hr_p_value_at_{k}",
            f"{best}.sparse_users.ndcg_at_{k}",
        ):
            if name in gaps:
                results[name] = gaps[name]
    return results


def run(spark: SparkSession, cfg: Config, run_id: str) -> dict[str, float]:
    warehouse = Warehouse.from_config(spark, cfg, run_id)
    kernel_started = blocks.kernel_clock(spark).value
    driver_started = blocks.driver_kernel_seconds(spark)
    k = cfg.evaluate.k
    hybrid = hybrid_recommendations(warehouse, run_id)
    picked = picked_weights(warehouse, cfg)
    mode = rank.ranking_mode(warehouse, cfg)
    interactions = warehouse.read(INTERACTIONS)
    learned = learned_ranking.served_ranker_row(warehouse) is not None
    kernel_recs = kernel_recommendations(warehouse, cfg, picked, mode, hybrid, learned=learned)
    items = scoring.catalog_items(interactions, warehouse.read(ITEMS), cfg)
    linear_recs, linear_picks = linear.tune_and_recommend(
        interactions,
        items,
        cfg,
        dense=not mode.over_candidates,
        in_memory=mode.catalog_broadcast,
    )
    warehouse.write(
        kernel_recs.unionByName(linear_recs, allowMissingColumns=True),
        BASELINE_RECOMMENDATIONS,
        run_id=run_id,
    )
    recs = hybrid.unionByName(
        warehouse.read(BASELINE_RECOMMENDATIONS).drop("run_id"), allowMissingColumns=True
    )
    metrics, comparisons = metrics_tables(
        recs.select("model", "user_id", "rank", "item_id"),
        interactions,
        scoring.of_fold(warehouse.read(ITEM_EMBEDDINGS), TEST),
        mode.n_items,
        cfg,
        item_ids=catalog_ids(items) if mode.catalog_broadcast else None,
    )
    # A few rows per model and metric, two tables read them: computed once (the coverage,
    # diversity and novelty jobs), then the three tables written side by side.
    metrics = metrics.localCheckpoint()
    is_curve = F.col("model").startswith(CURVE_PREFIX)
    warehouse.write_together(
        {
            METRICS: metrics.where(~is_curve).unionByName(
                evaluation.reason_shares(
                    recs.where(F.col("model").isin(HYBRID, HYBRID_LINEAR)), k
                ).withColumn(SEGMENT, F.lit("all"))
            ),
            COMPARISONS: comparisons,
            DEBIAS_CURVE: debias_curve(metrics.where(is_curve), picked["hybrid"][DEBIAS]),
        },
        run_id=run_id,
    )
    log_curve(warehouse.read(DEBIAS_CURVE).drop("run_id").toPandas(), k)
    if linear_picks:
        mlflow.log_params(linear_picks)
    table = warehouse.read(METRICS).drop("run_id").toPandas()
    overall = table[table["segment"] == "all"]
    wide = overall.pivot_table(index="model", columns="metric", values="value").reindex(
        [m for m in MODELS if m in set(overall["model"])]
    )
    log.info(
        "metrics at K=%d, all test users (per segment: the metrics table and MLflow):\n%s",
        k,
        wide.to_string(float_format="%.4f"),
    )
    every_metric = {
        f"{r.model}.{'' if r.segment == 'all' else r.segment + '.'}{r.metric}_at_{r.k}": r.value
        for r in table.itertuples()
    }
    compared = warehouse.read(COMPARISONS).toPandas()
    log_comparisons(compared[compared["segment"] == "all"], cfg.evaluate.confidence)
    gaps = {}
    for r in compared[compared["metric"].isin(HEADLINE_METRICS)].itertuples():
        name = f"hybrid_minus_{r.model}.{'' if r.segment == 'all' else r.segment + '.'}{r.metric}"
        gaps[f"{name}_at_{r.k}"] = r.difference
        gaps[f"{name}_p_value_at_{r.k}"] = r.p_value
    # Every metric and gap to MLflow; the job's results (its log line) stay the headline.
    tracking.log_job_metrics({**every_metric, **gaps}, parent_too=True)
    figure = plots.metrics_figure(table, compared, k, cfg.evaluate.confidence)
    try:
        tracking.log_figure(figure, FIGURE)
        plots.write_report(warehouse, run_id, FIGURE, plots.png_bytes(figure))
    finally:
        plots.close(figure)  # pyplot keeps every open figure alive
    mlflow.log_text(table.to_csv(index=False), "metrics.csv")
    mlflow.log_text(compared.drop(columns="run_id").to_csv(index=False), "comparisons.csv")
    kernel = {
        "kernel_seconds": blocks.kernel_clock(spark).value - kernel_started,
        "driver_kernel_seconds": blocks.driver_kernel_seconds(spark) - driver_started,
    }
    if cfg.mlflow.log_model and mode.catalog_broadcast:
        # The last stage: the run's ranking is complete, and a version per run is registered.
        recommender.log_served_model(spark, warehouse, cfg, run_id)
    elif cfg.mlflow.log_model:
        log.info(
            "no served model: %s (one process holds it up to the memory mode)", mode.describe()
        )
    return headline(every_metric, gaps, k) | kernel | interest_checks(warehouse, cfg, interactions)


def interest_checks(warehouse: Warehouse, cfg: Config, interactions: DataFrame) -> dict[str, float]:
    """How often each user's test item falls in their interest tags (topics job), against the
    same number of most popular topics for everyone, paired per user (MLflow and the results)."""
    if not (cfg.topics.enabled and warehouse.exists(USER_INTERESTS)):
        return {}
    hits = interests.next_item_hits(
        interactions,
        warehouse.read(ITEM_TOPICS),
        warehouse.read(USER_INTERESTS),
        cfg.evaluate.confidence,
    )
    if not hits.users:
        return {}
    checks = {
        "interests.users": float(hits.users),
        "interests.next_item_hit": hits.interests,
        "interests.popular_topics_hit": hits.prior,
        "interests.gain_low": hits.low,
        "interests.gain_high": hits.high,
    }
    log.info(
        "next item in the user's (up to %d) interest tags: %.4f of %d users; in as many of the "
        "most popular topics: %.4f (difference %.4f, %.0f%% interval [%.4f, %.4f])",
        cfg.topics.interests_top,
        hits.interests,
        hits.users,
        hits.prior,
        hits.interests - hits.prior,
        100 * cfg.evaluate.confidence,
        hits.low,
        hits.high,
    )
    tracking.log_job_metrics(checks, parent_too=True)
    return checks


if __name__ == "__main__":
    job_main(NAME, run, sys.argv[1:])
