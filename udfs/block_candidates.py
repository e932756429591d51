"""Per-user candidates chosen inside one block of users, against a catalog every task holds.

The Spark candidate path (``hybridrec.ranking.candidates``) makes every (user, candidate) pair a
Spark row, sums the neighbour votes in shuffles and joins each pair with its item's vectors: at
300,000 users and 210 candidates each, 63M rows whose shuffles cost ten times the arithmetic.
Where the catalog fits in a task's memory (``score.candidates.max_memory_items``) the same
candidates are chosen here, in numpy, for a block of users at a time:

- the ALS top-N (one (users, items) factor product per block);
- the best co-occurrence, text and what-came-next neighbour votes of the user's recent history
  (one ``bincount`` per part, the same recency and sharpness weights as Spark's sums);
- the most popular items;
- minus the items the user already has.

They are laid out as (users, slots) arrays, slots in item-id order as the Spark path lays out
its rows, and ranked by the same kernel (``udfs.candidate_kernel``). The history item that cast
an item's largest vote (Spark's ``max_by``) is found only for the items listed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from udfs.candidate_kernel import RECOMMENDATION_COLUMNS, Slots, recommend_slots, tune_slots
from udfs.ranking_kernel import (
    ItemCatalog,
    neighbour_votes,
    padded_history,
    ragged_mask,
    signed_power,
    stack_vectors,
    top_set,
)


@dataclass(frozen=True)
class CandidateCounts:
    """How many candidates each source gives a user (``score.candidates``)."""

    als: int
    cooc: int
    text: int
    next: int
    popular: int


@dataclass
class _Votes:
    """One neighbour part's votes for a block: what each history slot voted for, and how much."""

    voters: np.ndarray  # (users, width) catalog indices of the voting history items, -1 pads
    lists: np.ndarray  # (users, width, m) the catalog indices voted for, -1 pads
    votes: np.ndarray  # (users, width, m) the votes, 0 where none
    scores: np.ndarray  # (users, items) summed votes
    cast: np.ndarray  # (users, items) bool: some history item listed the item

    def named(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Per (row, item), the history item whose vote for it was largest; -1 where none."""
        if not len(rows):
            return np.empty(0, np.int64)
        listed = self.lists[rows] == items[:, None, None]
        votes = np.where(listed, self.votes[rows], -np.inf).max(axis=2)
        best = votes.argmax(axis=1)
        voter = self.voters[rows, best]
        return np.where(np.isfinite(votes.max(axis=1)), voter, -1)


def _votes(
    history: np.ndarray,
    neighbours: np.ndarray,
    sims: np.ndarray,
    half_life: float,
    sharpness: float,
    n_items: int,
) -> _Votes:
    """Each history item votes for its neighbours with similarity ** sharpness (sign kept),
    halving every ``half_life`` items back: ``candidates.neighbour_votes`` in numpy."""
    items = np.maximum(history, 0)  # pads read item 0, weighted 0
    recency = np.where(history >= 0, 0.5 ** (np.arange(history.shape[1]) / half_life), 0.0)
    powered = sims[items] if sharpness == 1 else signed_power(sims[items], sharpness)
    votes = (powered * recency[:, :, None]).astype(np.float32)
    lists = np.where((history >= 0)[:, :, None], neighbours[items], -1)
    rows = len(history)
    listed = lists >= 0
    flat = (np.arange(rows)[:, None, None] * n_items + lists)[listed]
    cast = np.zeros(rows * n_items, bool)
    cast[flat] = True
    return _Votes(
        history, lists, votes, neighbour_votes(lists, votes, n_items), cast.reshape(rows, n_items)
    )


def _best(scores: np.ndarray, present: np.ndarray, n: int) -> np.ndarray:
    """(users, items) bool: each row's ``n`` highest ``scores`` among ``present`` (ties: the
    lower index, as ``nearest.keep_best`` breaks them by item id); a set, not an order."""
    if n <= 0 or not present.any():
        return np.zeros(np.broadcast_shapes(scores.shape, present.shape), bool)
    masked = np.where(present, scores, -np.inf)
    return top_set(masked, min(n, masked.shape[1])) & present


def block_slots(
    block: pd.DataFrame,
    catalog: ItemCatalog,
    counts: CandidateCounts,
    *,
    history_cap: int,
    cooc_half_life: float,
    recent_half_life: float,
    recent_sharpness: float,
    next_items: int,
    next_half_life: float,
) -> Slots:
    """The block's users (``scoring.build_user_frame``'s columns) and their candidates as
    ``Slots``: the raw parts over each user's candidates, what ``candidates.layout`` makes of
    the Spark path's rows."""
    n, n_items = len(block), len(catalog)
    seen = ragged_mask(block["seen"], n_items)
    history = padded_history(block["seen"], history_cap)
    user_cf, has_user_cf = stack_vectors(block["factors"], catalog.cf.shape[1])
    user_text, has_user_text = stack_vectors(block["embedding"], catalog.text.shape[1])

    cooc = _votes(history, catalog.neighbours, catalog.neighbour_sims, cooc_half_life, 1.0, n_items)
    recent = _votes(
        history,
        catalog.text_neighbours,
        catalog.text_neighbour_sims,
        recent_half_life,
        recent_sharpness,
        n_items,
    )
    after = _votes(
        history[:, :next_items], catalog.next_items, catalog.next_sims, next_half_life, 1.0, n_items
    )
    cf_scores = user_cf @ catalog.cf.T
    cf_present = has_user_cf[:, None] & catalog.has_cf[None, :]
    popular = _best(catalog.pop[None, :], (catalog.pop > 0)[None, :], counts.popular)
    chosen = (
        _best(cf_scores, cf_present, counts.als)
        | _best(cooc.scores, cooc.cast, counts.cooc)
        | _best(recent.scores, recent.cast, counts.text)
        | _best(after.scores, after.cast, counts.next)
        | popular
    ) & ~seen

    # (users, slots): each user's candidates in catalog order, which is item-id order.
    per_user = chosen.sum(axis=1)
    width = max(1, int(per_user.max(initial=0)))
    rows, items = np.nonzero(chosen)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    item_at = np.full((n, width), -1, np.int64)
    item_at[rows, slot] = items
    candidates = item_at >= 0
    at = np.maximum(item_at, 0)

    def gathered(matrix: np.ndarray) -> np.ndarray:
        return np.where(candidates, np.take_along_axis(matrix, at, axis=1), 0).astype(np.float32)

    has_history = seen.any(axis=1)
    has_text_history = (seen & catalog.has_text[None, :]).any(axis=1)
    item_text = catalog.has_text[at] & candidates
    text_scores = np.einsum("ud,usd->us", user_text, catalog.text[at])
    parts = {
        "cf": (gathered(cf_scores), np.take_along_axis(cf_present, at, axis=1) & candidates),
        "cooc": (gathered(cooc.scores), candidates & has_history[:, None]),
        "text": (
            np.where(item_text, text_scores, 0).astype(np.float32),
            item_text & has_user_text[:, None],
        ),
        "recent": (gathered(recent.scores), item_text & has_text_history[:, None]),
        "pop": (np.where(candidates, catalog.pop[at], 0).astype(np.float32), candidates.copy()),
        "next": (gathered(after.scores), candidates & has_history[:, None]),
    }
    voters = {"cooc": cooc, "recent": recent, "next": after}

    def named(part: str, picked_rows: np.ndarray, picked_slots: np.ndarray) -> np.ndarray:
        voter = voters[part].named(picked_rows, item_at[picked_rows, picked_slots])
        return np.where(voter >= 0, catalog.ids[np.maximum(voter, 0)].astype(object), None)

    target_slot = None
    if "target" in block:
        target = block["target"].to_numpy()
        is_target = candidates & (item_at == target[:, None])
        target_slot = np.where(is_target.any(axis=1), is_target.argmax(axis=1), -1)
    return Slots(
        user_ids=block["user_id"].to_numpy(object),
        item_ids=np.where(candidates, catalog.ids[at].astype(object), ""),
        candidates=candidates,
        parts=parts,
        named=named,
        target_slot=target_slot,
        item_index=item_at,
    )


def recommend_block(
    block: pd.DataFrame,
    catalog: ItemCatalog,
    models: Mapping[str, Mapping[str, float]],
    counts: CandidateCounts,
    *,
    k: int,
    method: str,
    popular_share: float = 0.5,
    rerank_slots: int = 0,
    **vote_settings,
) -> pd.DataFrame:
    """Top-K rows (the recommendations schema) per user of the block for each weight set, over
    the candidates ``block_slots`` chooses."""
    if block.empty:
        return pd.DataFrame({c: [] for c in RECOMMENDATION_COLUMNS})
    return recommend_slots(
        block_slots(block, catalog, counts, **vote_settings),
        models,
        k=k,
        method=method,
        popular_share=popular_share,
        rerank_slots=rerank_slots,
    )


def tune_block(
    block: pd.DataFrame,
    catalog: ItemCatalog,
    grid: Sequence[Mapping[str, float]],
    counts: CandidateCounts,
    *,
    method: str,
    miss_rank: int,
    k: int = 10,
    rerank_slots: int = 0,
    **vote_settings,
) -> pd.DataFrame:
    """Per user of the block with a target and weight set: the target's rank among the user's
    candidates, ``miss_rank`` where it is not one of them."""
    block = block[block["target"].notna()].reset_index(drop=True)
    if block.empty:
        return pd.DataFrame({"combo": [], "user_id": [], "target_rank": []})
    block = block.assign(target=block["target"].to_numpy().astype(np.int64))
    return tune_slots(
        block_slots(block, catalog, counts, **vote_settings),
        grid,
        method=method,
        miss_rank=miss_rank,
        k=k,
        rerank_slots=rerank_slots,
    )
