"""Full ranking of one block of users against the whole item catalog: the entry points the
score and evaluate pandas UDFs call. ``recommend_block`` lists each user's top K with its parts
and reason; ``tune_block`` ranks each user's target under every weight set of a grid. The top
of the kernel: it imports ``udfs.ranking_kernel``, ``udfs.rerank`` and ``udfs.reasons``, and
nothing imports it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np
import pandas as pd

from udfs.ranking_kernel import (
    ItemCatalog,
    normalised_parts,
    ragged_mask,
    recommendation_frame,
)
from udfs.reasons import part_contributions, pick_reasons
from udfs.rerank import (
    grid_rank_rows,
    grid_reranked_target_ranks,
    model_scores,
    rerank_top_k,
    tie_break,
)


def recommend_block(
    block: pd.DataFrame,
    catalog: ItemCatalog,
    models: Mapping[str, Mapping[str, float]],
    *,
    k: int,
    method: str,
    history_cap: int = 50,
    recent_half_life: float = 1.0,
    recent_sharpness: float = 1.0,
    cooc_half_life: float = 3.0,
    next_items: int = 3,
    next_half_life: float = 1.0,
    popular_share: float = 0.5,
    rerank_slots: int = 0,
) -> pd.DataFrame:
    """Top-k rows per (model, user) with the score, its normalised parts, a reason and the
    history item the reason names (None where it names none). A model with a ``debias``
    strength fills its last ``rerank_slots`` places by de-biased scores (``rerank_top_k``)."""
    candidates = ~ragged_mask(block["seen"], len(catalog))
    parts, defined = normalised_parts(
        block,
        catalog,
        candidates,
        method,
        recent_half_life=recent_half_life,
        recent_sharpness=recent_sharpness,
        cooc_half_life=cooc_half_life,
        history_cap=history_cap,
        next_items=next_items,
        next_half_life=next_half_life,
    )
    ties = cache(lambda: tie_break(block["user_id"].to_numpy(), catalog.ids))
    frames = []
    for model, weights in models.items():
        fused, debiased = model_scores(parts, weights, ties)
        best, best_scores = rerank_top_k(fused, debiased, candidates, k, rerank_slots)
        rows, ranks = np.nonzero(best >= 0)
        items = best[rows, ranks]
        contributions = part_contributions(parts, defined, weights, rows, items)
        reasons = pick_reasons(
            block, catalog, rows, items, contributions, history_cap, next_items, popular_share
        )
        frames.append(
            recommendation_frame(
                model,
                (rows, items, ranks),
                block["user_id"].to_numpy()[rows],
                catalog.ids[items],
                best_scores[rows, ranks],
                parts,
                reasons,
            )
        )
    return pd.concat(frames, ignore_index=True)


def tune_block(
    block: pd.DataFrame,
    catalog: ItemCatalog,
    grid: Sequence[Mapping[str, float]],
    *,
    method: str,
    k: int = 10,
    rerank_slots: int = 0,
    **raw_settings,
) -> pd.DataFrame:
    """For each user with a target item and each weight set: the target's rank (its place in
    the re-ranked top ``k`` for a weight set with a ``debias`` strength)."""
    block = block[block["target"].notna()]
    if block.empty:
        return pd.DataFrame({"combo": [], "user_id": [], "target_rank": []})
    candidates = ~ragged_mask(block["seen"], len(catalog))
    parts, _ = normalised_parts(block, catalog, candidates, method, **raw_settings)
    target = block["target"].to_numpy().astype(np.int64)
    ties = cache(lambda: tie_break(block["user_id"].to_numpy(), catalog.ids))
    ranks = grid_reranked_target_ranks(parts, candidates, target, grid, ties, k, rerank_slots)
    return grid_rank_rows(block["user_id"].to_numpy(), ranks)
