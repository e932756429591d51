"""score: factors + embeddings + interactions -> recommendations (top-K per user, hybrid).

    spark-submit jobs/score.py --conf conf/local.yaml [--set score.k=20]
    python -m jobs.score --conf conf/local.yaml

With ``score.tune_on_validation`` the fusion weights are picked on the validation split from a
simplex grid (never on test); otherwise ``score.weights`` are used as given.
"""

from __future__ import annotations

import logging
import sys
from statistics import NormalDist

import mlflow
import pandas as pd
from pyspark.sql import SparkSession

from hybridrec.config.loader import Config
from hybridrec.constants import (
    FUSION_WEIGHTS,
    RECOMMENDATIONS,
    TEST,
    TEXT_PARTS,
    VALIDATION,
)
from hybridrec.ops import progress
from hybridrec.ops.runner import job_main
from hybridrec.ranking import candidates, scoring
from hybridrec.store.tables import Warehouse
from udfs.ranking_kernel import PARTS, weight_grid, with_next
from udfs.rerank import DEBIAS, debiased

NAME = "score"
log = logging.getLogger(__name__)


def _candidate_tuner(warehouse: Warehouse, cfg: Config, grid: list[dict[str, float]]):
    """Tuning over candidates: per sharpness, the NDCG and HR on validation of each point of
    ``grid`` (or of the points given), with the candidate recall (the share of held-out items
    that were candidates) in each row."""
    tables = candidates.load_fold(warehouse, cfg, VALIDATION)

    def tune(
        sharpness: float, points: list[dict[str, float]] = grid, *, paired: bool = False
    ) -> pd.DataFrame:
        ranks = candidates.tune_ranks(
            tables, VALIDATION, points, cfg, scoring.TUNE_SCHEMA, recent_sharpness=sharpness
        )
        tuned = candidates.summarise(ranks, cfg.score.k, paired=paired).toPandas()
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
    hybrid from the whole simplex grid times ``score.recent_sharpness_grid``, then mixed with
    the what-came-next part (``choose_next``) and re-ranked (``choose_debias``); the text
    baseline from the points that use text parts only. Ties go to the earlier sharpness and
    grid point, so the pick is reproducible.
    """
    configured = scoring.configured_weights(cfg)
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

        def tune(
            p: float, points: list[dict[str, float]] = grid, *, paired: bool = False
        ) -> pd.DataFrame:
            return scoring.tune(
                users, catalog, points, cfg, recent_sharpness=p, paired=paired
            ).toPandas()

    frames = []
    for i, p in enumerate(sharpness_grid):
        point = f"weight grid {i + 1} of {len(sharpness_grid)} (recent sharpness {p:g})"
        log.info("%s: %d weight sets on validation", point, len(grid))
        with progress.working_on(point):
            tuned = tune(p)
        frames.append(tuned.assign(recent_sharpness=p, _order=i))
    results = pd.concat(frames, ignore_index=True)
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
    picks = picks.rename(columns={"ndcg": "validation_ndcg", "hr": "validation_hr"}).drop(
        columns=["combo", "users"]
    )
    hybrid = picks["model"] == "hybrid"
    mixed, next_curve = choose_next(picks[hybrid].iloc[0], tune, cfg)
    if len(next_curve):
        mlflow.log_text(next_curve.to_csv(index=False), "next_validation.csv")
    for column, value in mixed.items():
        picks.loc[hybrid, column] = value
    chosen, curve = choose_debias(picks[hybrid].iloc[0], tune, cfg)
    if len(curve):
        mlflow.log_text(curve.to_csv(index=False), "debias_validation.csv")
    if not over_candidates:
        users.unpersist()
    picks[DEBIAS] = 0.0
    for column, value in chosen.items():
        picks.loc[hybrid, column] = value
    return picks


def choose_next(pick: pd.Series, tune, cfg: Config) -> tuple[dict[str, float], pd.DataFrame]:
    """The picked weights mixed with the what-came-next part at the share of
    ``score.next_share_grid`` with the best validation NDCG (weights times 1 - s, ``next`` s),
    among the shares whose NDCG gain over the pick, paired by user, is above zero at
    ``score.next_confidence``; unchanged where none is. The part is added to a pick already
    fitted to these users, so a share must gain more than their noise: on a few hundred users
    a gain of 2% is within it. Ties go to the smaller share.
    Returns the weights with their validation NDCG and HR, and the curve tried."""
    shares = sorted({float(s) for s in cfg.score.next_share_grid} - {0.0})
    weights = {part: float(pick[part]) for part in PARTS}
    unchanged = {
        **weights,
        "validation_ndcg": float(pick["validation_ndcg"]),
        "validation_hr": float(pick["validation_hr"]),
    }
    if not shares:
        return unchanged, pd.DataFrame()
    # Share 0 (the pick itself) comes first: the gains are paired against it.
    shares = [0.0, *shares]
    grid = [with_next(weights, s) for s in shares]
    with progress.working_on(f"what came next ({len(grid) - 1} shares)"):
        curve = tune(float(pick["recent_sharpness"]), grid, paired=True).sort_values("combo")
    z = NormalDist().inv_cdf(0.5 + cfg.score.next_confidence / 2)
    curve = curve.assign(
        next_share=[shares[c] for c in curve["combo"]],
        gain_low=curve["ndcg_gain"] - z * curve["ndcg_gain_se"],
    )
    log.info(
        "what came next on validation (gain: NDCG over the pick, paired by user; low: its "
        "%g%% interval's lower end):\n%s",
        100 * cfg.score.next_confidence,
        curve[["next_share", "ndcg", "hr", "ndcg_gain", "ndcg_gain_se", "gain_low"]].to_string(
            index=False, float_format="%.4f"
        ),
    )
    clear = curve[(curve["next_share"] > 0) & (curve["gain_low"] > 0)]
    if clear.empty:
        return unchanged, curve
    row = clear.sort_values(["ndcg", "next_share"], ascending=[False, True]).iloc[0]
    return {
        **grid[int(row["combo"])],
        "validation_ndcg": float(row["ndcg"]),
        "validation_hr": float(row["hr"]),
    }, curve


def choose_debias(pick: pd.Series, tune, cfg: Config) -> tuple[dict[str, float], pd.DataFrame]:
    """The strongest popularity de-biasing (``score.debias_grid``) whose validation NDCG stays
    within ``score.max_ndcg_loss`` of the picked weights' own: how much accuracy the catalog's
    long tail may cost is a setting, and the pick is made on validation like everything else.
    Returns debias with the validation NDCG and HR at that strength, and the curve tried."""
    strengths = sorted(float(b) for b in cfg.score.debias_grid if b > 0)
    unchanged = {
        DEBIAS: 0.0,
        "validation_ndcg": float(pick["validation_ndcg"]),
        "validation_hr": float(pick["validation_hr"]),
    }
    if not strengths or cfg.score.max_ndcg_loss == 0:
        return unchanged, pd.DataFrame()
    weights = {part: float(pick[part]) for part in PARTS}
    sharpness = float(pick["recent_sharpness"])
    grid = [debiased(weights, b) for b in strengths]
    with progress.working_on(f"popularity de-biasing ({len(grid)} strengths)"):
        curve = tune(sharpness, grid).sort_values("combo")
    curve = curve.assign(**{DEBIAS: [strengths[c] for c in curve["combo"]]})
    floor = (1 - cfg.score.max_ndcg_loss) * unchanged["validation_ndcg"]
    log.info(
        "popularity de-biasing on validation (NDCG floor %.4f = %.4f less %.1f%%):\n%s",
        floor,
        unchanged["validation_ndcg"],
        100 * cfg.score.max_ndcg_loss,
        curve[[DEBIAS, "ndcg", "hr"]].to_string(index=False, float_format="%.4f"),
    )
    within = curve[curve["ndcg"] >= floor]
    if within.empty:
        return unchanged, curve
    best = within.iloc[-1]
    return {
        DEBIAS: float(best[DEBIAS]),
        "validation_ndcg": float(best["ndcg"]),
        "validation_hr": float(best["hr"]),
    }, curve


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
    debias = float(hybrid[DEBIAS])
    weights = {part: float(hybrid[part]) for part in PARTS}
    sharpness = float(hybrid["recent_sharpness"])
    mlflow.log_params({f"hybrid_weight.{part}": w for part, w in weights.items()})
    mlflow.log_params({"hybrid_recent_sharpness": sharpness, "hybrid_debias": debias})
    # Served recommendations come from the test fold: models refitted on train and validation.
    recs = candidates.recommend_fold(
        warehouse,
        cfg,
        TEST,
        {"hybrid": debiased(weights, debias)},
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
        "debias": debias,
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
