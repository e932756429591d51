"""The hybrid kernel over per-user candidate lists instead of the whole catalog.

One call gets a group of users and their candidates as long rows (one per user and candidate
item, carrying that item's vectors and the neighbour votes Spark already summed) and lays them
out as (users, slots) matrices, one slot per candidate and padding where a user has fewer. The
normalisation, fusion, top-K and target ranks are then the same functions as full ranking
(``udfs.ranking_kernel``, ``udfs.rerank``, ``udfs.reasons``), with "every unseen item"
replaced by "every candidate".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd

from udfs.ranking_kernel import (  # noqa: F401 (RECOMMENDATION_COLUMNS: re-exported)
    PARTS,
    RECOMMENDATION_COLUMNS,
    normalise,
    recommendation_frame,
    stack_vectors,
)
from udfs.reasons import NAMED_REASONS, REASONS, UNEXPLAINED, dominant_parts, part_contributions
from udfs.rerank import (
    grid_rank_rows,
    grid_reranked_target_ranks,
    model_scores,
    rerank_top_k,
    tie_break,
)

# A target that is not among a user's candidates ranks below any top-K.
MISS_RANK = 2**31 - 1


def _slots(pairs: pd.DataFrame, users: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
    """Each pair's user row (in ``users``) and slot, and the widest user's slot count."""
    row = pd.Index(users["user_id"]).get_indexer(pairs["user_id"])
    if (row < 0).any():
        raise ValueError("a candidate pair names a user missing from its group")
    order = np.lexsort((pairs["item_id"].to_numpy(), row))
    counts = np.bincount(row, minlength=len(users))
    slot = np.empty(len(pairs), np.int64)
    slot[order] = np.arange(len(pairs)) - np.repeat(np.cumsum(counts) - counts, counts)
    return row, slot, max(1, int(counts.max(initial=0)))


def _dots(user_vectors: pd.Series, item_vectors: pd.Series, row: np.ndarray) -> tuple:
    """Per pair, the dot product of its user's and item's vectors, and whether both exist."""
    user_ok = user_vectors.notna().to_numpy()[row]
    item_ok = item_vectors.notna().to_numpy()
    both = user_ok & item_ok
    out = np.zeros(len(row), np.float32)
    if both.any():
        dim = len(item_vectors[item_ok].iloc[0])
        users, _ = stack_vectors(user_vectors, dim)
        items = np.stack(item_vectors[both].to_numpy()).astype(np.float32)
        out[both] = np.einsum("ij,ij->i", users[row[both]], items)
    return out, both


def layout(
    pairs: pd.DataFrame, users: pd.DataFrame
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray, np.ndarray]:
    """The raw parts as (users, slots) scores and where they are defined, the candidate mask,
    and each slot's pair row (-1 at padding).

    ``pairs``: user_id, item_id, item_factors, item_embedding, cooc, recent, next, pop (votes null
    where the user's history cast none). ``users``: user_id, factors, embedding, has_history,
    has_text_history.
    """
    row, slot, width = _slots(pairs, users)
    n = len(users)
    pair_at = np.full((n, width), -1, np.int64)
    pair_at[row, slot] = np.arange(len(pairs))
    candidates = pair_at >= 0

    def matrix(values: np.ndarray, fill=0.0) -> np.ndarray:
        out = np.full((n, width), fill, dtype=values.dtype)
        out[row, slot] = values
        return out

    cf, cf_ok = _dots(users["factors"], pairs["item_factors"], row)
    text, text_ok = _dots(users["embedding"], pairs["item_embedding"], row)
    has_history = users["has_history"].to_numpy(bool)[row]
    recent_ok = users["has_text_history"].to_numpy(bool)[row] & pairs["item_embedding"].notna()
    parts = {
        "cf": (matrix(cf), matrix(cf_ok, False)),
        "cooc": (
            matrix(pairs["cooc"].fillna(0.0).to_numpy(np.float32)),
            matrix(has_history, False),
        ),
        "text": (matrix(text), matrix(text_ok, False)),
        "recent": (
            matrix(pairs["recent"].fillna(0.0).to_numpy(np.float32)),
            matrix(recent_ok.to_numpy(bool), False),
        ),
        "pop": (matrix(pairs["pop"].fillna(0.0).to_numpy(np.float32)), candidates.copy()),
        "next": (
            matrix(pairs["next"].fillna(0.0).to_numpy(np.float32)),
            matrix(has_history, False),
        ),
    }
    return parts, candidates, pair_at, row


@dataclass
class Slots:
    """A group of users and their candidates as (users, slots) arrays: what the kernel ranks,
    from Spark's candidate rows (``slots_of_pairs``) or chosen in memory
    (``udfs.block_candidates``)."""

    user_ids: np.ndarray  # (users,)
    item_ids: np.ndarray  # (users, slots) object, "" at padding
    candidates: np.ndarray  # (users, slots) bool, False at padding
    parts: dict[str, tuple[np.ndarray, np.ndarray]]  # raw (users, slots) scores, where defined
    # (part, rows, slots) -> the history item id whose vote was largest, None where none cast
    named: Callable[[str, np.ndarray, np.ndarray], np.ndarray]
    target_slot: np.ndarray | None = None  # (users,) the held-out item's slot, -1: no candidate
    # (users, slots) catalog index of each slot's item, -1 at padding: where the catalog is in
    # memory (``udfs.block_candidates``), for what the learned ranker reads of the items
    item_index: np.ndarray | None = None

    def normalised(self, method: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        normalised = {
            p: normalise(s, v & self.candidates, method) for p, (s, v) in self.parts.items()
        }
        defined = {p: v for p, (_, v) in self.parts.items()}
        return normalised, defined

    def ties(self) -> np.ndarray:
        """``udfs.rerank.tie_break`` over the slots: each slot's own item."""
        return tie_break(self.user_ids, self.item_ids)


def slots_of_pairs(pairs: pd.DataFrame, users: pd.DataFrame) -> Slots:
    """``Slots`` of Spark's candidate rows (``layout``'s inputs); the vote sources come from
    the rows' ``*_from`` columns."""
    parts, candidates, pair_at, _ = layout(pairs, users)
    at = np.maximum(pair_at, 0)
    sources = {"cooc": "cooc_from", "recent": "recent_from", "next": "next_from"}

    def named(part: str, rows: np.ndarray, slots: np.ndarray) -> np.ndarray:
        values = pairs[sources[part]].to_numpy(object)[pair_at[rows, slots]]
        return np.where(pd.notna(values), values, None)

    item_ids = np.where(candidates, pairs["item_id"].to_numpy(object)[at], "")
    target_slot = None
    if "target" in users:
        is_target = candidates & (item_ids == users["target"].to_numpy(object)[:, None])
        target_slot = np.where(is_target.any(axis=1), is_target.argmax(axis=1), -1)
    return Slots(
        user_ids=users["user_id"].to_numpy(object),
        item_ids=item_ids,
        candidates=candidates,
        parts=parts,
        named=named,
        target_slot=target_slot,
    )


def recommend_group(
    pairs: pd.DataFrame,
    users: pd.DataFrame,
    models: Mapping[str, Mapping[str, float]],
    *,
    k: int,
    method: str,
    popular_share: float = 0.5,
    rerank_slots: int = 0,
) -> pd.DataFrame:
    """Top-K rows (the recommendations schema) per user of the group for each weight set (the
    last ``rerank_slots`` places re-ranked for a weight set with a ``debias`` strength)."""
    if pairs.empty or users.empty:
        return pd.DataFrame({c: [] for c in RECOMMENDATION_COLUMNS})
    return recommend_slots(
        slots_of_pairs(pairs, users),
        models,
        k=k,
        method=method,
        popular_share=popular_share,
        rerank_slots=rerank_slots,
    )


def recommend_slots(
    slots: Slots,
    models: Mapping[str, Mapping[str, float]],
    *,
    k: int,
    method: str,
    popular_share: float = 0.5,
    rerank_slots: int = 0,
) -> pd.DataFrame:
    """``recommend_group`` of users already laid out as ``Slots``."""
    normalised, defined = slots.normalised(method)
    ties = cache(slots.ties)
    frames = []
    for model, weights in models.items():
        fused, debiased = model_scores(normalised, weights, ties)
        best, best_scores = rerank_top_k(fused, debiased, slots.candidates, k, rerank_slots)
        rows, ranks = np.nonzero(best >= 0)
        picked = best[rows, ranks]
        contributions = part_contributions(normalised, defined, weights, rows, picked)
        frames.append(
            recommendation_frame(
                model,
                (rows, picked, ranks),
                slots.user_ids[rows],
                slots.item_ids[rows, picked],
                best_scores[rows, ranks],
                normalised,
                slot_reasons(slots, rows, picked, contributions, popular_share),
            )
        )
    if not frames:
        return pd.DataFrame({c: [] for c in RECOMMENDATION_COLUMNS})
    return pd.concat(frames, ignore_index=True)[list(RECOMMENDATION_COLUMNS)]


def slot_reasons(
    slots: Slots,
    rows: np.ndarray,
    picked: np.ndarray,
    contributions: np.ndarray,
    popular_share: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The part that explains each pick (``udfs.reasons.dominant_parts``); for a neighbour part, the
    history item whose vote was largest (Spark's ``max_by`` while summing the votes) is named,
    as full ranking names the closest history item."""
    dominant = dominant_parts(contributions, popular_share)
    reasons = np.array([REASONS[p] for p in PARTS], dtype=object)[dominant]
    reason_items = np.full(len(rows), None, dtype=object)
    # The text part names the history item behind the recent votes, as full ranking names the
    # closest recent item for both text parts.
    sources = {"cooc": "cooc", "text": "recent", "recent": "recent", "next": "next"}
    for part, (prefix, fallback) in NAMED_REASONS.items():
        chosen = dominant == PARTS.index(part)
        if not chosen.any():
            continue
        named = slots.named(sources[part], rows[chosen], picked[chosen])
        has = pd.notna(named)
        reasons[chosen] = np.where(has, [f"{prefix}{i}" for i in named], fallback)
        reason_items[chosen] = np.where(has, named, None)
    reasons[np.isneginf(contributions.max(axis=1))] = UNEXPLAINED
    return reasons, reason_items


def tune_group(
    pairs: pd.DataFrame,
    users: pd.DataFrame,
    grid: Sequence[Mapping[str, float]],
    *,
    method: str,
    miss_rank: int,
    k: int = 10,
    rerank_slots: int = 0,
) -> pd.DataFrame:
    """Per user with a target (``users.target``) and weight set: the target's rank among the
    user's candidates, or ``miss_rank`` when the target is not a candidate."""
    users = users[users["target"].notna()].reset_index(drop=True)
    if users.empty:
        return pd.DataFrame({"combo": [], "user_id": [], "target_rank": []})
    pairs = pairs[pairs["user_id"].isin(users["user_id"])].reset_index(drop=True)
    if pairs.empty:
        return pd.DataFrame(
            {
                "combo": np.repeat(np.arange(len(grid)), len(users)),
                "user_id": np.tile(users["user_id"].to_numpy(), len(grid)),
                "target_rank": miss_rank,
            }
        )
    return tune_slots(
        slots_of_pairs(pairs, users),
        grid,
        method=method,
        miss_rank=miss_rank,
        k=k,
        rerank_slots=rerank_slots,
    )


def tune_slots(
    slots: Slots,
    grid: Sequence[Mapping[str, float]],
    *,
    method: str,
    miss_rank: int,
    k: int = 10,
    rerank_slots: int = 0,
) -> pd.DataFrame:
    """``tune_group`` of users already laid out as ``Slots`` (``target_slot`` set)."""
    normalised, _ = slots.normalised(method)
    found = slots.target_slot >= 0
    target_slot = np.maximum(slots.target_slot, 0)
    ties = cache(slots.ties)
    ranks = grid_reranked_target_ranks(
        normalised, slots.candidates, target_slot, grid, ties, k, rerank_slots
    )
    return grid_rank_rows(slots.user_ids, np.where(found, ranks, miss_rank))
