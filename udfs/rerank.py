"""Popularity de-biasing: the re-rank that fills the last places of each list by the fused
score less a share of the normalised popularity, and the pseudo-random per-user tie-break it
adds. Owns the ``debias`` weight key (``DEBIAS``, ``debiased``), ``model_scores`` (a weight set's
fused and de-biased scores), ``rerank_top_k`` and ``reranked_target_ranks``. Imports only
``udfs.ranking_kernel``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from udfs.ranking_kernel import fuse, grid_target_ranks, target_ranks, top_k

# A weight set's key for the popularity de-biasing strength of its re-rank (``model_scores``).
DEBIAS = "debias"

# Scale of the per-(user, item) tie-break added to de-biased scores: far below any gap between
# z-scored parts worth keeping, far above float32 resolution at the scores' size (< 10).
TIE_BREAK = 1e-4


def tie_break(user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """(users, items) float32 in [0, TIE_BREAK): a fixed pseudo-random order per user, for one
    list of ``item_ids`` shared by every user or a (users, items) matrix of them. Items
    the model cannot tell apart (cold items with only neutral parts) would otherwise come in
    item-id order, the same few for every user; this shows each user a different few, the same
    ones on every run."""
    users = pd.util.hash_array(np.asarray(user_ids, dtype=object).astype(str))
    item_ids = np.asarray(item_ids, dtype=object)
    items = pd.util.hash_array(item_ids.ravel().astype(str)).reshape(item_ids.shape)
    mixed = users[:, None] ^ (items[None, :] if items.ndim == 1 else items)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as a hash mix should
        mixed *= np.uint64(0x9E3779B97F4A7C15)
    mixed ^= mixed >> np.uint64(29)
    unit = (mixed >> np.uint64(40)).astype(np.float32) / np.float32(2**24)
    return unit * np.float32(TIE_BREAK)


def debiased_scores(
    fused: np.ndarray, pop: np.ndarray, strength: float, ties: np.ndarray
) -> np.ndarray:
    """The fused scores with ``strength`` of the normalised popularity taken off (popularity
    de-biasing), plus the per-user tie-break."""
    return fused - np.float32(strength) * pop + ties


def debiased(weights: Mapping[str, float], strength: float) -> dict[str, float]:
    """The weights with a popularity de-biasing strength: the kernel fills the last
    ``score.rerank_slots`` places of each list by the fused score less ``strength`` times the
    normalised popularity (``rerank_top_k``); the head stays as ranked."""
    return {**weights, DEBIAS: strength}


def model_scores(
    parts: Mapping[str, np.ndarray], weights: Mapping[str, float], ties: Callable[[], np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None]:
    """A weight set's fused scores, and its de-biased ones when it has a ``debias`` strength
    (``ties`` makes the tie-break matrix, only when one is needed)."""
    fused = fuse(parts, weights)
    strength = float(weights.get(DEBIAS, 0.0))
    if strength == 0:
        return fused, None
    return fused, debiased_scores(fused, parts["pop"], strength, ties())


def rerank_top_k(
    fused: np.ndarray,
    debiased: np.ndarray | None,
    candidates: np.ndarray,
    k: int,
    slots: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``top_k`` of ``fused``, except that the last ``slots`` of the k places go to the best
    remaining candidates by ``debiased``: the head of each list stays as accurate as ranked,
    and the tail goes to items popularity kept out. The re-ranked places are shown in ``fused``
    order after the head, so scores still fall with rank. Returns indices and fused scores."""
    if debiased is None or slots <= 0:
        return top_k(fused, candidates, k)
    head = max(k - min(slots, k), 0)
    kept, _ = top_k(fused, candidates, head)
    rest = candidates.copy()
    rows = np.repeat(np.arange(len(kept)), kept.shape[1])
    listed = kept.ravel() >= 0
    rest[rows[listed], kept.ravel()[listed]] = False
    picked, _ = top_k(debiased, rest, k - head)
    picked_scores = np.where(
        picked >= 0, np.take_along_axis(fused, np.maximum(picked, 0), axis=1), -np.inf
    )
    order = np.argsort(-picked_scores, axis=1, kind="stable")
    best = np.concatenate([kept, np.take_along_axis(picked, order, axis=1)], axis=1)
    # A user with fewer than ``head`` candidates has pads in the head: move them to the end.
    pads_last = np.argsort(best < 0, axis=1, kind="stable")
    best = np.take_along_axis(best, pads_last, axis=1)
    scores = np.where(best >= 0, np.take_along_axis(fused, np.maximum(best, 0), axis=1), -np.inf)
    return best, scores


def reranked_target_ranks(
    fused: np.ndarray,
    debiased: np.ndarray | None,
    candidates: np.ndarray,
    target: np.ndarray,
    k: int,
    slots: int,
) -> np.ndarray:
    """The target's 1-based place in ``rerank_top_k``'s list, k + 1 when the re-rank leaves it
    out (ties count against it, as in ``target_ranks``)."""
    ranks = target_ranks(fused, candidates, target)
    if debiased is None or slots <= 0:
        return ranks
    best, scores = rerank_top_k(fused, debiased, candidates, k, slots)
    rows = np.arange(len(target))
    is_target = best == target[:, None]
    found = is_target.any(axis=1)
    # Among the listed items, those scored at least as high as the target come before it.
    target_score = fused[rows, target]
    listed_ahead = ((scores >= target_score[:, None]) & (best >= 0) & ~is_target).sum(axis=1)
    return np.where(found, listed_ahead + 1, np.maximum(ranks, k + 1))


def grid_reranked_target_ranks(
    parts: Mapping[str, np.ndarray],
    candidates: np.ndarray,
    target: np.ndarray,
    grid: Sequence[Mapping[str, float]],
    ties: Callable[[], np.ndarray],
    k: int,
    slots: int,
) -> np.ndarray:
    """(weight sets, rows): ``reranked_target_ranks`` under each weight set of ``grid`` where
    it is at most ``k``, else a number above ``k`` (what NDCG@k and HR@k need); the sets that
    re-rank nothing (no de-biasing strength, or no slots) go through ``grid_target_ranks``
    together."""
    reranks = [slots > 0 and bool(float(w.get(DEBIAS, 0.0))) for w in grid]
    plain = [c for c, r in enumerate(reranks) if not r]
    ranks = np.empty((len(grid), len(target)), dtype=np.int64)
    if plain:
        ranks[plain] = grid_target_ranks(
            parts, candidates, target, [grid[c] for c in plain], exact_up_to=k
        )
    for combo in (c for c, r in enumerate(reranks) if r):
        fused, debiased = model_scores(parts, grid[combo], ties)
        ranks[combo] = reranked_target_ranks(fused, debiased, candidates, target, k, slots)
    return ranks


def grid_rank_rows(user_ids: np.ndarray, ranks: np.ndarray) -> pd.DataFrame:
    """combo, user_id, target_rank: ``ranks`` (weight sets, users) as one row per pair."""
    n_sets, n_users = ranks.shape
    return pd.DataFrame(
        {
            "combo": np.repeat(np.arange(n_sets, dtype=np.int64), n_users),
            "user_id": np.tile(np.asarray(user_ids), n_sets),
            "target_rank": ranks.ravel(),
        }
    )
