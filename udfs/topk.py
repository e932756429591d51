"""The hybrid scoring kernel: numpy over one block of users against the whole item catalog.

Each part (ALS, co-occurrence, text, recent text, popularity, what came next) is scored for
every (user, item) of the block, normalised per user over the candidate items (those the user
has not interacted with in train), fused with weights, and reduced to the top K. A part a user
or an item lacks (a cold user without ALS factors, an item without text) takes the user's
average normalised value, so it neither helps nor hurts and the other parts decide: a cold user
is ranked by text and popularity alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd

PARTS = ("cf", "cooc", "text", "recent", "pop", "next")
# The parts of the simplex weight grid searched on validation. ``next`` is mixed into the pick
# afterwards at a few shares (``jobs.score.choose_next``): a sixth grid dimension would triple
# the grid for a part that only helps where histories have an order worth following.
GRID_PARTS = ("cf", "cooc", "text", "recent", "pop")
# A weight set's key for the popularity de-biasing strength of its re-rank (``model_scores``).
DEBIAS = "debias"
REASONS = {
    "cf": "liked by similar users",
    "cooc": "",  # filled with the history item it was most often had with
    "text": "",  # filled with the most similar history item
    "recent": "",
    "pop": "popular",
    "next": "",  # filled with the recent history item it most often came after
}
# How a neighbour part names the history item behind a recommendation, and what it says when
# no history item can be named.
NAMED_REASONS = {
    "cooc": ("often had with ", "often had with your items"),
    "text": ("similar to ", "matches your reviews"),
    "recent": ("similar to ", "matches your reviews"),
    "next": ("often had after ", "often had after your recent items"),
}
UNEXPLAINED = "ranked by the remaining signals"


@dataclass
class ItemCatalog:
    """Every candidate item, row-aligned: the broadcast side of blockwise scoring."""

    ids: np.ndarray  # (n,) item ids
    cf: np.ndarray  # (n, rank) ALS factors, zeros where missing
    has_cf: np.ndarray  # (n,) bool
    text: np.ndarray  # (n, dim) unit text vectors, zeros where missing
    has_text: np.ndarray  # (n,) bool
    pop: np.ndarray  # (n,) log1p(train users)
    neighbours: np.ndarray  # (n, m) catalog indices of co-occurrence neighbours, -1 pads
    neighbour_sims: np.ndarray  # (n, m) their similarities, 0 at pads
    text_neighbours: np.ndarray  # (n, t) catalog indices of the closest items by text, -1 pads
    text_neighbour_sims: np.ndarray  # (n, t) their cosine similarities, 0 at pads
    next_items: np.ndarray  # (n, s) catalog indices of the items most often had next, -1 pads
    next_sims: np.ndarray  # (n, s) their normalised transition weights, 0 at pads

    def __len__(self) -> int:
        return len(self.ids)


def stack_vectors(column: pd.Series, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A column of arrays (some null) as a dense (rows, dim) matrix and a has-value mask."""
    present = column.notna().to_numpy()
    matrix = np.zeros((len(column), dim), dtype=np.float32)
    if present.any():
        matrix[present] = np.stack(column[present].to_numpy()).astype(np.float32)
    return matrix, present


def ragged_mask(lists: pd.Series, n_items: int) -> np.ndarray:
    """(rows, n_items) bool, True at each index listed in that row's array."""
    lengths = lists.map(lambda a: 0 if a is None else len(a)).to_numpy()
    mask = np.zeros((len(lists), n_items), dtype=bool)
    if lengths.sum():
        rows = np.repeat(np.arange(len(lists)), lengths)
        cols = np.concatenate(
            [np.asarray(a, dtype=np.int64) for a in lists if a is not None and len(a)]
        )
        mask[rows, cols] = True
    return mask


def padded_history(seen: pd.Series, width_cap: int) -> np.ndarray:
    """(rows, width) catalog indices of each row's newest ``width_cap`` history items, -1 pads."""
    recent = seen.map(lambda a: np.asarray([] if a is None else a[:width_cap], dtype=np.int64))
    lengths = recent.map(len).to_numpy()
    padded = np.full((len(seen), max(1, lengths.max(initial=0))), -1, dtype=np.int64)
    if lengths.sum():
        rows = np.repeat(np.arange(len(seen)), lengths)
        positions = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        padded[rows, positions] = np.concatenate(recent.to_numpy())
    return padded


def recent_similarity(
    history: np.ndarray, catalog: ItemCatalog, half_life: float, sharpness: float
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, items): the recency-weighted sum over each row's history items of their text
    similarity to every item, raised to ``sharpness`` (sign kept), and whether any history item
    had text.

    At sharpness 1 this ranks as the similarity to the mean of the recent items' vectors. Higher
    values let only the closest history item count: an item almost the same as a recent one (the
    same magazine under another listing, the next season of a show) outranks one that is
    half-like several of them. Then only each history item's closest items by text
    (``catalog.text_neighbours``) are summed: raised to a high power, the similarity of any item
    further away is lost next to theirs, and a sparse gather replaces a product with the whole
    catalog per history item.
    """
    items = np.maximum(history, 0)  # pads read item 0, masked out by ``known``
    known = (history >= 0) & catalog.has_text[items]
    recency = 0.5 ** (np.arange(history.shape[1]) / half_life)
    weights = np.where(known, recency[None, :], 0.0).astype(np.float32)
    if sharpness == 1:
        # Linear in the similarity: one product with the weighted sum of the vectors, exactly.
        scores = np.einsum("rw,rwd->rd", weights, catalog.text[items]) @ catalog.text.T
    else:
        votes = signed_power(catalog.text_neighbour_sims[items], sharpness) * weights[:, :, None]
        scores = neighbour_votes(catalog.text_neighbours[items], votes, len(catalog))
    return scores, known.any(axis=1)


def closest_items(
    vectors: np.ndarray, catalog_text: np.ndarray, own: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``vectors``, the indices (rows, m) of its ``m`` most similar rows of
    ``catalog_text`` (dot product; cosine for unit rows), most similar first, leaving out the row's
    own index ``own`` (-1: none); and those similarities. When some rows have no own index and m
    reaches every row of ``catalog_text``, the others' own index comes last, at -inf."""
    sims = vectors @ catalog_text.T
    has_own = own >= 0
    sims[np.flatnonzero(has_own), own[has_own]] = -np.inf
    m = min(m, catalog_text.shape[0] - int(has_own.all()))
    if m <= 0:
        return np.empty((len(vectors), 0), np.int64), np.empty((len(vectors), 0), np.float32)
    top = np.argpartition(-sims, m - 1, axis=1)[:, :m]
    top_sims = np.take_along_axis(sims, top, axis=1)
    order = np.argsort(-top_sims, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_sims, order, axis=1)


def neighbour_votes(neighbours: np.ndarray, votes: np.ndarray, n_items: int) -> np.ndarray:
    """(rows, items): per row, the sum of ``votes`` (rows, width, m) cast for ``neighbours``
    (rows, width, m; -1 pads), as one ``bincount``: never an items x items matrix."""
    rows = neighbours.shape[0]
    present = (neighbours >= 0) & (votes != 0)
    flat = (np.arange(rows)[:, None, None] * n_items + neighbours)[present]
    return (
        np.bincount(flat, weights=votes[present], minlength=rows * n_items)
        .reshape(rows, n_items)
        .astype(np.float32)
    )


def signed_power(x: np.ndarray, exponent: float) -> np.ndarray:
    """sign(x) * |x| ** exponent. Whole exponents by repeated squaring: a float ``np.power``
    costs about 15 times as much on CPU, and this runs on every (user, history item, neighbour)."""
    magnitude = np.abs(x)
    if float(exponent).is_integer() and exponent >= 1:
        n, result = int(exponent), None
        while n:
            if n & 1:
                result = magnitude.copy() if result is None else result * magnitude
            n >>= 1
            if n:
                np.multiply(magnitude, magnitude, out=magnitude)
    else:
        with np.errstate(divide="ignore"):  # log(0) = -inf, and exp(-inf) = 0 as wanted
            result = np.exp(exponent * np.log(magnitude))
    return np.copysign(result, x)


def history_votes(
    history: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, half_life: float
) -> np.ndarray:
    """(rows, items): the similarity-weighted votes of each row's history items for their
    ``neighbours`` (catalog rows, with ``sims``), the newest history item weighted most (halving
    every ``half_life`` items back)."""
    items = np.maximum(history, 0)  # pads read item 0, weighted 0
    recency = np.where(history >= 0, 0.5 ** (np.arange(history.shape[1]) / half_life), 0.0)
    votes = sims[items] * recency[:, :, None]
    return neighbour_votes(neighbours[items], votes, sims.shape[0])


def raw_parts(
    block: pd.DataFrame,
    catalog: ItemCatalog,
    *,
    recent_half_life: float = 1.0,
    recent_sharpness: float = 1.0,
    cooc_half_life: float = 3.0,
    history_cap: int = 50,
    next_items: int = 3,
    next_half_life: float = 1.0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per part, the raw (users, items) scores and where they are defined.

    ``cooc`` sums the co-occurrence neighbours of the user's recent items; ``text`` compares the
    user's own review vector with each item; ``recent`` compares the text vectors of the items
    the user had most recently (what comes next tends to resemble what came last); ``next``
    sums what other users had next after the user's ``next_items`` newest items.
    """
    n = len(block)
    user_cf, has_user_cf = stack_vectors(block["factors"], catalog.cf.shape[1])
    user_text, has_user_text = stack_vectors(block["embedding"], catalog.text.shape[1])
    history = padded_history(block["seen"], history_cap)
    recent, has_recent = recent_similarity(history, catalog, recent_half_life, recent_sharpness)
    has_history = (history >= 0).any(axis=1)
    return {
        "cf": (user_cf @ catalog.cf.T, has_user_cf[:, None] & catalog.has_cf[None, :]),
        "cooc": (
            history_votes(history, catalog.neighbours, catalog.neighbour_sims, cooc_half_life),
            np.broadcast_to(has_history[:, None], (n, len(catalog))).copy(),
        ),
        "text": (user_text @ catalog.text.T, has_user_text[:, None] & catalog.has_text[None, :]),
        "recent": (recent, has_recent[:, None] & catalog.has_text[None, :]),
        "pop": (
            np.broadcast_to(catalog.pop, (n, len(catalog))).copy(),
            np.ones((n, len(catalog)), bool),
        ),
        "next": (
            history_votes(
                history[:, :next_items], catalog.next_items, catalog.next_sims, next_half_life
            ),
            np.broadcast_to(has_history[:, None], (n, len(catalog))).copy(),
        ),
    }


def normalise(scores: np.ndarray, valid: np.ndarray, method: str) -> np.ndarray:
    """Per row, scale the valid entries (zscore, minmax or rank); invalid entries get the row's
    mean normalised value, i.e. no preference either way (0 for a row with no valid entry, such
    as a cold user's CF).

    Masked float32 arithmetic with float64 row sums: this runs on every (user, item) of every
    part, and NaN-aware float64 reductions cost about twice as much.
    """
    n_valid = valid.sum(axis=1, keepdims=True)
    count = np.maximum(n_valid, 1)
    if method == "zscore":
        # In place on one float32 copy: every temporary here is a (users, items) matrix.
        out = np.where(valid, scores, np.float32(0)).astype(np.float32, copy=False)
        mean = out.sum(axis=1, keepdims=True, dtype=np.float64) / count
        out -= mean.astype(np.float32)
        # z-scores average 0 over the valid entries, so 0 is the neutral fill.
        out *= valid
        std = np.sqrt(np.square(out).sum(axis=1, keepdims=True, dtype=np.float64) / count)
        out /= np.where(std > 0, std, 1.0).astype(np.float32)
        return out
    if method == "minmax":
        low = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
        high = np.where(valid, scores, -np.inf).max(axis=1, keepdims=True)
        low = np.where(n_valid > 0, low, 0.0)
        span = np.where((n_valid > 0) & (high - low > 0), high - low, 1.0)
        out = ((scores - low) / span).astype(np.float32)
    elif method == "rank":
        order = np.where(valid, scores, -np.inf).argsort(axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
        out = ((ranks - (scores.shape[1] - n_valid)) / np.maximum(n_valid - 1, 1)).astype(
            np.float32
        )
    else:
        raise ValueError(f"unknown normalisation {method!r}")
    fill = np.where(valid, out, 0).sum(axis=1, keepdims=True, dtype=np.float64) / count
    return np.where(valid, out, fill.astype(np.float32))


def normalised_parts(
    block: pd.DataFrame, catalog: ItemCatalog, candidates: np.ndarray, method: str, **raw_settings
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per part, the normalised (users, items) scores and where the part is really defined
    (elsewhere it holds the neutral fill)."""
    normalised, defined = {}, {}
    for part, (scores, valid) in raw_parts(block, catalog, **raw_settings).items():
        normalised[part] = normalise(scores, valid & candidates, method)
        defined[part] = valid
    return normalised, defined


def fuse(parts: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    total = np.zeros_like(parts["cf"])
    for part in PARTS:
        if weights.get(part, 0.0):
            total += np.float32(weights[part]) * parts[part]
    return total


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rows, k) of the best candidates by score, best first; -1 where a row has fewer
    than k candidates. Ties go to the lower item index, so results are deterministic."""
    masked = np.where(candidates, scores, -np.inf)
    k = min(k, masked.shape[1])
    if k == 0:
        return np.empty((len(masked), 0), np.int64), np.empty((len(masked), 0), masked.dtype)
    # A partition instead of a full sort (k is tiny next to the catalog), with the tie at the
    # k-th place settled by item index rather than left to the partition: exactly k picks per
    # row, those above the k-th score plus the lowest-indexed ones equal to it.
    kth = -np.partition(-masked, k - 1, axis=1)[:, k - 1 : k]
    above = masked > kth
    at = masked == kth
    picked = above | (at & (np.cumsum(at, axis=1) <= k - above.sum(axis=1, keepdims=True)))
    chosen = np.nonzero(picked)[1].reshape(len(masked), k)  # ascending item index per row
    order = np.argsort(-np.take_along_axis(masked, chosen, axis=1), axis=1, kind="stable")
    best = np.take_along_axis(chosen, order, axis=1)
    best_scores = np.take_along_axis(masked, best, axis=1)
    best[~np.isfinite(best_scores)] = -1
    return best, best_scores


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


def with_next(weights: Mapping[str, float], share: float) -> dict[str, float]:
    """Every part's weight times 1 - ``share``, and ``share`` on the what-came-next part: the
    fused score mixed with that part, still on the simplex."""
    mixed = {p: round((1 - share) * float(weights.get(p, 0.0)), 6) for p in PARTS}
    return {**mixed, "next": round(share + mixed["next"], 6)}


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


def target_ranks(scores: np.ndarray, candidates: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target item among its candidates (ties count against it)."""
    rows = np.arange(len(target))
    target_score = scores[rows, target]
    better = candidates & (scores >= target_score[:, None])
    better[rows, target] = False
    return better.sum(axis=1) + 1


def weight_grid(step: float, parts: Sequence[str] = GRID_PARTS) -> list[dict[str, float]]:
    """Every weighting of ``parts`` on the simplex with the given step, pure signals included;
    parts not listed get 0."""
    n = round(1 / step)
    points = []

    def extend(prefix: list[int], left: int) -> None:
        if len(prefix) == len(parts) - 1:
            points.append([*prefix, left])
            return
        for i in range(left + 1):
            extend([*prefix, i], left - i)

    extend([], n)
    return [
        {p: round(dict(zip(parts, point, strict=True)).get(p, 0) / n, 6) for p in PARTS}
        for point in points
    ]


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
        reasons, reason_items = _reasons(
            block, catalog, rows, items, contributions, history_cap, next_items, popular_share
        )
        frames.append(
            pd.DataFrame(
                {
                    "model": model,
                    "user_id": block["user_id"].to_numpy()[rows],
                    "rank": (ranks + 1).astype(np.int32),
                    "item_id": catalog.ids[items],
                    "score": best_scores[rows, ranks].astype(np.float64),
                    "cf_score": parts["cf"][rows, items].astype(np.float64),
                    "cooc_score": parts["cooc"][rows, items].astype(np.float64),
                    "text_score": parts["text"][rows, items].astype(np.float64),
                    "recent_score": parts["recent"][rows, items].astype(np.float64),
                    "pop_score": parts["pop"][rows, items].astype(np.float64),
                    "next_score": parts["next"][rows, items].astype(np.float64),
                    "reason": reasons,
                    "reason_item_id": reason_items,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def part_contributions(
    parts: Mapping[str, np.ndarray],
    defined: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """(picks, parts): each part's weighted normalised score at the picked (row, col) entries;
    -inf where the part is unweighted or undefined there, since only a part that is weighted and
    defined for this (user, item) can explain it."""
    return np.stack(
        [
            np.where(
                defined[p][rows, cols] & (weights.get(p, 0.0) > 0),
                np.float32(weights.get(p, 0.0)) * parts[p][rows, cols],
                -np.inf,
            )
            for p in PARTS
        ],
        axis=1,
    )


def dominant_parts(contributions: np.ndarray, popular_share: float) -> np.ndarray:
    """Per pick, the index in PARTS of the part that explains it: the largest contribution,
    except that popularity is named only where it adds at least ``popular_share`` of the
    positive contributions. Below that a personal part added more in all (z-scores of several
    parts each a little above the mean), so the largest of those is named instead: "popular"
    says little to a user, and it should not stand for a pick the user's own history made."""
    dominant = contributions.argmax(axis=1)
    pop = PARTS.index("pop")
    positive = np.where(contributions > 0, contributions, 0.0).sum(axis=1)
    weak_pop = (dominant == pop) & (contributions[:, pop] < popular_share * positive)
    if weak_pop.any():
        personal = contributions[weak_pop].copy()
        personal[:, pop] = -np.inf
        dominant[weak_pop] = personal.argmax(axis=1)
    return dominant


def _reasons(
    block: pd.DataFrame,
    catalog: ItemCatalog,
    rows: np.ndarray,
    items: np.ndarray,
    contributions: np.ndarray,
    history: int,
    next_items: int,
    popular_share: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A short why per recommendation: the part that explains it (``dominant_parts``), and for
    a text, co-occurrence or what-came-next part the user's closest recent history item, named
    in the text and returned as an id of its own (so an analyst joins it to a title without
    parsing the text)."""
    dominant = dominant_parts(contributions, popular_share)
    reasons = np.array([REASONS[p] for p in PARTS], dtype=object)[dominant]
    reasons[np.isneginf(contributions.max(axis=1))] = UNEXPLAINED
    reason_items = np.full(len(rows), None, dtype=object)
    history_idx = padded_history(block["seen"], history)[rows]  # (recommendations, width)
    known = np.maximum(history_idx, 0)
    is_text = np.isin(dominant, [PARTS.index("text"), PARTS.index("recent")])
    if is_text.any():
        sims = np.einsum("md,mwd->mw", catalog.text[items[is_text]], catalog.text[known[is_text]])
        has_text = (history_idx[is_text] >= 0) & catalog.has_text[known[is_text]]
        reasons[is_text], reason_items[is_text] = _name_closest(
            history_idx[is_text],
            np.where(has_text, sims, -np.inf),
            catalog,
            *NAMED_REASONS["text"],
        )
    listed_parts = (
        ("cooc", history_idx, catalog.neighbours, catalog.neighbour_sims),
        ("next", history_idx[:, :next_items], catalog.next_items, catalog.next_sims),
    )
    for part, voters, neighbours, neighbour_sims in listed_parts:
        chosen = dominant == PARTS.index(part)
        if not chosen.any():
            continue
        # How strongly each history item voted for the recommended one, from its list.
        voter = np.maximum(voters[chosen], 0)
        listed = neighbours[voter] == items[chosen][:, None, None]
        sims = np.where(listed, neighbour_sims[voter], -np.inf).max(axis=2, initial=-np.inf)
        reasons[chosen], reason_items[chosen] = _name_closest(
            voters[chosen],
            np.where(voters[chosen] >= 0, sims, -np.inf),
            catalog,
            *NAMED_REASONS[part],
        )
    return reasons, reason_items


def _name_closest(
    history_idx: np.ndarray, closeness: np.ndarray, catalog: ItemCatalog, prefix: str, fallback: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``prefix`` + the id of its history item with the highest closeness, and that
    id; ``fallback`` and None where no history item has any (-inf everywhere)."""
    closest = history_idx[np.arange(len(history_idx)), closeness.argmax(axis=1)]
    named = np.isfinite(closeness.max(axis=1))
    ids = catalog.ids[np.maximum(closest, 0)].astype(str)
    return (
        np.where(named, np.char.add(prefix, ids), fallback),
        np.where(named, ids.astype(object), None),
    )


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
    frames = []
    for combo, weights in enumerate(grid):
        fused, debiased = model_scores(parts, weights, ties)
        ranks = reranked_target_ranks(fused, debiased, candidates, target, k, rerank_slots)
        frames.append(
            pd.DataFrame(
                {"combo": combo, "user_id": block["user_id"].to_numpy(), "target_rank": ranks}
            )
        )
    return pd.concat(frames, ignore_index=True)
