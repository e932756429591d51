"""Two simple, strong item-item baselines for the evaluate stage, each tuned on validation.

- EASE^R (Steck 2019): ``B = I - P / diag(P)`` with ``P = (XᵀX + l2·I)⁻¹``, the closed-form
  ridge regression of each item column on all the others. The inverse is dense and taken on the
  driver, so it runs only up to ``evaluate.ease.max_items`` catalog items; the Gram matrix is
  summed per Spark task and only its (at most n²) entries are collected.
- item-kNN: cosine similarity of item columns, each item's best neighbours, and a user's score
  for an item the sum of the similarities of her history items that list it
  (``hybridrec.evaluation.item_knn``; tuned here). Up to ``evaluate.ease.max_items`` the
  neighbour lists come from EASE's Gram matrix (``FoldGrams``); above it from pair sums over
  histories (``cooc``). The votes are summed in numpy where the catalog is held in memory, else
  in Spark, at any catalog size.

X is binary: ``X[u, i] = 1`` if the user had catalog item i in the fold's history (any event).
Both write the baselines' long format: model, user_id, rank (1 = best), item_id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from hybridrec.config.loader import Config
from hybridrec.constants import ITEM_COL, TEST, USER_COL, VALIDATION
from hybridrec.evaluation.item_knn import (
    block_target_ranks,
    block_top_k,
    cosine_neighbours,
    interacted,
    knn_target_ranks,
    neighbours_from_gram,
    recommend_knn,
)
from hybridrec.evaluation.matrix import (
    IDX_COL,
    RECOMMENDATION_SCHEMA,
    catalog_ids,
    dense_tuning_ranks,
    item_index,
    item_lists,
    recommend_dense,
    seen_lists,
    tuning_seen_lists,
)
from hybridrec.models import cooc
from hybridrec.models.folds import history
from hybridrec.ranking import blocks, scoring
from hybridrec.ranking.candidates import held_out_targets
from udfs.pair_kernel import UPPER_TRIANGLE_SCHEMA, upper_triangle

log = logging.getLogger(__name__)

EASE, ITEM_KNN = "ease", "item_knn"


# --- EASE^R ---------------------------------------------------------------------------------


def gram(history: DataFrame, index: DataFrame, n: int) -> np.ndarray:
    """G = XᵀX as a dense (n, n) float64 array: G[i, i] users of i, G[i, j] users of both.

    Summed per task over each user's items (``cooc.pair_sums``); only the summed entries of one
    triangle are collected, since G is symmetric.
    """
    counts = cooc.pair_sums(
        item_lists(history, index), n, upper_triangle, UPPER_TRIANGLE_SCHEMA
    ).toArrow()
    matrix = np.zeros((n, n))
    i, j, c = (counts.column(col).to_numpy() for col in ("i", "j", "count"))
    matrix[i, j] = c
    matrix[j, i] = c
    return matrix


class FoldGrams:
    """Each fold's Gram matrix, for EASE and item-kNN both: counted once per fold and held one
    fold at a time (an items x items float64 array each); while a fold's is held, item-kNN's
    neighbour lists (items x ``knn_width``) are taken from it and kept, so item-kNN needs no
    pair sums of its own."""

    def __init__(self, interactions: DataFrame, index: DataFrame, n_items: int, knn_width: int):
        self.interactions, self.index, self.n_items = interactions, index, n_items
        self.knn_width = knn_width
        self._held: tuple[str | None, np.ndarray | None] = (None, None)
        self._lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def of(self, fold: str) -> np.ndarray:
        if self._held[0] != fold:
            self._held = (None, None)  # freed before the next one is counted
            started = time.perf_counter()
            matrix = gram(history(self.interactions, fold), self.index, self.n_items)
            with blocks.driver_kernel(self.interactions.sparkSession):
                self._lists[fold] = neighbours_from_gram(matrix, self.knn_width)
            log.info(
                "Gram matrix of the %s fold (%d items) and item_knn's neighbour lists in %.1fs",
                fold,
                self.n_items,
                time.perf_counter() - started,
            )
            self._held = (fold, matrix)
        return self._held[1]

    def knn_lists(self, fold: str) -> tuple[np.ndarray, np.ndarray]:
        if fold not in self._lists:
            self.of(fold)
        return self._lists[fold]

    def release(self) -> None:
        self._held = (None, None)


def ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE^R item-item weights (float32): B[i, j] = -P[i, j] / P[j, j] with
    P = (G + l2·I)⁻¹, and a zero diagonal (an item never predicts itself)."""
    # In place where numpy allows: at 10k items each float64 copy is 800 MB.
    regularised = gram.copy()
    regularised[np.diag_indices_from(regularised)] += l2
    weights = np.linalg.inv(regularised)
    del regularised
    weights /= -weights.diagonal().copy()
    np.fill_diagonal(weights, 0.0)
    return weights.astype(np.float32)


# --- tuning on validation, refit on test ----------------------------------------------------


def _validation_scores(ranks: DataFrame, k: int) -> tuple[float, float, int]:
    """NDCG@k, HR@k and users of one grid value's target ranks (zeros without users)."""
    rows = scoring.summarise_ranks(ranks, k).collect()
    if not rows:
        return 0.0, 0.0, 0
    return float(rows[0]["ndcg"]), float(rows[0]["hr"]), int(rows[0]["users"])


Scores = tuple[float, float, int]  # NDCG@k, HR@k, users


def _combo_scores(ranks: DataFrame, k: int, combos: Sequence[int]) -> list[Scores]:
    """(NDCG@k, HR@k, users) of each of ``combos`` in ``ranks`` (combo, user_id, target_rank),
    from one summary; zeros for a combo no user reached."""
    summary = scoring.summarise_ranks(ranks, k).toPandas().set_index("combo")  # a row per combo
    return [
        (float(summary.at[c, "ndcg"]), float(summary.at[c, "hr"]), int(summary.at[c, "users"]))
        if c in summary.index
        else (0.0, 0.0, 0)
        for c in combos
    ]


def _grid_search(
    model: str,
    key: str,
    grid: Sequence[float],
    rank_targets: Callable[[int, Any], DataFrame],
    k: int,
) -> tuple[int, tuple[float, float, int]]:
    """Position and (NDCG, HR, users) of the grid value of best validation NDCG (the first on
    ties); ``rank_targets(combo, value)`` gives combo, user_id, target_rank."""
    scores = []
    for combo, value in enumerate(grid):
        started = time.perf_counter()
        scores.append(_validation_scores(rank_targets(combo, value), k))
        log.info(
            "%s %s=%s: validation NDCG@%d %.4f, HR@%d %.4f over %d users (%.1fs)",
            model,
            key,
            value,
            k,
            scores[-1][0],
            k,
            scores[-1][1],
            scores[-1][2],
            time.perf_counter() - started,
        )
    best = max(range(len(grid)), key=lambda c: scores[c][0])
    log.info("%s: picked %s=%s", model, key, grid[best])
    return best, scores[best]


def _untuned(model: str, key: str, grid: Sequence[float]) -> bool:
    """Whether ``grid`` has a single value: nothing to pick, so no validation fit or scoring."""
    if len(grid) > 1:
        return False
    log.info("%s: %s=%s, the grid's only value (not scored on validation)", model, key, grid[0])
    return True


def _picked(model: str, key: str, value: float, scores: tuple | None) -> dict[str, float]:
    params = {f"{model}.{key}": value}
    if scores is not None:
        params |= {f"{model}.validation_ndcg": scores[0], f"{model}.validation_hr": scores[1]}
    return params


def ease_passes(grid: Sequence[float], n_items: int, budget_mb: float) -> list[list[int]]:
    """The grid's positions in passes over the users: as many EASE matrices per pass as fit
    ``budget_mb`` (float32, n² x 4 bytes each, held by every task), at least one."""
    per_pass = max(1, int(budget_mb * 2**20 // (4 * n_items * n_items)))
    positions = list(range(len(grid)))
    return [positions[i : i + per_pass] for i in range(0, len(positions), per_pass)]


def _ease_validation(
    interactions: DataFrame,
    targets: DataFrame,
    ids: np.ndarray,
    grams: FoldGrams,
    grid: Sequence[float],
    cfg: Config,
) -> tuple[int, tuple[float, float, int]]:
    """Each l2 value of ``grid`` judged on the validation fold: the users' seen lists built
    once, then as many l2 values per pass over them as ``evaluate.ease.tuning_broadcast_mb``
    holds (each pass is a Spark job, a broadcast and a checkpoint: one pass instead of one per
    value where the catalog is small). The best NDCG wins, the first on ties."""
    k = cfg.evaluate.k
    matrix = grams.of(VALIDATION)
    seen = tuning_seen_lists(history(interactions, VALIDATION), targets, ids).persist()
    scores: list[Scores] = []
    try:
        for positions in ease_passes(grid, len(ids), cfg.evaluate.ease.tuning_broadcast_mb):
            started = time.perf_counter()
            with blocks.driver_kernel(interactions.sparkSession):
                weights = [ease_weights(matrix, grid[p]) for p in positions]
            ranks = dense_tuning_ranks(
                seen, weights, first_combo=positions[0], block_rows=cfg.score.user_block_rows
            )
            scores += _combo_scores(ranks, k, positions)
            seconds = time.perf_counter() - started
            for p in positions:
                log.info(
                    "%s l2=%s: validation NDCG@%d %.4f, HR@%d %.4f over %d users "
                    "(%d value(s) in %.1fs)",
                    EASE, grid[p], k, scores[p][0], k, scores[p][1], scores[p][2],
                    len(positions), seconds,
                )  # fmt: skip
    finally:
        seen.unpersist()
    best = max(range(len(grid)), key=lambda c: scores[c][0])
    log.info("%s: picked l2=%s", EASE, grid[best])
    return best, scores[best]


def tune_ease(
    interactions: DataFrame,
    catalog: DataFrame,
    targets: DataFrame,
    cfg: Config,
    grams: FoldGrams,
) -> tuple[DataFrame, dict[str, float]]:
    """EASE^R: each ``evaluate.ease.l2_grid`` value fitted on the validation fold and judged by
    the rank of each user's target (``targets``: user_id, target); the best refitted on the test
    fold for every user with catalog history there."""
    grid = [float(v) for v in cfg.evaluate.ease.l2_grid]
    ids = catalog_ids(catalog)
    best, scores = 0, None
    if not _untuned(EASE, "l2", grid):
        best, scores = _ease_validation(interactions, targets, ids, grams, grid, cfg)
    started = time.perf_counter()
    fit = history(interactions, TEST)
    matrix = grams.of(TEST)
    with blocks.driver_kernel(interactions.sparkSession):
        weights = ease_weights(matrix, grid[best])
    recommendations = recommend_dense(
        fit, None, ids, weights, cfg.evaluate.k, EASE, block_rows=cfg.score.user_block_rows
    )
    log.info(
        "ease: refitted on the test fold, %d recommendation rows in %.1fs",
        recommendations.count(),
        time.perf_counter() - started,
    )
    return recommendations, _picked(EASE, "l2", grid[best], scores)


def tune_item_knn(
    interactions: DataFrame,
    catalog: DataFrame,
    targets: DataFrame,
    cfg: Config,
    *,
    in_memory: bool = False,
    grams: FoldGrams | None = None,
) -> tuple[DataFrame, dict[str, float]]:
    """item-kNN: each ``evaluate.item_knn.neighbours_grid`` value judged on the validation fold
    as ``tune_ease``, the best refitted on the test fold. ``in_memory``: the neighbour lists are
    held by every task and the votes summed in numpy (``item_knn.block_scores``), every grid
    value in one pass over the users; else all in Spark. ``grams``: the lists come from each
    fold's Gram matrix (``FoldGrams``), in memory, not from a self-join."""
    k = cfg.evaluate.k
    grid = [int(v) for v in cfg.evaluate.item_knn.neighbours_grid]
    in_memory = in_memory or grams is not None
    best, scores = 0, None
    if not _untuned(ITEM_KNN, "neighbours", grid):
        if in_memory:
            best, scores = _knn_validation_in_memory(
                interactions, catalog, targets, grid, cfg, grams
            )
        else:
            best, scores = _knn_validation(interactions, catalog, targets, grid, cfg)
    started = time.perf_counter()
    fit = history(interactions, TEST)
    if in_memory:
        ids, index = item_index(catalog)
        if grams is None:
            lists, sims = cooc.cosine_positions(item_lists(fit, index), len(ids), grid[best])
        else:
            lists, sims = grams.knn_lists(TEST)
        recommendations = blocks.map_with_broadcast(
            seen_lists(fit, index, None),
            (ids, lists, sims),
            cfg.score.user_block_rows,
            RECOMMENDATION_SCHEMA,
            lambda block, shared: block_top_k(block, *shared, grid[best], k, ITEM_KNN),
        )
    else:
        neighbours = cosine_neighbours(fit, catalog, grid[best])
        recommendations = recommend_knn(
            interacted(fit, catalog), neighbours, grid[best], k, ITEM_KNN
        ).localCheckpoint(eager=True)
    log.info(
        "item_knn: refitted on the test fold, %d recommendation rows in %.1fs",
        recommendations.count(),
        time.perf_counter() - started,
    )
    return recommendations, _picked(ITEM_KNN, "neighbours", grid[best], scores)


def _knn_validation_in_memory(
    interactions: DataFrame,
    catalog: DataFrame,
    targets: DataFrame,
    grid: Sequence[int],
    cfg: Config,
    grams: FoldGrams | None = None,
) -> tuple[int, tuple[float, float, int]]:
    """``_knn_validation`` with the votes summed in numpy: one pass over the users ranks each
    target under every neighbour count (the lists from ``grams`` where given)."""
    started = time.perf_counter()
    fit = history(interactions, VALIDATION)
    ids, index = item_index(catalog)
    if grams is None:
        lists, sims = cooc.cosine_positions(item_lists(fit, index), len(ids), max(grid))
    else:
        lists, sims = grams.knn_lists(VALIDATION)
    target_idx = targets.join(
        index.select(F.col(ITEM_COL).alias("target"), F.col(IDX_COL).alias("_idx")), "target"
    ).select(USER_COL, F.col("_idx").alias("target"))
    ranks = blocks.map_with_broadcast(
        seen_lists(fit, index, target_idx).join(target_idx, USER_COL),
        (lists, sims),
        cfg.score.user_block_rows,
        scoring.TUNE_SCHEMA,
        lambda block, shared: block_target_ranks(block, *shared, list(grid)),
    )
    scores = _combo_scores(ranks, cfg.evaluate.k, range(len(grid)))
    for value, (ndcg, hr, users) in zip(grid, scores, strict=True):
        log.info(
            "%s neighbours=%s: validation NDCG@%d %.4f, HR@%d %.4f over %d users",
            ITEM_KNN,
            value,
            cfg.evaluate.k,
            ndcg,
            cfg.evaluate.k,
            hr,
            users,
        )
    best = max(range(len(grid)), key=lambda c: scores[c][0])
    log.info(
        "%s: picked neighbours=%s (every count in one pass, %.1fs)",
        ITEM_KNN,
        grid[best],
        time.perf_counter() - started,
    )
    return best, scores[best]


def _knn_validation(
    interactions: DataFrame,
    catalog: DataFrame,
    targets: DataFrame,
    grid: Sequence[int],
    cfg: Config,
) -> tuple[int, tuple[float, float, int]]:
    """``_grid_search`` over the neighbour counts on the validation fold, in Spark."""
    k = cfg.evaluate.k
    fit = history(interactions, VALIDATION)
    # Every grid value reads the widest neighbour lists (bounded by items x max(grid)).
    neighbours = cosine_neighbours(fit, catalog, max(grid)).persist()
    seen = interacted(fit, catalog).join(targets, USER_COL, "left_semi").persist()
    try:
        return _grid_search(
            ITEM_KNN,
            "neighbours",
            grid,
            lambda combo, n: knn_target_ranks(seen, targets, neighbours, n).withColumn(
                "combo", F.lit(combo)
            ),
            k,
        )
    finally:
        neighbours.unpersist()
        seen.unpersist()


def tune_and_recommend(
    interactions: DataFrame,
    catalog_items: DataFrame,
    cfg: Config,
    *,
    dense: bool = True,
    in_memory: bool = True,
) -> tuple[DataFrame, dict[str, float]]:
    """EASE^R (when the catalog is at most ``evaluate.ease.max_items``) and item-kNN, each tuned
    on validation and refitted on the test fold.

    Args:
        interactions: user_id, item_id, split (every split; each fold reads its own history).
        catalog_items: item_id of every catalog item (``scoring.catalog_items``).
        cfg: reads ``evaluate.k``, ``evaluate.ease``, ``evaluate.item_knn``,
            ``score.tune_max_users`` and ``score.user_block_rows``.
        dense: whether an items x items matrix may be broadcast at all; not where the catalog
            is ranked over candidates, whose promise is that nothing item-sized is.
        in_memory: whether item-kNN's neighbour lists (items x the largest count) may be held
            by every task; else its votes are summed in Spark.

    Returns:
        model, user_id, rank, item_id: the top ``evaluate.k`` of every user with test-fold
        history, per model; and the picked values with their validation NDCG and HR (a grid
        of one value is not scored on validation: nothing to pick).
    """
    catalog = catalog_items.select(ITEM_COL).distinct()
    targets = scoring.tuning_sample(
        held_out_targets(interactions, catalog, VALIDATION), cfg.score.tune_max_users
    ).persist()
    results, picked = [], {}
    n, max_items = catalog.count(), cfg.evaluate.ease.max_items
    grams = None
    if not dense:
        log.info(
            "EASE skipped: the catalog is ranked over candidates (nothing item-sized is broadcast)"
        )
    elif max_items and n <= max_items:
        knn_width = max(int(v) for v in cfg.evaluate.item_knn.neighbours_grid)
        grams = FoldGrams(interactions, item_index(catalog)[1], n, knn_width)
        recommendations, params = tune_ease(interactions, catalog, targets, cfg, grams)
        results.append(recommendations)
        picked.update(params)
    else:
        log.info("EASE skipped: %d catalog items above evaluate.ease.max_items=%d", n, max_items)
    recommendations, params = tune_item_knn(
        interactions, catalog, targets, cfg, in_memory=in_memory, grams=grams
    )
    if grams is not None:
        grams.release()
    results.append(recommendations)
    picked.update(params)
    targets.unpersist()
    union = results[0]
    for frame in results[1:]:
        union = union.unionByName(frame)
    return union, picked
