"""One way to rank a fold, whatever the catalog's size.

``ranking_mode`` decides once per job how the catalog is ranked:

- ``full``: every unseen item of a catalog broadcast to every task (``scoring``), up to
  ``score.candidates.max_full_items``;
- ``memory``: per-user candidates chosen in each block of users against the same broadcast
  catalog (``udfs.block_candidates``), up to ``score.candidates.max_memory_items``;
- ``spark``: per-user candidates as Spark rows, nothing item-sized broadcast (``candidates``),
  above it.

``score.candidates.mode: candidates`` skips ``full``; ``full`` forces it. ``rank_fold`` gives each
user's top K for named weight sets, and ``validation_tuner`` scores weight sets on the
validation (and early) targets, both in that mode: weights are tuned the way they are used. The
jobs call these and never choose a path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import reduce

import pandas as pd
from pyspark.sql import DataFrame

from hybridrec.config.loader import Config
from hybridrec.constants import VALIDATION
from hybridrec.ranking import blocks, candidates, catalogs, scoring
from hybridrec.store.tables import Warehouse
from udfs import ranking_kernel

log = logging.getLogger(__name__)

# tune(sharpness, points, *, paired) -> one row per point: combo, ndcg, hr, users (paired adds
# ndcg_gain and ndcg_gain_se over point 0; over candidates, candidate_recall too).
Tune = Callable[..., pd.DataFrame]


@dataclass(frozen=True)
class UserState:
    """Users to rank from their own state: ``interactions`` (every row is history of the fold
    being ranked: ``folds.history`` keeps it), ``factors`` (user_id, factors) and ``vectors``
    (user_id, embedding)."""

    interactions: DataFrame
    factors: DataFrame
    vectors: DataFrame


FULL, MEMORY, SPARK = "full", "memory", "spark"
_DESCRIBED = {
    FULL: "full ranking (catalog broadcast)",
    MEMORY: "per-user candidates chosen in each block (catalog broadcast)",
    SPARK: "per-user candidates as Spark rows (nothing item-sized broadcast)",
}


@dataclass(frozen=True)
class RankingMode:
    n_items: int
    how: str  # FULL, MEMORY or SPARK

    @property
    def over_candidates(self) -> bool:
        return self.how != FULL

    @property
    def catalog_broadcast(self) -> bool:
        return self.how != SPARK

    def describe(self) -> str:
        return f"catalog of {self.n_items} items: {_DESCRIBED[self.how]}"


def choose_mode(cfg: Config, n_items: int) -> str:
    """FULL, MEMORY or SPARK for a catalog of ``n_items`` (the module doc)."""
    c = cfg.score.candidates
    if not candidates.use_candidates(cfg, n_items):
        return FULL
    return MEMORY if n_items <= c.max_memory_items else SPARK


def ranking_mode(warehouse: Warehouse, cfg: Config) -> RankingMode:
    n_items = scoring.catalog_size(warehouse, cfg)
    return RankingMode(n_items, choose_mode(cfg, n_items))


def rank_fold(
    warehouse: Warehouse,
    cfg: Config,
    fold: str,
    models: Mapping[str, Mapping[str, float]],
    *,
    recent_sharpness: float,
    mode: RankingMode,
    sample: float = 1.0,
) -> DataFrame:
    """Top-K rows (the recommendations table's columns with ``model``) of ``fold`` for each
    named weight set; ``sample`` < 1: only for that share of the users (``scoring.hash_sample``)."""
    return rank_users(
        warehouse, cfg, fold, models, recent_sharpness=recent_sharpness, mode=mode, sample=sample
    )


def rank_users(
    warehouse: Warehouse,
    cfg: Config,
    fold: str,
    models: Mapping[str, Mapping[str, float]],
    *,
    recent_sharpness: float,
    mode: RankingMode,
    users: UserState | None = None,
    catalog: ranking_kernel.ItemCatalog | None = None,
    sample: float = 1.0,
) -> DataFrame:
    """``rank_fold`` for the users of ``users`` (their own history and vectors; the stream's
    live users) against ``fold``'s items, neighbour lists and popularity; without ``users``,
    the fold's own users. ``catalog``: ``catalogs.load_catalog`` of the fold, when the caller
    keeps it (a broadcast mode only)."""
    if mode.how == SPARK:
        tables = candidates.load_fold(warehouse, cfg, fold)
        if users is not None:
            tables = replace(
                tables,
                interactions=users.interactions,
                user_factors=users.factors,
                user_vectors=users.vectors,
            )
        return candidates.recommend(
            tables,
            fold,
            models,
            cfg,
            scoring.RECOMMENDATION_SCHEMA,
            recent_sharpness=recent_sharpness,
            sample=sample,
        )
    catalog = catalog or catalogs.load_catalog(warehouse, cfg, fold)
    if users is None:
        frame = scoring.load_user_frame(warehouse.spark, warehouse, catalog, fold)
    else:
        frame = scoring.build_user_frame(
            warehouse.spark, users.interactions, catalog, fold, users.factors, users.vectors
        )
    frame = scoring.hash_sample(frame, sample)
    return scoring.recommend(
        frame,
        catalog,
        models,
        cfg,
        recent_sharpness=recent_sharpness,
        over_candidates=mode.over_candidates,
    )


Pass = tuple[float, float, Mapping[str, Mapping[str, float]]]


def rank_fold_passes(
    warehouse: Warehouse, cfg: Config, fold: str, passes: Sequence[Pass], *, mode: RankingMode
) -> DataFrame:
    """``rank_fold`` of each (recent sharpness, sample, weight sets) in ``passes``, unioned.
    Where the catalog is broadcast, in one pass over the users: each block of users is ranked
    once per entry (only its sampled users for a sample below 1), so the users are moved and
    the catalog shipped once, not once per entry. The first entry must rank every user."""
    if passes[0][1] < 1:
        raise ValueError("the first pass must rank every user")
    if mode.how == SPARK:
        ranked = [
            rank_fold(warehouse, cfg, fold, models, recent_sharpness=s, mode=mode, sample=sample)
            for s, sample, models in passes
        ]
        return reduce(DataFrame.unionByName, ranked)
    catalog = catalogs.load_catalog(warehouse, cfg, fold)
    frame = scoring.load_user_frame(warehouse.spark, warehouse, catalog, fold)
    entries = []
    for i, (sharpness, sample, models) in enumerate(passes):
        only = None if sample >= 1 else f"_in_pass_{i}"
        if only:
            frame = frame.withColumn(only, scoring.in_sample(sample))
        entries.append((sharpness, only, {name: dict(w) for name, w in models.items()}))

    def score_block(block: pd.DataFrame, items: ranking_kernel.ItemCatalog) -> pd.DataFrame:
        ranked = []
        for sharpness, only, models in entries:
            rows = block if only is None else block[block[only].to_numpy()].reset_index(drop=True)
            if len(rows):
                ranked.append(
                    scoring.recommend_block(
                        rows, items, models, cfg, sharpness, over_candidates=mode.over_candidates
                    )
                )
        return pd.concat(ranked, ignore_index=True)

    shared = warehouse.spark.sparkContext.broadcast(catalog)
    return blocks.map_user_blocks(
        frame, shared, cfg.score.user_block_rows, scoring.RECOMMENDATION_SCHEMA, score_block
    )


@contextmanager
def validation_tuner(
    warehouse: Warehouse,
    cfg: Config,
    mode: RankingMode,
    grid: Sequence[Mapping[str, float]],
    folds: Sequence[str] = (VALIDATION,),
) -> Iterator[Tune]:
    """A ``Tune`` over the users with a held-out target of each of ``folds`` (the validation
    fold, and the early fold where it was fitted), each fold a hash sample above
    ``score.tune_max_users``, its points defaulting to ``grid``; the folds' summaries are pooled
    (``pooled_summaries``). What it holds is released on exit."""
    with ExitStack() as held:
        tunes = [held.enter_context(fold_tuner(warehouse, cfg, mode, grid, f)) for f in folds]
        if len(tunes) == 1:
            yield tunes[0]
            return

        def tune(
            sharpness: float, points: Sequence[Mapping[str, float]] = grid, *, paired=False
        ) -> pd.DataFrame:
            return pooled_summaries([t(sharpness, points, paired=paired) for t in tunes])

        yield tune


def pooled_summaries(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One ``Tune`` row per combo from each fold's: every mean weighted by the fold's users,
    the users summed. ``ndcg_gain_se`` adds the folds' variances as if independent; a user's
    early and validation gains are somewhat alike, so it is a little narrower than the truth."""
    filled = [f for f in frames if len(f)]
    if not filled:
        return frames[0]
    rows = pd.concat(filled, ignore_index=True)
    means = [c for c in ("ndcg", "hr", "ndcg_gain", "candidate_recall") if c in rows]
    weighted = (
        rows[means].mul(rows["users"], axis=0).assign(combo=rows["combo"], users=rows["users"])
    )
    if "ndcg_gain_se" in rows:
        weighted["ndcg_gain_se"] = (rows["ndcg_gain_se"] * rows["users"]) ** 2
    pooled = weighted.groupby("combo", as_index=False).sum()
    pooled[means] = pooled[means].div(pooled["users"], axis=0)
    if "ndcg_gain_se" in pooled:
        pooled["ndcg_gain_se"] = pooled["ndcg_gain_se"] ** 0.5 / pooled["users"]
    return pooled[[c for c in frames[0].columns if c in pooled]]


@contextmanager
def fold_tuner(
    warehouse: Warehouse,
    cfg: Config,
    mode: RankingMode,
    grid: Sequence[Mapping[str, float]],
    fold: str,
) -> Iterator[Tune]:
    """``validation_tuner`` on ``fold``'s models and held-out targets. Nothing is picked on
    another fold: test's is for diagnostics (``benchmarks/grid_agreement.py``)."""
    if mode.how == SPARK:
        tables = candidates.load_fold(warehouse, cfg, fold)

        def tune(
            sharpness: float, points: Sequence[Mapping[str, float]] = grid, *, paired=False
        ) -> pd.DataFrame:
            ranks = candidates.tune_ranks(
                tables, fold, points, cfg, scoring.TUNE_SCHEMA, recent_sharpness=sharpness
            )
            return _summarised(ranks, cfg, sharpness, fold, paired=paired)

        yield tune
        return
    catalog = catalogs.load_catalog(warehouse, cfg, fold)
    users = scoring.load_user_frame(warehouse.spark, warehouse, catalog, fold, with_target=True)
    users = scoring.tuning_sample(users, cfg.score.tune_max_users).cache()

    def tune(
        sharpness: float, points: Sequence[Mapping[str, float]] = grid, *, paired=False
    ) -> pd.DataFrame:
        if mode.over_candidates:
            ranks = scoring.tune_ranks(
                users, catalog, points, cfg, recent_sharpness=sharpness, over_candidates=True
            )
            return _summarised(ranks, cfg, sharpness, fold, paired=paired)
        return scoring.tune(
            users, catalog, points, cfg, recent_sharpness=sharpness, paired=paired
        ).toPandas()

    try:
        yield tune
    finally:
        users.unpersist()


def _summarised(
    ranks: DataFrame, cfg: Config, sharpness: float, fold: str, *, paired: bool
) -> pd.DataFrame:
    """``candidates.summarise`` of ranks over candidates, the candidate recall logged."""
    tuned = candidates.summarise(ranks, cfg.score.k, paired=paired).toPandas()
    if len(tuned):
        log.info(
            "candidate recall on %s (recent sharpness %g): %.4f of %d users",
            fold,
            sharpness,
            tuned["candidate_recall"].iloc[0],
            tuned["users"].iloc[0],
        )
    return tuned
