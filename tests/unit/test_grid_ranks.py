"""Target ranks over a whole weight grid (``grid_target_ranks``, ``grid_reranked_target_ranks``)
are the ranks of fusing every weight set in full, bit for bit: ties, near-ties inside the
rounding margin, undefined parts and the sets the shortcut does not apply to included. Asked to
be exact only up to a metric's K, they are exact there and above K beyond it."""

from __future__ import annotations

import numpy as np
import pytest

from udfs.ranking_kernel import (
    GRID_PARTS,
    PARTS,
    fuse,
    grid_target_ranks,
    target_ranks,
    weight_grid,
    with_next,
)
from udfs.rerank import (
    DEBIAS,
    grid_rank_rows,
    grid_reranked_target_ranks,
    model_scores,
    reranked_target_ranks,
    tie_break,
)


def _one_by_one(parts, candidates, target, grid):
    return np.array([target_ranks(fuse(parts, w), candidates, target) for w in grid])


def _block(seed, users=40, items=60, levels=None):
    rng = np.random.default_rng(seed)
    parts = {}
    for p in PARTS:
        values = rng.standard_normal((users, items))
        if levels:  # few distinct values: many exact ties between candidates and targets
            values = np.round(values * levels) / levels
        parts[p] = values.astype(np.float32)
    candidates = rng.random((users, items)) > 0.2
    target = rng.integers(0, items, users)
    candidates[np.arange(users), target] = True
    return parts, candidates, target


GRID = weight_grid(0.25) + [with_next(w, 0.2) for w in weight_grid(0.5)]


@pytest.mark.parametrize("levels", [None, 1, 2])
def test_grid_ranks_equal_fusing_every_weight_set(levels):
    parts, candidates, target = _block(1, levels=levels)

    ranks = grid_target_ranks(parts, candidates, target, GRID)

    np.testing.assert_array_equal(ranks, _one_by_one(parts, candidates, target, GRID))


def test_candidates_a_rounding_error_below_the_target_are_fused_not_skipped():
    parts, candidates, target = _block(2)
    rows = np.arange(len(target))
    # Every part of item 0 just under the target's: float32 sums may tie them.
    for p in PARTS:
        at = parts[p][rows, target]
        parts[p][:, 0] = np.nextafter(at, np.float32(-np.inf))
    candidates[:, 0] = True
    candidates[rows, target] = True
    grid = weight_grid(0.1)

    ranks = grid_target_ranks(parts, candidates, target, grid)

    np.testing.assert_array_equal(ranks, _one_by_one(parts, candidates, target, grid))


def test_undefined_values_are_fused_like_any_other():
    parts, candidates, target = _block(3, levels=2)
    parts["cooc"][::3, ::4] = np.nan
    parts["text"][5] = np.nan  # a target's own part undefined too

    ranks = grid_target_ranks(parts, candidates, target, GRID)

    np.testing.assert_array_equal(ranks, _one_by_one(parts, candidates, target, GRID))


@pytest.mark.parametrize(
    "odd", [{"cf": 0.0}, {"cf": -0.5, "pop": 1.5}], ids=["all zero", "negative"]
)
def test_weight_sets_outside_the_shortcut_still_rank_right(odd):
    parts, candidates, target = _block(4, levels=1)
    grid = [*weight_grid(0.5), odd]

    ranks = grid_target_ranks(parts, candidates, target, grid)

    np.testing.assert_array_equal(ranks, _one_by_one(parts, candidates, target, grid))


def test_only_weighted_parts_decide_and_a_lone_part_ranks_as_itself():
    parts, candidates, target = _block(5)
    grid = [{p: 1.0 if p == part else 0.0 for p in PARTS} for part in GRID_PARTS]

    ranks = grid_target_ranks(parts, candidates, target, grid)

    for combo, part in enumerate(GRID_PARTS):
        np.testing.assert_array_equal(ranks[combo], target_ranks(parts[part], candidates, target))


def test_de_biased_sets_keep_their_re_ranked_places():
    parts, candidates, target = _block(6, levels=2)
    user_ids = np.array([f"u{i}" for i in range(len(target))])
    ties = tie_break(user_ids, np.array([f"i{j}" for j in range(candidates.shape[1])]))
    grid = [{**w, DEBIAS: s} for w in weight_grid(0.5) for s in (0.0, 1.0)]

    ranks = grid_reranked_target_ranks(parts, candidates, target, grid, lambda: ties, 5, 2)

    expected = []
    for weights in grid:
        fused, debiased = model_scores(parts, weights, lambda: ties)
        expected.append(reranked_target_ranks(fused, debiased, candidates, target, 5, 2))
    _equal_up_to(ranks, np.array(expected), 5)


def _equal_up_to(ranks, exact, k):
    """Equal where either is at most k; both above k elsewhere, the exact rank no lower."""
    within = (exact <= k) | (ranks <= k)
    assert within.any() and (~within).any()  # both kinds of row are checked
    np.testing.assert_array_equal(ranks[within], exact[within])
    assert (ranks[~within] > k).all() and (ranks[~within] <= exact[~within]).all()


@pytest.mark.parametrize("levels", [None, 2])
def test_ranks_asked_up_to_k_are_exact_there_and_above_k_beyond(levels):
    parts, candidates, target = _block(7, users=300, items=80, levels=levels)
    exact = _one_by_one(parts, candidates, target, GRID)

    ranks = grid_target_ranks(parts, candidates, target, GRID, exact_up_to=10)

    _equal_up_to(ranks, exact, 10)


def test_many_rows_fused_in_groups_rank_as_one_by_one():
    # More rows than one group fuses together, with very different numbers left undecided.
    parts, candidates, target = _block(8, users=300, items=80, levels=3)
    candidates[:100, 40:] = False

    ranks = grid_target_ranks(parts, candidates, target, GRID)

    np.testing.assert_array_equal(ranks, _one_by_one(parts, candidates, target, GRID))


def test_grid_rank_rows_one_row_per_weight_set_and_user():
    rows = grid_rank_rows(np.array(["a", "b"]), np.array([[1, 2], [3, 4], [5, 6]]))

    assert rows.to_dict("list") == {
        "combo": [0, 0, 1, 1, 2, 2],
        "user_id": ["a", "b", "a", "b", "a", "b"],
        "target_rank": [1, 2, 3, 4, 5, 6],
    }
