"""The learned ranker's kernel: the linear hybrid's best candidates of one block of users as
feature rows, and their order by a gradient-boosted ranker.

Stage one is today's hybrid: the six parts are scored and normalised as the linear ranking
scores them (every unseen item, or each user's chosen candidates where the catalog is ranked
over candidates) and fused with the picked weights; each user's ``n_candidates`` best by that
linear score go on. Stage two describes each (user, candidate) by ``FEATURES`` and orders them
by the ranker's score. What the features say, and why each is there:

- each part normalised (what the linear hybrid adds), raw (its scale, which normalising per
  user throws away: a cosine of 0.9 and one of 0.3 can both be a z-score of 2) and its rank
  among the user's candidates (0 is the best);
- whether the user's ALS factors, review vector and text history exist for the item;
- the linear score and its rank (what stage one thought);
- the user's history length and days since the user's newest event (a user who came back
  after a year and one active an hour ago);
- the item's age and recent trend (a new item against a best-seller);
- the text similarity of the candidate to the user's newest item.

Undefined values are NaN, which the trees route on their own branch. Boosting starts from the
linear score (the base margin): the trees learn corrections to stage one's order. Each
recommendation's reason is the part whose features added most to its ranker score
(``pred_contribs``; the linear score's share goes to the part that added most to it), named as
the linear hybrid names it (``udfs.reasons``). Imports the kernel below it; nothing in ``udfs``
imports it back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xgboost

from udfs.block_candidates import CandidateCounts, block_slots
from udfs.candidate_kernel import RECOMMENDATION_COLUMNS, slot_reasons
from udfs.ranking_kernel import (
    PARTS,
    ItemCatalog,
    fuse,
    normalise,
    ragged_mask,
    raw_parts,
    recommendation_frame,
    top_k,
)
from udfs.reasons import part_contributions, pick_reasons

SECONDS_PER_DAY = 86_400.0
_FLAGGED = ("cf", "text", "recent")  # parts whose presence varies by user and item
FEATURES = (
    *(f"{p}_norm" for p in PARTS),
    *(f"{p}_raw" for p in PARTS),
    *(f"{p}_rank" for p in PARTS),
    *(f"{p}_defined" for p in _FLAGGED),
    "linear_score",
    "linear_rank",
    "history_items",
    "days_since_last",
    "item_age_days",
    "item_trend",
    "newest_similarity",
)
# The part each feature speaks for in a reason; None: the user's own context, which orders no
# candidate against another by itself. The linear score's share goes to the part that added most
# to it (``LINEAR``).
LINEAR = "linear"
FEATURE_PARTS: dict[str, str | None] = {
    **{f"{p}_{kind}": p for p in PARTS for kind in ("norm", "raw", "rank")},
    **{f"{p}_defined": p for p in _FLAGGED},
    "linear_score": LINEAR,
    "linear_rank": LINEAR,
    "history_items": None,
    "days_since_last": None,
    "item_age_days": "pop",
    "item_trend": "pop",
    "newest_similarity": "recent",
}
LINEAR_SCORE = FEATURES.index("linear_score")


@dataclass(frozen=True)
class ItemContext:
    """What the ranker knows of each catalog item beyond its parts, row-aligned with the
    catalog, and the fold's clock."""

    age_days: np.ndarray  # (n,) days from the item's first event to reference_ts, NaN: none
    trend: np.ndarray  # (n,) share of the item's events in the last trend window, NaN: none
    reference_ts: float  # the fold's newest history event, epoch seconds


@dataclass
class CandidateSet:
    """One block's users and their linear top candidates as (users, C) arrays."""

    user_ids: np.ndarray  # (users,)
    item_index: np.ndarray  # (users, C) catalog index, -1 at padding
    item_ids: np.ndarray  # (users, C) object, "" at padding
    valid: np.ndarray  # (users, C) bool
    features: np.ndarray  # (users, C, len(FEATURES)) float32
    normalised: dict[str, np.ndarray]  # (users, C) per part, as the linear hybrid has them
    defined: dict[str, np.ndarray]  # (users, C) per part
    linear: np.ndarray  # (users, C) the linear fused score
    # (rows, cols into C, contributions (picks, parts), popular share) -> reasons, reason items
    reasons: Callable[[np.ndarray, np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]]

    def labels(self, target: np.ndarray) -> np.ndarray:
        """(users, C) 1 where the candidate is the user's held-out item."""
        return (self.valid & (self.item_index == target[:, None])).astype(np.float32)


def candidate_set(
    block: pd.DataFrame,
    catalog: ItemCatalog,
    context: ItemContext,
    weights: Mapping[str, float],
    *,
    n_candidates: int,
    method: str,
    over_candidates: bool,
    counts: CandidateCounts | None,
    history_cap: int,
    next_items: int,
    **settings,
) -> CandidateSet:
    """The block's (``scoring.build_user_frame``'s columns, ``last_ts`` optional) linear top
    ``n_candidates`` per user with their feature rows. ``weights``: the linear hybrid's (its
    ``debias`` strength is ignored: the ranker orders the whole list)."""
    vote_settings = dict(settings, history_cap=history_cap, next_items=next_items)
    if over_candidates:
        slots = block_slots(block, catalog, counts, **vote_settings)
        mask = slots.candidates
        raw = {p: s for p, (s, _) in slots.parts.items()}
        defined = {p: v & mask for p, (_, v) in slots.parts.items()}
        index_of = slots.item_index
    else:
        mask = ~ragged_mask(block["seen"], len(catalog))
        parts = raw_parts(block, catalog, **vote_settings)
        raw = {p: s for p, (s, _) in parts.items()}
        defined = {p: v for p, (_, v) in parts.items()}
        index_of = None
    normalised = {p: normalise(raw[p], defined[p] & mask, method) for p in PARTS}
    linear_all = fuse(normalised, weights)
    top, _ = top_k(linear_all, mask, n_candidates)  # (users, C) columns, best first
    valid = top >= 0
    col = np.maximum(top, 0)

    def at(matrix: np.ndarray) -> np.ndarray:
        return np.take_along_axis(matrix, col, axis=1)

    item_index = np.where(valid, col if index_of is None else at(index_of), -1)
    item = np.maximum(item_index, 0)
    norm_c = {p: at(normalised[p]) for p in PARTS}
    defined_c = {p: at(defined[p]) & valid for p in PARTS}
    linear = np.where(valid, at(linear_all), -np.inf).astype(np.float32)

    columns = {}
    for p in PARTS:
        columns[f"{p}_norm"] = norm_c[p]
        columns[f"{p}_raw"] = np.where(defined_c[p], at(raw[p]), np.nan)
        columns[f"{p}_rank"] = np.where(defined_c[p], _ranks(norm_c[p], defined_c[p]), np.nan)
    for p in _FLAGGED:
        columns[f"{p}_defined"] = defined_c[p]
    width = top.shape[1]
    columns["linear_score"] = linear
    columns["linear_rank"] = np.broadcast_to(np.arange(width), top.shape)
    history_length = block["seen"].map(lambda s: 0 if s is None else len(s)).to_numpy(float)
    columns["history_items"] = np.log1p(history_length)[:, None]
    last = block["last_ts"].to_numpy(float) if "last_ts" in block else np.full(len(block), np.nan)
    columns["days_since_last"] = ((context.reference_ts - last) / SECONDS_PER_DAY)[:, None]
    columns["item_age_days"] = context.age_days[item]
    columns["item_trend"] = context.trend[item]
    newest = block["seen"].map(lambda s: -1 if s is None or len(s) == 0 else int(s[0]))
    newest = newest.to_numpy(np.int64)
    has_newest = (newest >= 0) & catalog.has_text[np.maximum(newest, 0)]
    similarity = np.einsum("ucd,ud->uc", catalog.text[item], catalog.text[np.maximum(newest, 0)])
    columns["newest_similarity"] = np.where(
        has_newest[:, None] & catalog.has_text[item], similarity, np.nan
    )
    features = np.empty((len(block), width, len(FEATURES)), np.float32)
    for i, name in enumerate(FEATURES):
        features[:, :, i] = columns[name]
    features[~valid] = np.nan

    if over_candidates:

        def reasons(rows, cols, contributions, popular_share):
            return slot_reasons(slots, rows, top[rows, cols], contributions, popular_share)

    else:

        def reasons(rows, cols, contributions, popular_share):
            return pick_reasons(
                block,
                catalog,
                rows,
                item_index[rows, cols],
                contributions,
                history_cap,
                next_items,
                popular_share,
            )

    return CandidateSet(
        user_ids=block["user_id"].to_numpy(object),
        item_index=item_index,
        item_ids=np.where(valid, catalog.ids[item].astype(object), ""),
        valid=valid,
        features=features,
        normalised=norm_c,
        defined=defined_c,
        linear=linear,
        reasons=reasons,
    )


def _ranks(scores: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """(users, C): each entry's place by ``scores`` among the row's defined entries, 0 best."""
    order = np.argsort(-np.where(defined, scores, -np.inf), axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks.astype(np.float32)


_BOOSTERS: dict[str, object] = {}


def booster(model: bytes, nthread: int = 0):
    """The xgboost Booster saved as ``model`` (UBJSON bytes), loaded once per process: every
    block of a task, and every task of an executor's Python worker, reuses it."""
    key = hashlib.sha1(model).hexdigest() + f"/{nthread}"
    if key not in _BOOSTERS:
        loaded = xgboost.Booster(model_file=bytearray(model))
        if nthread:
            loaded.set_param({"nthread": nthread})
        _BOOSTERS.clear()  # one run's ranker at a time
        _BOOSTERS[key] = loaded
    return _BOOSTERS[key]


def base_margin(features: np.ndarray) -> np.ndarray:
    """Where boosting starts for each row: its linear score. The trees learn corrections to the
    linear hybrid's order, so a ranker of no rounds is the linear hybrid, and a few hundred
    users (the smallest data sets) move it only as far as their held-back NDCG allows."""
    return features[:, LINEAR_SCORE]


def predict(model, features: np.ndarray) -> np.ndarray:
    """The ranker's score per row of a (rows, len(FEATURES)) matrix: the linear score plus
    the trees' correction."""
    if not len(features):
        return np.empty(0, np.float32)
    return model.inplace_predict(
        features, missing=np.nan, base_margin=base_margin(features)
    ).astype(np.float32)


def contributions(model, features: np.ndarray) -> np.ndarray:
    """(rows, len(FEATURES) + 1) each feature's additive share of the row's score, the bias
    last (xgboost's ``pred_contribs``: exact tree SHAP values; the bias holds the base margin,
    the linear score)."""
    matrix = xgboost.DMatrix(features, missing=np.nan, feature_names=list(FEATURES))
    matrix.set_base_margin(base_margin(features))
    return model.predict(matrix, pred_contribs=True)


def part_shares(
    shap: np.ndarray,
    linear_parts: np.ndarray,
    defined: Mapping[str, np.ndarray],
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """(picks, parts): the ranker's contributions summed per part (``FEATURE_PARTS``), the
    linear score's share (its features and the bias, which holds the base margin) added to
    the part that added most to it (``linear_parts``, the linear hybrid's own contributions),
    -inf where the part is undefined for the pick."""
    shares = np.zeros((len(rows), len(PARTS)), np.float64)
    linear_best = linear_parts.argmax(axis=1)
    for i, name in enumerate((*FEATURES, LINEAR)):  # the bias column is the last
        part = FEATURE_PARTS.get(name, LINEAR)
        if part is None:
            continue
        if part == LINEAR:
            np.add.at(shares, (np.arange(len(rows)), linear_best), shap[:, i])
        else:
            shares[:, PARTS.index(part)] += shap[:, i]
    undefined = np.stack([~defined[p][rows, cols] for p in PARTS], axis=1)
    return np.where(undefined, -np.inf, shares)


def rank_candidates(
    candidates: CandidateSet,
    model,
    weights: Mapping[str, float],
    *,
    k: int,
    popular_share: float,
    model_name: str = "hybrid",
) -> pd.DataFrame:
    """Top-k rows (the recommendations schema) per user, ordered by the ranker: the score is
    the ranker's, the parts the linear hybrid's normalised ones, the reason the part that added
    most to the ranker's score."""
    valid = candidates.valid
    scores = np.full(valid.shape, -np.inf, np.float32)
    scores[valid] = predict(model, candidates.features[valid])
    best, best_scores = top_k(scores, valid, k)
    rows, ranks = np.nonzero(best >= 0)
    cols = best[rows, ranks]
    if not len(rows):
        return pd.DataFrame({c: [] for c in RECOMMENDATION_COLUMNS})
    linear_parts = part_contributions(
        candidates.normalised, candidates.defined, weights, rows, cols
    )
    shares = part_shares(
        contributions(model, candidates.features[rows, cols]),
        linear_parts,
        candidates.defined,
        rows,
        cols,
    )
    return recommendation_frame(
        model_name,
        (rows, cols, ranks),
        candidates.user_ids[rows],
        candidates.item_ids[rows, cols],
        best_scores[rows, ranks],
        candidates.normalised,
        candidates.reasons(rows, cols, shares, popular_share),
    )


def target_ranks(candidates: CandidateSet, scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(users,) the held-out item's 1-based place by ``scores`` among the user's candidates
    (ties count against it); 0 where it is not a candidate."""
    is_target = candidates.valid & (candidates.item_index == target[:, None])
    found = is_target.any(axis=1)
    at = is_target.argmax(axis=1)
    target_score = scores[np.arange(len(target)), at]
    ahead = (candidates.valid & (scores >= target_score[:, None]) & ~is_target).sum(axis=1)
    return np.where(found, ahead + 1, 0)


class BoostingClock(xgboost.callback.TrainingCallback):
    """Adds the seconds of a fit's boosting rounds, timed in the training task, to ``seconds``
    (a Spark accumulator): what the fit costs in arithmetic, without the job around it."""

    def __init__(self, seconds) -> None:
        super().__init__()
        self._seconds = seconds
        self._started = 0.0

    def before_training(self, model):
        self._started = time.perf_counter()
        return model

    def after_training(self, model):
        self._seconds.add(time.perf_counter() - self._started)
        return model
