"""The hybrid scoring kernel: numpy over one block of users against the whole item catalog.

Each part (ALS, co-occurrence, text, recent text, popularity, what came next) is scored for
every (user, item) of the block, normalised per user over the candidate items (those the user
has not interacted with in train), fused with weights, and reduced to the top K. A part a user
or an item lacks (a cold user without ALS factors, an item without text) takes the user's
average normalised value, so it neither helps nor hurts and the other parts decide: a cold user
is ranked by text and popularity alone.

The bottom of the kernel: the item catalog arrays, the raw parts, normalising, fusion and its
weight sets, top-K and target ranks. It imports nothing else of ``udfs``; the popularity
re-rank (``udfs.rerank``), the reasons (``udfs.reasons``) and the block entry points
(``udfs.full_ranking``, ``udfs.candidate_kernel``) build on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

PARTS = ("cf", "cooc", "text", "recent", "pop", "next")
# The parts of the simplex weight grid searched on validation. ``next`` is mixed into the pick
# afterwards at a few shares (``hybridrec.ranking.tuning.choose_next``): a sixth grid dimension
# would triple the grid for a part that only helps where histories have an order worth following.
GRID_PARTS = ("cf", "cooc", "text", "recent", "pop")


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
    total = np.zeros_like(next(iter(parts.values())))
    for part in PARTS:
        if weights.get(part, 0.0):
            total += np.float32(weights[part]) * parts[part]
    return total


def top_set(masked: np.ndarray, n: int) -> np.ndarray:
    """(rows, items) bool: exactly ``n`` (1 to items) picks per row, its highest values and, at a
    tie across the n-th place, the lowest indices (-inf entries fill a row short of n).

    A partition instead of a sort (n is tiny next to the catalog); only a row with a tie across
    the n-th place pays for a running count."""
    kth = -np.partition(-masked, n - 1, axis=1)[:, n - 1 : n]
    picked = masked >= kth
    tied = np.flatnonzero(np.count_nonzero(picked, axis=1) > n)
    if len(tied):
        above = masked[tied] > kth[tied]
        at = picked[tied] & ~above
        room = n - above.sum(axis=1, keepdims=True)
        picked[tied] = above | (at & (np.cumsum(at, axis=1) <= room))
    return picked


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


def recommendation_frame(
    model: str,
    picks: tuple[np.ndarray, np.ndarray, np.ndarray],
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    scores: np.ndarray,
    parts: Mapping[str, np.ndarray],
    reasons: tuple[np.ndarray, np.ndarray],
) -> pd.DataFrame:
    """The recommendations rows (``RECOMMENDATION_COLUMNS``) of ``picks`` (rows, cols and
    0-based ranks): each pick's user and item id, score, every normalised part at [row, col],
    and the reason with the history item it names. Full, candidate and learned ranking all
    write their rows through here."""
    rows, cols, ranks = picks
    frame = {
        "model": model,
        "user_id": user_ids,
        "rank": (ranks + 1).astype(np.int32),
        "item_id": item_ids,
        "score": scores.astype(np.float64),
    }
    for p in PARTS:
        frame[f"{p}_score"] = parts[p][rows, cols].astype(np.float64)
    frame["reason"], frame["reason_item_id"] = reasons
    return pd.DataFrame(frame)


def top_k(scores: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rows, k) of the best candidates by score, best first; -1 where a row has fewer
    than k candidates. Ties go to the lower item index, so results are deterministic."""
    masked = np.where(candidates, scores, -np.inf)
    k = min(k, masked.shape[1])
    if k == 0:
        return np.empty((len(masked), 0), np.int64), np.empty((len(masked), 0), masked.dtype)
    picked = top_set(masked, k)
    chosen = np.nonzero(picked)[1].reshape(len(masked), k)  # ascending item index per row
    order = np.argsort(-np.take_along_axis(masked, chosen, axis=1), axis=1, kind="stable")
    best = np.take_along_axis(chosen, order, axis=1)
    best_scores = np.take_along_axis(masked, best, axis=1)
    best[~np.isfinite(best_scores)] = -1
    return best, best_scores


def target_ranks(scores: np.ndarray, candidates: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target item among its candidates (ties count against it)."""
    rows = np.arange(len(target))
    target_score = scores[rows, target]
    better = candidates & (scores >= target_score[:, None])
    better[rows, target] = False
    return better.sum(axis=1) + 1


# Relative margin below which a candidate counts as possibly tied with the target in
# ``grid_target_ranks``: the float32 rounding of a fused score of up to six parts is under 5e-7
# of its largest part, so a candidate below the target by more than this in every part scores
# below it under any weight set.
_BELOW_MARGIN = 1e-5
# Rows fused together per weight set in ``grid_target_ranks``, grouped by how many candidates
# they leave undecided.
_GROUP_ROWS = 32


def grid_target_ranks(
    parts: Mapping[str, np.ndarray],
    candidates: np.ndarray,
    target: np.ndarray,
    grid: Sequence[Mapping[str, float]],
    *,
    exact_up_to: int | None = None,
) -> np.ndarray:
    """(weight sets, rows): ``target_ranks`` of ``fuse(parts, weights)`` for each weight set of
    ``grid``, the same numbers, with the work of each set cut to the candidates it can decide.
    ``exact_up_to`` (a metric's K): ranks above it may come back as any number above it (the
    candidates that beat the target under every weight), and such rows are not fused at all.

    With weights >= 0 (not all 0), a candidate at or above the target in every weighted part
    fuses at or above it whatever the weights (float rounding is monotone), and one below it by
    more than the rounding in every part fuses below it; only the rest are fused per weight set.
    It pays over per-user candidates (score at 30,000 users: 147 -> 119 s, same machine and
    hour), not over a whole catalog (the sample: 43% of candidates settled, no gain), where a
    block is only cut to the width of its most undecided user."""
    used = [p for p in PARTS if any(w.get(p, 0.0) for w in grid)]
    weights = np.array([[float(w.get(p, 0.0)) for p in used] for w in grid]).reshape(len(grid), -1)
    if not len(grid) or (weights < 0).any() or not (weights > 0).any(axis=1).all():
        return np.array([target_ranks(fuse(parts, w), candidates, target) for w in grid])
    rows = np.arange(len(target))
    at_target = {p: parts[p][rows, target][:, None] for p in used}
    size = np.zeros(candidates.shape, dtype=np.float32)
    target_size = np.zeros((len(target), 1), dtype=np.float32)
    for p in used:
        np.maximum(size, np.abs(parts[p]), out=size)
        np.maximum(target_size, np.abs(at_target[p]), out=target_size)
    margin = np.float32(_BELOW_MARGIN) * (1 + size + target_size)
    above, below = candidates.copy(), candidates.copy()
    for p in used:
        above &= parts[p] >= at_target[p]
        below &= parts[p] < at_target[p] - margin
    above[rows, target] = False
    undecided = candidates & ~above & ~below
    undecided[rows, target] = False
    settled = 1 + above.sum(axis=1)
    ranks = np.broadcast_to(settled, (len(grid), len(target))).copy()
    open_rows = undecided.any(axis=1)
    if exact_up_to is not None:
        open_rows &= settled <= exact_up_to  # the rest miss under every weight set
    if not open_rows.any():
        return ranks
    # Rows in groups of similar undecided counts, so that each group is only as wide as its
    # own most undecided row.
    opened = np.flatnonzero(open_rows)
    counts = undecided[opened].sum(axis=1)
    by_count = np.argsort(counts, kind="stable")
    # The targets' fused scores once per weight set, then sliced per group (the same bits).
    target_scores = np.stack([fuse(at_target, w) for w in grid])
    for positions in np.array_split(by_count, max(1, len(by_count) // _GROUP_ROWS)):
        group = opened[positions]
        width = int(counts[positions].max())
        _fuse_undecided(parts, used, undecided[group], group, width, grid, target_scores, ranks)
    return ranks


def _fuse_undecided(parts, used, undecided, group, width, grid, target_scores, ranks) -> None:
    """Add to ``ranks[:, group]`` each weight set's undecided candidates that fuse at or above
    the target (``undecided``: the group's rows, at most ``width`` of them per row)."""
    # Each row's undecided candidates first (stable), the rest of its width masked off.
    columns = np.argsort(~undecided, axis=1, kind="stable")[:, :width]
    open_slot = np.take_along_axis(undecided, columns, axis=1)
    gathered = {p: np.take_along_axis(parts[p][group], columns, axis=1) for p in used}
    for combo, w in enumerate(grid):
        ahead = (fuse(gathered, w) >= target_scores[combo, group]) & open_slot
        ranks[combo, group] += ahead.sum(axis=1)


def with_next(weights: Mapping[str, float], share: float) -> dict[str, float]:
    """Every part's weight times 1 - ``share``, and ``share`` on the what-came-next part: the
    fused score mixed with that part, still on the simplex."""
    mixed = {p: round((1 - share) * float(weights.get(p, 0.0)), 6) for p in PARTS}
    return {**mixed, "next": round(share + mixed["next"], 6)}


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
