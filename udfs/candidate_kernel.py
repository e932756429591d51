"""The hybrid kernel over per-user candidate lists instead of the whole catalog.

One call gets a group of users and their candidates as long rows (one per user and candidate
item, carrying that item's vectors and the neighbour votes Spark already summed) and lays them
out as (users, slots) matrices, one slot per candidate and padding where a user has fewer. The
normalisation, fusion, top-K and target ranks are then the same functions as full ranking
(``udfs.ranking_kernel``, ``udfs.rerank``, ``udfs.reasons``), with "every unseen item"
replaced by "every candidate".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np
import pandas as pd

from udfs.ranking_kernel import PARTS, normalise, stack_vectors
from udfs.reasons import NAMED_REASONS, REASONS, UNEXPLAINED, dominant_parts, part_contributions
from udfs.rerank import model_scores, rerank_top_k, reranked_target_ranks, tie_break

# The recommendations table's columns in order
# (``hybridrec.ranking.scoring.RECOMMENDATION_SCHEMA``).
RECOMMENDATION_COLUMNS = (
    "model",
    "user_id",
    "rank",
    "item_id",
    "score",
    *(f"{p}_score" for p in PARTS),
    "reason",
    "reason_item_id",
)


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


def _normalised(parts, candidates: np.ndarray, method: str):
    normalised = {p: normalise(s, v & candidates, method) for p, (s, v) in parts.items()}
    defined = {p: v for p, (_, v) in parts.items()}
    return normalised, defined


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
    columns = list(RECOMMENDATION_COLUMNS)
    if pairs.empty or users.empty:
        return pd.DataFrame({c: [] for c in columns})
    parts, candidates, pair_at, _ = layout(pairs, users)
    normalised, defined = _normalised(parts, candidates, method)
    ties = cache(lambda: _ties(pairs, users, candidates, pair_at))
    frames = []
    for model, weights in models.items():
        fused, debiased = model_scores(normalised, weights, ties)
        best, best_scores = rerank_top_k(fused, debiased, candidates, k, rerank_slots)
        rows, ranks = np.nonzero(best >= 0)
        slots = best[rows, ranks]
        picked = pairs.iloc[pair_at[rows, slots]]
        contributions = part_contributions(normalised, defined, weights, rows, slots)
        reasons, reason_items = _reasons(picked, contributions, popular_share)
        frame = {
            "model": model,
            "user_id": users["user_id"].to_numpy()[rows],
            "rank": (ranks + 1).astype(np.int32),
            "item_id": picked["item_id"].to_numpy(),
            "score": best_scores[rows, ranks].astype(np.float64),
        }
        for p in PARTS:
            frame[f"{p}_score"] = normalised[p][rows, slots].astype(np.float64)
        frame.update(reason=reasons, reason_item_id=reason_items)
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)[columns]


def _ties(
    pairs: pd.DataFrame, users: pd.DataFrame, candidates: np.ndarray, pair_at: np.ndarray
) -> np.ndarray:
    """``udfs.rerank.tie_break`` over the (users, slots) layout: each slot's own item."""
    slot_items = np.where(candidates, pairs["item_id"].to_numpy(object)[np.maximum(pair_at, 0)], "")
    return tie_break(users["user_id"].to_numpy(), slot_items)


def _reasons(
    picked: pd.DataFrame, contributions: np.ndarray, popular_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """The part that explains each pick (``udfs.reasons.dominant_parts``); for a neighbour part, the
    history item whose vote was largest (Spark's ``max_by`` while summing the votes) is named,
    as full ranking names the closest history item."""
    dominant = dominant_parts(contributions, popular_share)
    reasons = np.array([REASONS[p] for p in PARTS], dtype=object)[dominant]
    reason_items = np.full(len(picked), None, dtype=object)
    sources = {
        "cooc": "cooc_from",
        "text": "recent_from",
        "recent": "recent_from",
        "next": "next_from",
    }
    for part, (prefix, fallback) in NAMED_REASONS.items():
        source = sources[part]
        chosen = dominant == PARTS.index(part)
        if not chosen.any():
            continue
        named = picked[source].to_numpy(object)[chosen]
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
    parts, candidates, pair_at, _ = layout(pairs, users)
    normalised, _ = _normalised(parts, candidates, method)
    slot_items = np.where(
        candidates, pairs["item_id"].to_numpy(object)[np.maximum(pair_at, 0)], None
    )
    is_target = candidates & (slot_items == users["target"].to_numpy(object)[:, None])
    found = is_target.any(axis=1)
    target_slot = is_target.argmax(axis=1)
    ties = cache(lambda: _ties(pairs, users, candidates, pair_at))
    frames = []
    for combo, weights in enumerate(grid):
        fused, debiased = model_scores(normalised, weights, ties)
        ranks = reranked_target_ranks(fused, debiased, candidates, target_slot, k, rerank_slots)
        frames.append(
            pd.DataFrame(
                {
                    "combo": combo,
                    "user_id": users["user_id"].to_numpy(),
                    "target_rank": np.where(found, ranks, miss_rank),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
