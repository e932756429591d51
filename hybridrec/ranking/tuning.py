"""Choosing on validation, never on test: the fusion weights and recent sharpness from the
simplex grid (among the points within noise of the best, the one nearest a stable prior), then
the share of the what-came-next part, then the popularity re-rank strength.

``pick`` is the one entry: it tunes in the job's ranking mode (``rank.validation_tuner``) and
returns the picks with the curves it tried, which the job logs; nothing here writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from statistics import NormalDist

import pandas as pd

from hybridrec.config.loader import Config
from hybridrec.constants import ALS_PARAMS, EARLY, FOLD_COL, TEXT_PARTS, TUNING_FOLDS
from hybridrec.ops import progress
from hybridrec.ranking import scoring
from hybridrec.ranking.rank import RankingMode, Tune, validation_tuner
from hybridrec.store.tables import Warehouse
from udfs.ranking_kernel import PARTS, weight_grid, with_next
from udfs.rerank import DEBIAS, debiased

log = logging.getLogger(__name__)


@dataclass
class Pick:
    """``weights``: one row per model (hybrid, text) with its weights, recent sharpness,
    de-biasing strength and validation NDCG and HR where tuned; ``curves``: each table tried,
    by the artifact name it is logged under."""

    weights: pd.DataFrame
    curves: dict[str, pd.DataFrame]


def pick(warehouse: Warehouse, cfg: Config, mode: RankingMode) -> Pick:
    """Fusion weights of the hybrid and of the text-only baseline, one row per model.

    Picked on validation with the validation fold's models (which never saw that split), pooled
    with the early fold's users where it was fitted (``tuning_folds``): the hybrid from the
    whole simplex grid times ``score.recent_sharpness_grid`` (of the points within noise of the
    best, the one nearest a stable prior: ``choose_near_prior``), then mixed with the
    what-came-next part (``choose_next``) and re-ranked (``choose_debias``); the text
    baseline from the points that use text parts only. Ties go to the earlier sharpness and
    grid point, so the pick is reproducible. Without ``score.tune_on_validation``, or without
    validation users, the configured weights.
    """
    configured = scoring.configured_weights(cfg)
    if not cfg.score.tune_on_validation:
        return Pick(configured, {})
    grid = weight_grid(cfg.score.weight_grid_step)
    folds = tuning_folds(warehouse, cfg)
    log.info("weights picked on the held-out items of the %s fold(s), pooled", " and ".join(folds))
    with validation_tuner(warehouse, cfg, mode, grid, folds) as tune:
        return _pick(tune, grid, configured, cfg)


def tuning_folds(warehouse: Warehouse, cfg: Config) -> tuple[str, ...]:
    """The folds of ``TUNING_FOLDS`` the als job fitted models for (``folds.model_folds``),
    less the early fold where ``score.early_target`` is ``never``."""
    fitted = {row[0] for row in warehouse.read(ALS_PARAMS).select(FOLD_COL).distinct().collect()}
    if cfg.score.early_target == "never":
        fitted.discard(EARLY)
    return tuple(fold for fold in TUNING_FOLDS if fold in fitted)


def _pick(tune: Tune, grid: list[dict[str, float]], configured: pd.DataFrame, cfg: Config) -> Pick:
    sharpness_grid = [float(p) for p in cfg.score.recent_sharpness_grid]
    frames = []
    for i, p in enumerate(sharpness_grid):
        point = f"weight grid {i + 1} of {len(sharpness_grid)} (recent sharpness {p:g})"
        log.info("%s: %d weight sets on validation", point, len(grid))
        with progress.working_on(point):
            tuned = tune(p)
        frames.append(tuned.assign(recent_sharpness=p))
    results = pd.concat(frames, ignore_index=True)
    if results.empty:
        log.warning("no validation interactions: keeping the configured weights")
        return Pick(configured, {})
    results = ordered_grid(results, grid, cfg)
    curves = {"weight_grid_validation.csv": results}
    hybrid_pick, near_curve = choose_near_prior(results, grid, tune, cfg)
    if len(near_curve):
        curves["near_best_validation.csv"] = near_curve
    text_only = results[(results[[p for p in PARTS if p not in TEXT_PARTS]] == 0).all(axis=1)]
    picks = pd.concat([hybrid_pick.assign(model="hybrid"), text_only.head(1).assign(model="text")])
    for chosen in picks.itertuples():
        log.info(
            "%s weights %s, recent sharpness %g, picked on validation (%d grid points): "
            "ndcg@%d=%.4f hr=%.4f, %d users",
            chosen.model,
            {p: getattr(chosen, p) for p in PARTS},
            chosen.recent_sharpness,
            len(results),
            cfg.score.k,
            chosen.ndcg,
            chosen.hr,
            chosen.users,
        )
    picks = picks.rename(columns={"ndcg": "validation_ndcg", "hr": "validation_hr"}).drop(
        columns=["combo", "users"]
    )
    hybrid = picks["model"] == "hybrid"
    mixed, next_curve = choose_next(picks[hybrid].iloc[0], tune, cfg)
    if len(next_curve):
        curves["next_validation.csv"] = next_curve
    for column, value in mixed.items():
        picks.loc[hybrid, column] = value
    debias, debias_curve = choose_debias(picks[hybrid].iloc[0], tune, cfg)
    if len(debias_curve):
        curves["debias_validation.csv"] = debias_curve
    picks[DEBIAS] = 0.0
    for column, value in debias.items():
        picks.loc[hybrid, column] = value
    return Pick(picks, curves)


def ordered_grid(results: pd.DataFrame, grid: list[dict[str, float]], cfg: Config) -> pd.DataFrame:
    """``results`` (a row per recent sharpness and combo) with each point's weights, best first:
    ties to the earlier sharpness of ``score.recent_sharpness_grid``, then the earlier point."""
    order = {float(p): i for i, p in enumerate(cfg.score.recent_sharpness_grid)}
    return (
        results.join(pd.DataFrame(grid), on="combo")
        .assign(_order=results["recent_sharpness"].map(order))
        .sort_values([cfg.score.tune_metric, "_order", "combo"], ascending=[False, True, True])
        .drop(columns="_order")
    )


def choose_near_prior(
    results: pd.DataFrame,
    grid: list[dict[str, float]],
    tune: Tune,
    cfg: Config,
    *,
    se: float | None = None,
    prior: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Of the grid's best ``score.near_best_points`` at the best's sharpness, those whose NDCG
    is within ``score.near_best_se`` standard errors of the best's (paired by user), the one
    nearest the prior (L1; ties to the higher NDCG): ``score.near_best_prior`` ``centre``, the
    mean weights of those points, or ``configured``, ``score.weights``.

    On a few hundred users the grid's first place is mostly noise: dozens of points lie within
    one standard error of it, and which of them wins moves with any small change of the data
    or the vectors. The point nearest a stable prior among them moves far less, and costs no
    accuracy the users can tell apart (the one-standard-error rule). ``results``: the grid's
    rows best first; ``se`` and ``prior``: instead of the settings (the grid agreement
    benchmark compares them). Returns the chosen row of ``results`` and the curve tried (empty
    where the margin is 0 or a single point is compared: the best is kept).
    """
    margin = cfg.score.near_best_se if se is None else se
    best = results.iloc[0]
    sharpness = float(best["recent_sharpness"])
    near = results[results["recent_sharpness"] == sharpness].head(cfg.score.near_best_points)
    if margin == 0 or len(near) < 2:
        return results.head(1), pd.DataFrame()
    combos = near["combo"].tolist()  # the best first: the gains are paired against it
    with progress.working_on(f"the {len(combos)} points nearest the best, paired"):
        curve = tune(sharpness, [grid[c] for c in combos], paired=True)
    curve = (
        curve.assign(combo=[combos[c] for c in curve["combo"]])
        .join(pd.DataFrame(grid)[list(PARTS)], on="combo")
        .assign(recent_sharpness=sharpness)
    )
    curve["within_noise"] = curve["ndcg_gain"] + margin * curve["ndcg_gain_se"] >= 0
    if (prior or cfg.score.near_best_prior) == "configured":
        centre = {p: float(cfg.score.weights[p]) for p in PARTS}
    else:
        centre = curve.loc[curve["within_noise"], list(PARTS)].mean().to_dict()
    curve["prior_distance"] = sum((curve[p] - centre[p]).abs() for p in PARTS)
    curve = curve.sort_values(
        ["within_noise", "prior_distance", "ndcg"], ascending=[False, True, False]
    )
    chosen = curve.iloc[0]
    log.info(
        "%d of the %d best points at recent sharpness %g are within %g standard errors of the "
        "best (ndcg %.4f); the nearest to the %s weights is picked: %s, ndcg %.4f",
        int(curve["within_noise"].sum()),
        len(curve),
        sharpness,
        margin,
        float(best[cfg.score.tune_metric]),
        prior or cfg.score.near_best_prior,
        {p: float(chosen[p]) for p in PARTS},
        float(chosen["ndcg"]),
    )
    picked = results[
        (results["recent_sharpness"] == sharpness) & (results["combo"] == chosen["combo"])
    ]
    return picked.head(1), curve


def choose_next(pick: pd.Series, tune: Tune, cfg: Config) -> tuple[dict[str, float], pd.DataFrame]:
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


def choose_debias(
    pick: pd.Series, tune: Tune, cfg: Config
) -> tuple[dict[str, float], pd.DataFrame]:
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
